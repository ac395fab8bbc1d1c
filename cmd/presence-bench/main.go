// Command presence-bench measures presenced against reference pipelines on the
// same servers and the same load, in one run: (a) a bare pipe (consume, publish,
// ack), (b) the same pipe plus one Redis Lua compare-and-set per event, (c)
// presenced itself, and optionally (d) a one-event-at-a-time pipe. Every side
// runs in a process of its own so the CPU of the worker, nats-server and
// redis-server is read separately from /proc.
//
//	go run ./cmd/presence-bench                      # 200k preloaded events over 10k agents
//	go run ./cmd/presence-bench --rate 10000 --duration 20s   # live: latency at a fixed rate
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/worker"
)

func main() {
	var err error
	if len(os.Args) > 1 && strings.HasPrefix(os.Args[1], "_") {
		err = role(os.Args[1], os.Args[2:])
	} else {
		ctx, cancel := context.WithCancelCause(context.Background())
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			s := <-sig
			cancel(fmt.Errorf("interrupted by %v", s))
		}()
		err = run(ctx, os.Args[1:], os.LookupEnv, os.Stdout)
		if cause := context.Cause(ctx); cause != nil && errors.Is(err, context.Canceled) {
			err = cause
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "presence-bench:", err)
		os.Exit(1)
	}
}

func role(name string, args []string) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	natsURL := fs.String("nats", "", "")
	redisURL := fs.String("redis", "", "")
	dir := fs.String("dir", "", "")
	partitions := fs.Int("partitions", 16, "")
	batch := fs.Int("batch", 500, "")
	publish := fs.Bool("publish", true, "")
	window := fs.Duration("dedupe-window", 2*time.Minute, "")
	checkpoint := fs.Duration("checkpoint-interval", 0, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in := worker.NamesFor("presence").InputStream()
	switch name {
	case "_nats":
		return serveNATS(*dir)
	case "_setup":
		return runWorker(*natsURL, *redisURL, *partitions, *batch, *window, *checkpoint, true)
	case "_presenced":
		return runWorker(*natsURL, *redisURL, *partitions, *batch, *window, *checkpoint, false)
	case "_bare":
		return runPipe(*natsURL, *redisURL, in, false, false, *publish, *batch)
	case "_lua":
		return runPipe(*natsURL, *redisURL, in, true, false, *publish, *batch)
	case "_single":
		return runPipe(*natsURL, *redisURL, in, true, true, *publish, 1)
	}
	return fmt.Errorf("unknown role %s", name)
}

type options struct {
	events, agents, partitions, batch, singleEvents, rounds int
	modes                                                   []string
	load                                                    string
	rate                                                    int
	duration                                                time.Duration
	replicas                                                int
	dedupeWindow                                            time.Duration
	noExpiry                                                bool
	redisStats                                              bool
	checkpoint                                              time.Duration
	natsGOGC                                                int
}

var modeTitles = map[string]string{
	"bare": "(a) bare pipe", "lua": "(b) pipe + Lua CAS", "presenced": "(c) presenced", "single": "(d) one at a time (pipe + Lua)",
}

