package main

import (
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// runBench builds the command and runs it with args, the worker on one P and
// env added, and returns the binary and what it printed.
func runBench(t *testing.T, env []string, args ...string) (string, string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "presence-bench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// A run takes 5-15 s; bounded, so a side that stops making progress fails
	// the test with the output so far instead of holding the suite up.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// Stopped as a user would stop it, so it stops the servers and sides it started.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	cmd.Env = append(append(os.Environ(), "PRESENCE_BENCH_WORKER_GOMAXPROCS=1"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("presence-bench: %v\n%s", err, out)
	}
	return bin, string(out)
}

// TestBenchRuns runs the command on a tiny load, two rounds: every side
// finishes, the table and the ratios (best against best, and by round) are
// printed.
func TestBenchRuns(t *testing.T) {
	t.Parallel()
	bin, s := runBench(t, nil, "--events", "2100", "--agents", "300", "--single-events", "210", "--partitions", "4", "--rounds", "2")
	for _, side := range []string{modeTitles["bare"], modeTitles["lua"], modeTitles["presenced"], modeTitles["single"]} {
		if !regexp.MustCompile(regexp.QuoteMeta(side) + `\s+2\s+\d+\s+\d+`).MatchString(s) {
			t.Errorf("no row for %s:\n%s", side, s)
		}
	}
	for _, want := range []string{"(c) presenced / (b) pipe + Lua CAS:", "bytes per agent", "batch steps, mean/p99 ms", "(by round ", "; median "} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if _, err := exec.Command(bin, "--modes", "warp").CombinedOutput(); err == nil {
		t.Error("an unknown side was accepted")
	}
	bad := exec.Command(bin, "--modes", "presenced", "--events", "10", "--agents", "5")
	bad.Env = append(os.Environ(), "PRESENCE_BENCH_WORKER_GOMAXPROCS=two")
	if out, err := bad.CombinedOutput(); err == nil || !strings.Contains(string(out), "PRESENCE_BENCH_WORKER_GOMAXPROCS=\"two\": set it to a positive number of Ps") {
		t.Errorf("a bad PRESENCE_BENCH_WORKER_GOMAXPROCS: %v\n%s", err, out)
	}
}

func TestBySecond(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	var ls []timedLatency
	// Second 0: 100 outputs of 1..100 ms; second 1: nothing; second 2: one of 7 ms.
	for i := 100; i >= 1; i-- {
		ls = append(ls, timedLatency{sent: ms(10 * i % 1000), latency: ms(i)})
	}
	ls = append(ls, timedLatency{sent: ms(2500), latency: ms(7)})
	got := bySecond(ls)
	want := [][2]time.Duration{{ms(51), ms(100)}, {0, 0}, {ms(7), ms(7)}}
	if len(got) != len(want) {
		t.Fatalf("got %d seconds, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("second %d: p50/p99 %v, want %v", i, got[i], want[i])
		}
	}
	if got := bySecond(nil); len(got) != 0 {
		t.Errorf("no outputs gave %v", got)
	}
}

func TestDueBy(t *testing.T) {
	for _, c := range []struct {
		rate    int
		elapsed time.Duration
		n, want int
	}{
		{10000, 10 * time.Millisecond, 400000, 100},
		{10000, 0, 400000, 0},
		{20, 10 * time.Millisecond, 400, 0},
		{20, 50 * time.Millisecond, 400, 1}, // a rate below one per tick still publishes
		{20, 20 * time.Second, 400, 400},
		{150, time.Second, 3000, 150}, // not rounded to a multiple of the ticks
		{20, time.Minute, 400, 400},   // never past n
	} {
		if got := dueBy(c.rate, c.elapsed, c.n); got != c.want {
			t.Errorf("dueBy(%d, %v, %d) = %d, want %d", c.rate, c.elapsed, c.n, got, c.want)
		}
	}
}