func run(ctx context.Context, args []string, env cli.Env, out io.Writer) error {
	f := cli.NewFlags("presence-bench", "BENCH", env)
	nEvents := f.Int("events", 200000, 1, "events per measured run (preloaded)")
	agents := f.Int("agents", 10000, 1, "agents the events are spread over")
	partitions := f.Int("partitions", 16, 1, "presenced input partitions")
	batch := f.Int("batch", 500, 1, "batch size of presenced and of the pipes")
	modes := f.String("modes", "bare,lua,presenced,single", "which sides to run, in this order: bare, lua, presenced, single")
	single := f.Int("single-events", 5000, 1, "events for the one-at-a-time side (it is slow)")
	rounds := f.Int("rounds", 1, 1, "how many times to run the sides, alternately")
	load := f.String("load", "changes", "changes (every event changes a status) or heartbeats (none does)")
	rate := f.Int("rate", 0, 0, "live mode: publish at this many events/s instead of preloading")
	duration := f.Duration("duration", 20*time.Second, time.Second, "live mode: how long to publish")
	replicas := f.Int("replicas", 1, 1, "presenced worker processes sharing the partitions")
	noExpiry := f.Bool("no-expiry", false, "configure sessions that never expire first (sessionTtlSeconds 0): a load that runs longer than the 90s default TTL without heartbeats would otherwise have presenced expire sessions mid-run")
	checkpoint := f.Duration("checkpoint-interval", 0, 0, "presenced's checkpoint interval (0: its default)")
	natsGOGC := f.Int("nats-gogc", 0, 0, "run the nats-server with this GOGC (0: whatever the environment gives it, Go's 100 unless GOGC is set); its garbage collection makes most of the live tail")
	redisStats := f.Bool("redis-stats", false, "print Redis's command statistics for each side (where the Redis time goes)")
	window := f.Duration("dedupe-window", 2*time.Minute, time.Second,
		"presenced's dedupe window; at 30s or less the idle memory is measured once it has passed")
	if err := f.Parse(args); err != nil {
		return err
	}
	o := options{events: *nEvents, agents: *agents, partitions: *partitions, batch: *batch, singleEvents: *single,
		rounds: *rounds, modes: strings.Split(*modes, ","), load: *load, rate: *rate, duration: *duration,
		replicas: *replicas, dedupeWindow: *window, noExpiry: *noExpiry, redisStats: *redisStats, checkpoint: *checkpoint,
		natsGOGC: *natsGOGC}
	for _, m := range o.modes {
		if modeTitles[m] == "" {
			return fmt.Errorf("--modes: %q is not one of bare, lua, presenced, single", m)
		}
	}
	if o.load != "changes" && o.load != "heartbeats" {
		return fmt.Errorf("--load %q: use changes or heartbeats", o.load)
	}
	if _, err := workerProcs(); err != nil {
		return err
	}
	b, err := newBench(ctx, o)
	if err != nil {
		return err
	}
	defer b.close()
	gogc := ""
	if o.natsGOGC > 0 {
		gogc = fmt.Sprintf(", nats-server GOGC=%d", o.natsGOGC)
	}
	fmt.Fprintf(out, "presence-bench: %s load, %s, %d agents, %d partitions, batch %d, %d presenced replica(s), %d cores%s\n",
		o.load, b.loadDesc(), o.agents, o.partitions, o.batch, o.replicas, numCPU(), gogc)
	var results []result
	for round := range o.rounds {
		for _, m := range o.modes {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r, err := b.measure(ctx, m)
			if err != nil {
				return fmt.Errorf("%s: %w", m, err)
			}
			r.round = round + 1
			results = append(results, r)
			fmt.Fprintf(out, "  %-32s %8.0f events/s\n", modeTitles[m], r.rate())
		}
	}
	printTable(out, o, results)
	for _, r := range results {
		if r.mode == "presenced" {
			fmt.Fprintf(out, "Redis memory right after presenced run %d: %.0f bytes per agent (INFO used_memory − used_memory_startup, over %d agents, dedupe keys still inside their window)\n", r.round, r.redisPerAgent, o.agents)
			if r.redisIdlePerAgent > 0 {
				fmt.Fprintf(out, "Redis memory once the %s dedupe window had passed: %.0f bytes per idle agent (%d agents)\n", o.dedupeWindow, r.redisIdlePerAgent, o.agents)
				fmt.Fprintf(out, "  of which the agents added %.0f bytes each (used_memory less client buffers, after the run less before it)\n", r.redisIdleAdded)
				for _, k := range r.redisKeys {
					fmt.Fprintf(out, "  %-10s %7d keys  %9d bytes (MEMORY USAGE)  %6.0f bytes per agent\n", k.kind, k.keys, k.bytes, float64(k.bytes)/float64(o.agents))
				}
				if r.redisKeyTable > 0 {
					fmt.Fprintf(out, "  buckets    %24d bytes (MEMORY STATS)          %6.0f bytes per agent\n", r.redisKeyTable, float64(r.redisKeyTable)/float64(o.agents))
				}
			}
		}
	}
	return nil
}

func (b *bench) loadDesc() string {
	if b.o.rate > 0 {
		return fmt.Sprintf("live at %d events/s for %s", b.o.rate, b.o.duration)
	}
	return fmt.Sprintf("%d preloaded events", b.o.events)
}

type result struct {
	mode               string
	round              int
	events             int
	outputs            int // timed outputs, which the latencies are of
	elapsed            time.Duration
	cpuWorker, cpuNATS time.Duration
	cpuRedis           time.Duration
	p50, p99           time.Duration
	// bySecond holds, live, the p50 and p99 of the events published in each
	// second of the run: whether the latency is a start-up transient or steady.
	bySecond          [][2]time.Duration
	redisPerAgent     float64 // presenced only: Redis bytes per agent after the run
	redisIdlePerAgent float64 // presenced only: the same once the dedupe window passed
	// redisIdleAdded is, once the window passed, the data memory the agents
	// added per agent (redisData after the run less before it).
	redisIdleAdded float64
	redisKeyTable  int64 // the key table's bucket array then (MEMORY STATS)
	redisKeys      []keyKind
}

// dueBy is how many of n events a live run publishing rate per second has
// published after elapsed: what is due by then, so that any rate is kept where
// a fixed count per tick rounds rates below one per tick down to nothing.
func dueBy(rate int, elapsed time.Duration, n int) int {
	return min(n, int(int64(rate)*int64(elapsed)/int64(time.Second)))
}

func (r result) rate() float64 { return float64(r.events) / r.elapsed.Seconds() }
func (r result) perEvent(d time.Duration) float64 {
	return float64(d.Microseconds()) / float64(r.events)
}

func printTable(out io.Writer, o options, rs []result) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(out)
	fmt.Fprintln(tw, "side\tround\tevents\tevents/s\tworker µs/ev\tnats µs/ev\tredis µs/ev\ttotal µs/ev\tp50 ms\tp99 ms\t")
	best := map[string]result{}
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", modeTitles[r.mode], r.round, r.events, r.rate(),
			r.perEvent(r.cpuWorker), r.perEvent(r.cpuNATS), r.perEvent(r.cpuRedis), r.perEvent(r.cpuWorker+r.cpuNATS+r.cpuRedis),
			ms(r.p50), ms(r.p99))
		if b, ok := best[r.mode]; !ok || better(o, r, b) {
			best[r.mode] = r
		}
	}
	_ = tw.Flush()
	if o.rate > 0 {
		fmt.Fprintln(out, "\np50/p99 ms of the events published in each second of the run:")
		for _, r := range rs {
			fmt.Fprintf(out, "  %-20s %d:", modeTitles[r.mode], r.round)
			for _, q := range r.bySecond {
				fmt.Fprintf(out, " %.0f/%.0f", ms(q[0]), ms(q[1]))
			}
			fmt.Fprintln(out)
		}
	}
	ratio := func(a, b string) {
		ra, oka := best[a]
		rb, okb := best[b]
		if !oka || !okb {
			return
		}
		fmt.Fprintf(out, "%s / %s: %.2f× throughput", modeTitles[a], modeTitles[b], ra.rate()/rb.rate())
		if o.rate > 0 {
			fmt.Fprintf(out, ", p99 %.1f ms vs %.1f ms", ms(ra.p99), ms(rb.p99))
		}
		// Best against best is what the targets name; round by round, each
		// pair ran back to back, so the spread shows how much the machine
		// moved the ratio.
		if pairs := roundPairs(rs, a, b); len(pairs) > 1 {
			fmt.Fprintf(out, " (%s)", byRound(pairs, o.rate > 0))
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintln(out)
	ratio("presenced", "bare")
	ratio("presenced", "lua")
	ratio("presenced", "single")
}

// better reports whether r is a better round than b of the same side: the
// higher throughput preloaded; live, where both ran at the offered rate, the
// lower p99, which is what the live target compares.
func better(o options, r, b result) bool {
	if o.rate > 0 {
		// A round with no timed output has no p99 to compare.
		if r.outputs == 0 || b.outputs == 0 {
			return b.outputs == 0 && r.outputs > 0
		}
		return r.p99 < b.p99
	}
	return r.rate() > b.rate()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// roundPairs returns the results of sides a and b that ran in the same round,
// in round order.
func roundPairs(rs []result, a, b string) [][2]result {
	byRound := map[int]*[2]result{}
	var rounds []int
	for _, r := range rs {
		i := 0
		switch r.mode {
		case a:
		case b:
			i = 1
		default:
			continue
		}
		p := byRound[r.round]
		if p == nil {
			p = &[2]result{}
			byRound[r.round] = p
			rounds = append(rounds, r.round)
		}
		p[i] = r
	}
	slices.Sort(rounds)
	var out [][2]result
	for _, n := range rounds {
		if p := byRound[n]; p[0].mode == a && p[1].mode == b {
			out = append(out, *p)
		}
	}
	return out
}

// byRound says how pairs compared round by round: live, the two p99s (the
// throughput is the offered rate); preloaded, the throughput ratios and
// their median.
func byRound(pairs [][2]result, live bool) string {
	parts := make([]string, 0, len(pairs))
	ratios := make([]float64, 0, len(pairs))
	for _, p := range pairs {
		if live {
			parts = append(parts, fmt.Sprintf("%.1f/%.1f", ms(p[0].p99), ms(p[1].p99)))
			continue
		}
		ratios = append(ratios, p[0].rate()/p[1].rate())
		parts = append(parts, fmt.Sprintf("%.2f×", ratios[len(ratios)-1]))
	}
	if live {
		return "p99 ms by round " + strings.Join(parts, ", ")
	}
	return fmt.Sprintf("by round %s; median %.2f×", strings.Join(parts, ", "), median(ratios))
}

// median of vs, which it sorts; 0 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	vs = slices.Sorted(slices.Values(vs)) // the caller's order stays
	if n := len(vs); n%2 == 1 {
		return vs[n/2]
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
}

// bench holds the servers every side shares.
type bench struct {
	o        options
	dir      string
	self     string
	natsProc *exec.Cmd
	// natsStart is when the server process was started: its GC trace
	// (PRESENCE_BENCH_NATS_GODEBUG=gctrace=1) counts from there.
	natsStart time.Time
	natsURL   string
	redis     *exec.Cmd
	redisURL  string
	nc        *nats.Conn
	js        jetstream.JetStream
	rc        *redis.Client
}

func newBench(ctx context.Context, o options) (*bench, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "presence-bench-")
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, dir: dir, self: self}
	cmd := exec.Command(self, "_nats", "-dir", filepath.Join(dir, "nats"))
	cmd.Stderr = os.Stderr
	cmd.Env = os.Environ()
	if o.natsGOGC > 0 {
		cmd.Env = append(cmd.Env, "GOGC="+strconv.Itoa(o.natsGOGC))
	}
	// PRESENCE_BENCH_NATS_GODEBUG=<value> is GODEBUG for the server alone
	// (gctrace=1: its collections, to set against the latency by second).
	if v := os.Getenv("PRESENCE_BENCH_NATS_GODEBUG"); v != "" {
		cmd.Env = append(cmd.Env, "GODEBUG="+v)
	}
	b.natsStart = time.Now()
	line, err := startChild(cmd)
	if err != nil {
		b.close()
		return nil, fmt.Errorf("nats server: %w", err)
	}
	b.natsProc, b.natsURL = cmd, strings.TrimPrefix(line, "ready ")
	if _, err := exec.LookPath("redis-server"); err != nil {
		b.close()
		return nil, errors.New("redis-server is not installed: apt-get install -y redis-server")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.close()
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	b.redis = exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no")
	if err := b.redis.Start(); err != nil {
		b.close()
		return nil, err
	}
	b.redisURL = fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	b.rc = redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	for deadline := time.Now().Add(10 * time.Second); b.rc.Ping(ctx).Err() != nil; {
		if time.Now().After(deadline) {
			b.close()
			return nil, errors.New("redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond) // redis-server has no readiness signal but PING
	}
	if b.nc, err = nats.Connect(b.natsURL); err != nil {
		b.close()
		return nil, err
	}
	if b.js, err = jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(8192)); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *bench) close() {
	if b.nc != nil {
		b.nc.Close()
	}
	if b.rc != nil {
		_ = b.rc.Close()
	}
	for _, c := range []*exec.Cmd{b.natsProc, b.redis} {
		if c != nil && c.Process != nil {
			_ = c.Process.Signal(syscall.SIGTERM)
			_ = c.Wait()
		}
	}
	_ = os.RemoveAll(b.dir)
}

// startChild starts a role and waits for its "ready" line.
func startChild(cmd *exec.Cmd) (string, error) {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ready") {
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return sc.Text(), nil
		}
	}
	_ = cmd.Wait()
	return "", errors.New("exited before it was ready")
}