func TestBucketAt(t *testing.T) {
	// Buckets of 1, 2 and 4 ms holding 90, 9 and 0 of 100 observations; the
	// last one lies past every bucket.
	h := &dto.Histogram{SampleCount: proto.Uint64(100), Bucket: []*dto.Bucket{
		{UpperBound: proto.Float64(0.001), CumulativeCount: proto.Uint64(90)},
		{UpperBound: proto.Float64(0.002), CumulativeCount: proto.Uint64(99)},
		{UpperBound: proto.Float64(0.004), CumulativeCount: proto.Uint64(99)},
	}}
	for _, c := range []struct {
		q    float64
		want string
	}{{0.5, "≤1"}, {0.9, "≤1"}, {0.95, "≤2"}, {0.99, "≤2"}, {1, ">4"}} {
		if got := bucketAt(h, c.q); got != c.want {
			t.Errorf("bucketAt(q=%v) = %q, want %q", c.q, got, c.want)
		}
	}
	// A step never taken has no p99 to give.
	empty := &dto.Histogram{SampleCount: proto.Uint64(0), Bucket: []*dto.Bucket{
		{UpperBound: proto.Float64(0.001), CumulativeCount: proto.Uint64(0)},
	}}
	if got := bucketAt(empty, 0.99); got != "–" {
		t.Errorf("bucketAt(empty) = %q, want –", got)
	}
}

// TestBenchLive runs the live mode briefly, two rounds, with the server's
// GOGC set low enough that it collects within the run, and its GC traced: every output is matched to the input that caused
// it (each row's events are all that were published, each second has
// latencies), and the ratio line compares p99s.
func TestBenchLive(t *testing.T) {
	t.Parallel()
	_, s := runBench(t, []string{"PRESENCE_BENCH_NATS_GODEBUG=gctrace=1"},
		"--modes", "lua,presenced", "--rate", "400", "--duration", "2s", "--agents", "100", "--partitions", "4", "--rounds", "2", "--nats-gogc", "25")
	if !strings.Contains(s, ", nats-server GOGC=25\n") {
		t.Errorf("the header does not name the server's GOGC:\n%s", s)
	}
	// The server's collections are traced, and each side says where it
	// starts on the server's clock.
	if !regexp.MustCompile(`(?m)^gc \d+ @[\d.]+s `).MatchString(s) ||
		!regexp.MustCompile(`\(c\) presenced starts at nats-server time [\d.]+s\n`).MatchString(s) {
		t.Errorf("no server GC trace or side start on the server's clock:\n%s", s)
	}
	for _, side := range []string{modeTitles["lua"], modeTitles["presenced"]} {
		for _, round := range []string{"1", "2"} {
			// events, events/s, four CPU columns, then p50 and p99 above zero.
			row := regexp.QuoteMeta(side) + `\s+` + round + `\s+800\s+400(\s+[\d.]+){4}\s+[\d.]*[1-9][\d.]*\s+[\d.]*[1-9][\d.]*\s*\n`
			if !regexp.MustCompile(row).MatchString(s) {
				t.Errorf("no row with latencies for %s round %s:\n%s", side, round, s)
			}
			// Two seconds published (and the last tick on the dot of the end);
			// that every output was matched is checked below.
			if !regexp.MustCompile(regexp.QuoteMeta(side) + `\s+` + round + `:( \d+/\d+){2,}\n`).MatchString(s) {
				t.Errorf("no latencies by second for %s round %s:\n%s", side, round, s)
			}
		}
	}
	if strings.Contains(s, "outputs matched to their inputs") {
		t.Errorf("outputs left unmatched:\n%s", s)
	}
	if !regexp.MustCompile(`\(c\) presenced / \(b\) pipe \+ Lua CAS: [\d.]+× throughput, p99 [\d.]+ ms vs [\d.]+ ms \(p99 ms by round `).MatchString(s) {
		t.Errorf("no live ratio line:\n%s", s)
	}
}