// reset gives a side a clean start: no streams, no buckets, empty Redis, then
// presenced's own streams (created by presenced, so every side reads the same
// input stream configuration).
func (b *bench) reset(ctx context.Context) error {
	names := worker.NamesFor("presence")
	for _, s := range []string{names.InputStream(), names.StatusStream(), names.RejectedStream(), names.StateStream(), "KV_" + names.OwnersBucket()} {
		if err := b.js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("delete %s: %w", s, err)
		}
	}
	if err := b.rc.FlushAll(ctx).Err(); err != nil {
		return err
	}
	setup := exec.CommandContext(ctx, b.self, "_setup", "-nats", b.natsURL, "-redis", b.redisURL, "-partitions", strconv.Itoa(b.o.partitions),
		"-dedupe-window", b.o.dedupeWindow.String())
	setup.Stderr = os.Stderr
	if err := setup.Run(); err != nil {
		return fmt.Errorf("create streams: %w", err)
	}
	// The setup worker's partition leases would hold the measured worker back
	// until they expire, and a consumer it created would count as undrained:
	// start with no owners and no consumers at all.
	if err := b.js.DeleteStream(ctx, "KV_"+names.OwnersBucket()); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete owners: %w", err)
	}
	in, err := b.js.Stream(ctx, names.InputStream())
	if err != nil {
		return fmt.Errorf("input stream: %w", err)
	}
	for name := range in.ConsumerNames(ctx).Name() {
		if err := in.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("delete consumer %s: %w", name, err)
		}
	}
	// Nor the durable partition records of the partitions it took over: with
	// Redis flushed they would make the measured worker rebuild, and treat
	// every input as possibly published by an owner whose consumer is gone.
	st, err := b.js.Stream(ctx, names.StateStream())
	if err != nil {
		return fmt.Errorf("state stream: %w", err)
	}
	if err := st.Purge(ctx); err != nil {
		return fmt.Errorf("purge state stream: %w", err)
	}
	return b.rc.FlushAll(ctx).Err()
}

// event is the i-th event of the load: each agent walks login, capacity 1/2,
// away, missed, available, capacity 2/2, logout — every step changes its
// status — or, for the heartbeat load, sends heartbeats only.
func (b *bench) event(i int, prefix string) *nats.Msg {
	agent := fmt.Sprintf("ag-%d", i%b.o.agents)
	type step struct {
		typ  events.Type
		data string
	}
	steps := []step{
		{events.AgentLogin, `{}`}, {events.AgentCapacityChanged, `{"used":1,"total":2}`},
		{events.AgentPresenceSet, `{"presenceId":"away"}`}, {events.NotificationMissed, `{}`},
		{events.AgentPresenceSet, `{"presenceId":"available"}`}, {events.AgentCapacityChanged, `{"used":2,"total":2}`},
		{events.AgentLogout, `{}`},
	}
	s := steps[(i/b.o.agents)%len(steps)]
	if b.o.load == "heartbeats" {
		s = step{events.AgentHeartbeat, `{}`}
	}
	m, _ := events.NewInput(events.Subjects{}, s.typ, agent, fmt.Sprintf("%s-%d", prefix, i), "bench", []byte(s.data))
	return m
}

// signIn signs every agent in before a heartbeat load, outside the measurement.
func (b *bench) signIn(ctx context.Context) error {
	for i := range b.o.agents {
		m, _ := events.NewInput(events.Subjects{}, events.AgentLogin, fmt.Sprintf("ag-%d", i), fmt.Sprintf("in-%d", i), "bench", []byte(`{}`))
		// More agents than the room for outstanding publishes: wait for room.
		if _, err := b.js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
			return err
		}
	}
	return b.flush(ctx)
}

func (b *bench) flush(ctx context.Context) error {
	select {
	case <-b.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(60 * time.Second):
		return errors.New("preload not acknowledged")
	}
}

func (b *bench) preload(ctx context.Context, n int, prefix string) error {
	for i := range n {
		if _, err := b.js.PublishMsgAsync(b.event(i, prefix)); err != nil {
			return err
		}
		if i%5000 == 4999 {
			if err := b.flush(ctx); err != nil {
				return err
			}
		}
	}
	return b.flush(ctx)
}