func TestCauseIndex(t *testing.T) {
	withHeader := func(id string) *nats.Msg {
		m := nats.NewMsg("presence.status.ag-1")
		m.Header.Set("Bench-Cause", id)
		return m
	}
	withData := func(data string) *nats.Msg { return &nats.Msg{Subject: "presence.status.ag-1", Data: []byte(data)} }
	for _, c := range []struct {
		name string
		m    *nats.Msg
		want int
		ok   bool
	}{
		{"header", withHeader("lua-17-42"), 42, true},
		{"data", withData(`{"agentId":"ag-1","previous":{"presenceId":"away"},"cause":{"id":"lua-17-7","source":"bench","type":"agent.login"},"version":3}`), 7, true},
		{"first input", withData(`{"cause":{"id":"lua-17-0"}}`), 0, true},
		{"another run's input", withHeader("lua-16-42"), 0, false},
		{"no cause", withData(`{"agentId":"ag-1","cause":null}`), 0, false},
		{"not a number", withHeader("lua-17-x"), 0, false},
		{"negative", withHeader("lua-17--1"), 0, false},
		{"cut short", withData(`{"cause":{"id":"lua-17-3`), 0, false},
		{"nothing", withData(``), 0, false},
	} {
		got, ok := causeIndex(c.m, "lua-17")
		if ok != c.ok || got != c.want {
			t.Errorf("%s: causeIndex = %d, %v; want %d, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestBetter(t *testing.T) {
	r := func(events int, elapsed, p99 time.Duration) result {
		return result{events: events, outputs: events, elapsed: elapsed, p99: p99}
	}
	fast, slow := r(200, time.Second, 90*time.Millisecond), r(100, time.Second, 20*time.Millisecond)
	if !better(options{}, fast, slow) || better(options{}, slow, fast) {
		t.Error("preloaded: the round with the higher throughput is not the better one")
	}
	live := options{rate: 100}
	if better(live, fast, slow) || !better(live, slow, fast) {
		t.Error("live: the round with the lower p99 is not the better one")
	}
	untimed := result{events: 100, elapsed: time.Second}
	if better(live, untimed, fast) || !better(live, fast, untimed) || better(live, untimed, untimed) {
		t.Error("live: a round with no timed output (p99 0) counts as better")
	}
}

func TestRoundPairs(t *testing.T) {
	r := func(mode string, round, events int) result {
		return result{mode: mode, round: round, events: events, elapsed: time.Second}
	}
	// Round 2 ran a alone (b failed), round 3 b alone; rounds come out in
	// order whatever order the results are in, a first in each pair.
	rs := []result{r("b", 4, 10), r("a", 4, 40), r("a", 1, 11), r("b", 1, 10), r("c", 1, 99), r("a", 2, 12), r("b", 3, 13)}
	got := roundPairs(rs, "a", "b")
	if len(got) != 2 || got[0][0].round != 1 || got[1][0].round != 4 {
		t.Fatalf("roundPairs = %+v, want the pairs of rounds 1 and 4", got)
	}
	for _, p := range got {
		if p[0].mode != "a" || p[1].mode != "b" || p[0].round != p[1].round {
			t.Errorf("pair %+v, want a then b of one round", p)
		}
	}
	if a, b := got[1][0].rate(), got[1][1].rate(); a != 40 || b != 10 {
		t.Errorf("round 4 pair rates %v/%v, want 40/10", a, b)
	}
}

func TestByRound(t *testing.T) {
	r := func(events int, p99 time.Duration) result {
		return result{events: events, elapsed: time.Second, p99: p99}
	}
	pairs := [][2]result{{r(92, 30*time.Millisecond), r(100, 20*time.Millisecond)}, {r(106, 25*time.Millisecond), r(100, 25*time.Millisecond)},
		{r(91, 90*time.Millisecond), r(100, 315*time.Millisecond)}}
	if got, want := byRound(pairs, false), "by round 0.92×, 1.06×, 0.91×; median 0.92×"; got != want {
		t.Errorf("preloaded: %q, want %q", got, want)
	}
	if got, want := byRound(pairs, true), "p99 ms by round 30.0/20.0, 25.0/25.0, 90.0/315.0"; got != want {
		t.Errorf("live: %q, want %q", got, want)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{0.9}, 0.9}, {[]float64{1.06, 0.82, 0.91}, 0.91}, {[]float64{1, 0.8, 0.9, 1.2}, 0.95}} {
		in := slices.Clone(c.in)
		if got := median(c.in); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("median reordered its input: %v, was %v", c.in, in)
		}
	}
}