// measure runs one side on a fresh copy of the load.
func (b *bench) measure(ctx context.Context, mode string) (result, error) {
	r := result{mode: mode}
	if err := b.reset(ctx); err != nil {
		return r, err
	}
	n := b.o.events
	if mode == "single" {
		n = min(n, b.o.singleEvents)
	}
	live := b.o.rate > 0
	base := uint64(0)
	if b.o.noExpiry {
		m, err := events.NewInput(events.Subjects{}, events.SettingsConfigured, "", "settings-"+mode, "bench",
			json.RawMessage(`{"sessionTtlSeconds":0}`))
		if err != nil {
			return r, err
		}
		if _, err := b.js.PublishMsg(ctx, m); err != nil {
			return r, err
		}
		base++
	}
	if b.o.load == "heartbeats" {
		// Sign everyone in first with presenced itself, so heartbeats find live sessions.
		if err := b.signIn(ctx); err != nil {
			return r, err
		}
		base += uint64(b.o.agents)
	}
	prefix := fmt.Sprintf("%s-%d", mode, time.Now().UnixNano())
	if !live {
		if err := b.preload(ctx, n, prefix); err != nil {
			return r, err
		}
	}
	args := []string{"_" + mode, "-nats", b.natsURL, "-redis", b.redisURL, "-partitions", strconv.Itoa(b.o.partitions),
		"-batch", strconv.Itoa(b.o.batch), "-publish=" + strconv.FormatBool(b.o.load == "changes"),
		"-dedupe-window", b.o.dedupeWindow.String(), "-checkpoint-interval", b.o.checkpoint.String()}
	count := 1
	if mode == "presenced" {
		count = b.o.replicas
	}
	var children []*exec.Cmd
	var stdins []io.Writer
	defer func() {
		for _, c := range children {
			_ = c.Process.Signal(syscall.SIGTERM)
			_ = c.Wait()
		}
	}()
	for range count {
		child := exec.Command(b.self, args...)
		child.Stderr = os.Stderr
		stdin, err := child.StdinPipe()
		if err != nil {
			return r, err
		}
		if _, err := startChild(child); err != nil {
			return r, err
		}
		children = append(children, child)
		stdins = append(stdins, stdin)
	}

	// Every output as a router sees it: when it arrived and, live, which input
	// caused it. Only those two are kept: holding on to the messages themselves
	// grew this process by hundreds of megabytes over a live run, and its
	// garbage collection then delayed the very arrivals it timed.
	var mu sync.Mutex
	var outs []arrival
	if !live {
		outs = make([]arrival, 0, n)
	}
	// sentAt[i] is when input i was published, from start: written and, once
	// the run is over, read by this goroutine; the callback needs only its length.
	var sentAt []time.Duration
	if live {
		sentAt = make([]time.Duration, b.o.rate*int(b.o.duration/time.Second))
	}
	var start time.Time
	sub, err := b.nc.Subscribe("presence.status.>", func(m *nats.Msg) {
		now := time.Now()
		a := arrival{input: -1}
		if live {
			i, ok := causeIndex(m, prefix)
			if !ok || i >= len(sentAt) {
				return
			}
			a.input = i
		}
		mu.Lock()
		defer mu.Unlock()
		// Nothing the side causes comes before its start; an output that
		// does is not one of the run's.
		if start.IsZero() || now.Before(start) {
			return
		}
		a.at = now.Sub(start)
		outs = append(outs, a)
	})
	if err != nil {
		return r, err
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)

	if b.o.redisStats {
		if err := b.rc.ConfigResetStat(ctx).Err(); err != nil {
			return r, err
		}
	}
	dataBefore, _ := b.redisData(ctx)
	before := b.cpu(children)
	_ = b.natsProc.Process.Signal(syscall.SIGUSR1) // profile start, when asked for
	mu.Lock()                                      // the callback reads start
	start = time.Now()
	mu.Unlock()
	if os.Getenv("PRESENCE_BENCH_NATS_GODEBUG") != "" {
		fmt.Fprintf(os.Stderr, "%s starts at nats-server time %.3fs\n", modeTitles[mode], start.Sub(b.natsStart).Seconds())
	}
	for _, stdin := range stdins {
		if _, err := io.WriteString(stdin, "go\n"); err != nil {
			return r, err
		}
	}
	if live {
		n = b.o.rate * int(b.o.duration/time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		sent := 0
		for sent < n {
			var now time.Time
			select {
			case <-ctx.Done():
				tick.Stop()
				return r, ctx.Err()
			case now = <-tick.C:
			}
			for due := dueBy(b.o.rate, now.Sub(start), n); sent < due; {
				m := b.event(sent, prefix)
				sentAt[sent] = time.Since(start)
				if _, err := b.js.PublishMsgAsync(m); err != nil {
					tick.Stop()
					return r, err
				}
				sent++
			}
		}
		tick.Stop()
		if err := b.flush(ctx); err != nil {
			return r, err
		}
	}
	if err := b.awaitDone(ctx, mode, base+uint64(n)); err != nil {
		return r, err
	}
	end := time.Now()
	after := b.cpu(children)
	_ = b.natsProc.Process.Signal(syscall.SIGUSR2)
	if b.o.redisStats {
		b.printRedisStats(ctx, mode, n)
	}
	if mode == "presenced" {
		r.redisPerAgent, _ = b.redisBytesPerAgent(ctx)
		if b.o.dedupeWindow <= 30*time.Second {
			select {
			case <-ctx.Done():
				return r, ctx.Err()
			case <-time.After(b.o.dedupeWindow + 2*time.Second): // the window itself is what is measured
			}
			r.redisIdlePerAgent, _ = b.redisBytesPerAgent(ctx)
			if data, err := b.redisData(ctx); err == nil {
				r.redisIdleAdded = (data - dataBefore) / float64(b.o.agents)
			}
			r.redisKeys, _ = b.redisKeyKinds(ctx)
			r.redisKeyTable = b.redisKeyTable(ctx)
		}
	}
	r.events, r.elapsed = n, end.Sub(start)
	if live {
		r.elapsed = b.o.duration // throughput is the offered rate
	}
	r.cpuWorker, r.cpuNATS, r.cpuRedis = after[0]-before[0], after[1]-before[1], after[2]-before[2]

	mu.Lock()
	defer mu.Unlock()
	lat := make([]time.Duration, 0, len(outs))
	var timed []timedLatency
	for _, o := range outs {
		t0 := time.Duration(0)
		if live {
			t0 = sentAt[o.input]
			timed = append(timed, timedLatency{t0, o.at - t0})
		}
		lat = append(lat, o.at-t0)
	}
	r.bySecond = bySecond(timed)
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	r.outputs = len(lat)
	if b.o.load == "changes" && r.outputs < n {
		// Every input of this load changes a status: an output missing here is
		// one the latencies leave out.
		fmt.Fprintf(os.Stderr, "%s: %d of %d outputs matched to their inputs\n", modeTitles[mode], r.outputs, n)
	}
	return r, nil
}

// awaitDone waits until the side has handled the whole input: every consumer of
// the input stream has nothing pending or unacknowledged (and, for a status
// change load, every status is out).
func (b *bench) awaitDone(ctx context.Context, mode string, inputs uint64) error {
	names := worker.NamesFor("presence")
	in, err := b.js.Stream(ctx, names.InputStream())
	if err != nil {
		return err
	}
	status, err := b.js.Stream(ctx, names.StatusStream())
	if err != nil {
		return err
	}
	wantConsumers := 1
	if mode == "presenced" {
		wantConsumers = b.o.partitions
	}
	deadline := time.Now().Add(30 * time.Minute)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(20 * time.Millisecond) // polling progress: the stream states are the signal
		if b.o.load == "changes" {
			info, err := status.Info(ctx)
			if err != nil || info.State.LastSeq < inputs-baseOf(b) {
				continue
			}
		}
		drained, count := true, 0
		for name := range in.ConsumerNames(ctx).Name() {
			c, err := in.Consumer(ctx, name)
			if err != nil {
				drained = false
				break
			}
			ci := c.CachedInfo()
			if ci.NumPending > 0 || ci.NumAckPending > 0 {
				drained = false
			}
			count++
		}
		if drained && count >= wantConsumers {
			return nil
		}
	}
	return errors.New("the side did not finish within 30 minutes")
}

func baseOf(b *bench) uint64 {
	var n uint64
	if b.o.noExpiry {
		n++ // the settings event, which changes no status
	}
	if b.o.load == "heartbeats" {
		n += uint64(b.o.agents)
	}
	return n
}

// cpu reads the CPU time used so far by the side's process, nats-server and
// redis-server.
func (b *bench) cpu(children []*exec.Cmd) [3]time.Duration {
	var workers time.Duration
	for _, c := range children {
		workers += procCPU(c.Process.Pid)
	}
	return [3]time.Duration{workers, procCPU(b.natsProc.Process.Pid), procCPU(b.redis.Process.Pid)}
}

// procCPU is user+system time of a process from /proc/<pid>/stat.
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks
}

func (b *bench) redisBytesPerAgent(ctx context.Context) (float64, error) {
	m, err := b.redisMemory(ctx, "used_memory", "used_memory_startup")
	if err != nil {
		return 0, err
	}
	return (m[0] - m[1]) / float64(b.o.agents), nil
}

// redisMemory reads fields of Redis's INFO memory as numbers.
func (b *bench) redisMemory(ctx context.Context, fields ...string) ([]float64, error) {
	info, err := b.rc.InfoMap(ctx, "memory").Result()
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(fields))
	for i, f := range fields {
		out[i], _ = strconv.ParseFloat(info["Memory"][f], 64)
	}
	return out, nil
}

// arrival is one output as the benchmark's subscriber received it: when, from
// the start of the run, and live the index of the input that caused it.
type arrival struct {
	at    time.Duration
	input int
}

// causeIndex returns the index of the input (<prefix>-<index>) that caused the
// status message m: the pipes name it in a header, presenced in its data's
// cause, which is found by a byte search: it runs for every output during the
// run, where events.DecodeStatus would decode each whole event in the same
// process on the cores the measured sides share.
func causeIndex(m *nats.Msg, prefix string) (int, bool) {
	id := m.Header.Get("Bench-Cause")
	if id == "" {
		_, rest, ok := bytes.Cut(m.Data, []byte(`"cause":{`))
		if !ok {
			return 0, false
		}
		if _, rest, ok = bytes.Cut(rest, []byte(`"id":"`)); !ok {
			return 0, false
		}
		v, _, ok := bytes.Cut(rest, []byte(`"`))
		if !ok {
			return 0, false
		}
		id = string(v)
	}
	n, ok := strings.CutPrefix(id, prefix+"-")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 {
		return 0, false
	}
	return i, true
}

// timedLatency is one output's latency and when, from the start of the run, its
// input was published.
type timedLatency struct{ sent, latency time.Duration }

// bySecond returns the p50 and p99 latency of the inputs published in each second
// of a run, in order; a second in which nothing was published has zeros.
func bySecond(ls []timedLatency) [][2]time.Duration {
	var per [][]time.Duration
	for _, l := range ls {
		sec := max(0, int(l.sent/time.Second))
		for len(per) <= sec {
			per = append(per, nil)
		}
		per[sec] = append(per[sec], l.latency)
	}
	out := make([][2]time.Duration, len(per))
	for i, l := range per {
		slices.Sort(l)
		if len(l) > 0 {
			out[i] = [2]time.Duration{l[len(l)/2], l[len(l)*99/100]}
		}
	}
	return out
}

// redisData is Redis's used memory less its clients' buffers: measured before a
// run and after it, the difference is what the agents added, without what grows
// with the number of connections (each holds a 16 KiB reply buffer) or was there
// before the first agent (scripts, partition records).
func (b *bench) redisData(ctx context.Context) (float64, error) {
	m, err := b.redisMemory(ctx, "used_memory", "mem_clients_normal")
	if err != nil {
		return 0, err
	}
	return m[0] - m[1], nil
}

// redisKeyTable is the memory of the key table's bucket array, which MEMORY
// USAGE of each key leaves out; 0 when unknown. MEMORY STATS counts each key's
// table entry and value object (24 and 16 bytes on 64-bit Redis 7) in the
// table's overhead as well, and MEMORY USAGE counts those already, so they are
// taken out.
func (b *bench) redisKeyTable(ctx context.Context) int64 {
	st, err := b.rc.Do(ctx, "MEMORY", "STATS").Result()
	if err != nil {
		return 0
	}
	keys, err := b.rc.DBSize(ctx).Result()
	if err != nil {
		return 0
	}
	m, _ := st.(map[any]any)
	db, _ := m["db.0"].(map[any]any)
	n, _ := db["overhead.hashtable.main"].(int64)
	return max(0, n-keys*(24+16))
}

// keyKind sums the keys of one kind (the word after the prefix: agent, seen, ...).
type keyKind struct {
	kind        string
	keys, bytes int64
}

// redisKeyKinds says where an idle agent's memory goes, key kind by key kind.
func (b *bench) redisKeyKinds(ctx context.Context) ([]keyKind, error) {
	byKind := map[string]*keyKind{}
	iter := b.rc.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		parts := strings.SplitN(key, ":", 3)
		kind := parts[0]
		if len(parts) > 1 {
			kind = strings.TrimSuffix(parts[1], "{")
		}
		n, err := b.rc.MemoryUsage(ctx, key).Result()
		if err != nil {
			continue // expired meanwhile
		}
		k := byKind[kind]
		if k == nil {
			k = &keyKind{kind: kind}
			byKind[kind] = k
		}
		k.keys++
		k.bytes += n
	}
	if err := iter.Err(); err != nil {
		return nil, err
	}
	out := make([]keyKind, 0, len(byKind))
	for _, k := range byKind {
		out = append(out, *k)
	}
	slices.SortFunc(out, func(a, b keyKind) int { return int(b.bytes - a.bytes) })
	return out, nil
}

// printRedisStats prints the commands Redis spent its time on during a side,
// per input event, busiest first (commands run by scripts are counted too).
func (b *bench) printRedisStats(ctx context.Context, mode string, events int) {
	info, err := b.rc.Info(ctx, "commandstats").Result()
	if err != nil {
		fmt.Fprintln(os.Stderr, "commandstats:", err)
		return
	}
	type stat struct {
		name        string
		calls, usec float64
	}
	var stats []stat
	for _, line := range strings.Split(info, "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":")
		if !ok || !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		st := stat{name: name}
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			f, _ := strconv.ParseFloat(v, 64)
			switch k {
			case "calls":
				st.calls = f
			case "usec":
				st.usec = f
			}
		}
		stats = append(stats, st)
	}
	slices.SortFunc(stats, func(x, y stat) int { return int(y.usec - x.usec) })
	fmt.Printf("Redis commands during %s (per input event):\n", modeTitles[mode])
	for _, st := range stats {
		fmt.Printf("  %-12s %6.2f calls  %6.2f µs\n", st.name, st.calls/float64(events), st.usec/float64(events))
	}
}

func numCPU() int {
	n := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n = strings.Count(string(b), "processor\t:")
	}
	return n
}
