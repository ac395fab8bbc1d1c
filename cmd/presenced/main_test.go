package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/internal/testenv"
)

func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "presenced")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type proc struct {
	cmd              *exec.Cmd
	natsURL, httpURL string
	output           *lockedBuilder
}

// lockedBuilder is the process's whole output, read while it is written.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) WriteString(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var (
	natsLine = regexp.MustCompile(`nats --server (nats://[0-9.:]+)`)
	httpLine = regexp.MustCompile(`url=(http://[0-9.:]+)`)
)

// start runs the worker with the README's zero-setup defaults (no NATS URL, no
// Redis URL), only moving its listeners and data directory out of the way.
func start(t *testing.T, bin, dataDir string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--data-dir", dataDir, "--nats-listen", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, output: &lockedBuilder{}}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	lines := bufio.NewScanner(out)
	for p.natsURL == "" || p.httpURL == "" {
		if !lines.Scan() {
			t.Fatalf("presenced exited before announcing its addresses:\n%s", p.output)
		}
		l := lines.Text()
		p.output.WriteString(l + "\n")
		if m := natsLine.FindStringSubmatch(l); m != nil {
			p.natsURL = m[1]
		}
		if m := httpLine.FindStringSubmatch(l); m != nil {
			p.httpURL = m[1]
		}
	}
	go func() {
		for lines.Scan() {
			p.output.WriteString(lines.Text() + "\n")
		}
	}()
	return p
}

func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestZeroSetup runs the README's first command: an embedded NATS server, state
// in memory, a login applied, SIGTERM exits 0, and a restart on the same data
// directory keeps the agent's status.
func TestZeroSetup(t *testing.T) {
	t.Parallel()
	bin, dir := build(t), t.TempDir()
	p := start(t, bin, dir)
	if !strings.Contains(p.output.String(), "IN MEMORY") {
		t.Fatalf("in-memory state not announced:\n%s", p.output)
	}
	nc, err := nats.Connect(p.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitReady(t, p.httpURL)
	js, _ := jetstream.New(nc)
	m, err := events.NewInput(events.Subjects{}, events.AgentLogin, "z-1", "z-login", "test", events.SessionData{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	st := queryUntilFound(t, nc, "z-1")
	if st.PresenceID != "available" || st.Version != 1 || st.Reason != events.ReasonLogin {
		t.Fatalf("status = %+v", st)
	}
	for _, path := range []string{"/healthz", "/metrics"} {
		if code := getStatus(t, p.httpURL+path); code != 200 {
			t.Fatalf("%s: %d", path, code)
		}
	}
	resp, err := http.Get(p.httpURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	for _, want := range []string{
		`presenced_events_total{outcome="applied",type="agent.login"} 1`,
		`presenced_status_published_total 1`,
		`presenced_consumer_pending{partition=`,
		`presenced_event_latency_seconds_count 1`,
		`presenced_redeliveries_total 0`,
		`presenced_partition_stalls_total 0`,
		`presenced_batch_step_seconds_count{step="config"} 1`,
		`presenced_batch_step_seconds_count{step="load"} 1`,
		`presenced_batch_step_seconds_count{step="commit"} 1`,
		`presenced_batch_step_seconds_count{step="publish"} 1`,
		`presenced_batch_step_seconds_count{step="ack"} 1`,
		// The embedded server answers multi-subject direct gets: the login's
		// batch was proved by a read of the stream's last sequence.
		`presenced_config_reads_total{proved="stream"} `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s\n%s", want, p.output)
		}
	}
	// Claimed one after another, while the login's own partition may already
	// have handled it.
	awaitMetric(t, p.httpURL, `presenced_partitions_owned 16`)
	// Counted from the status stream, which the metrics view reads on its own.
	awaitMetric(t, p.httpURL, `presenced_agents{base_status="available"} 1`)
	awaitMetric(t, p.httpURL, `presenced_agents{base_status="offline"} 0`)
	nc.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("SIGTERM should exit 0: %v", err)
	}

	p = start(t, bin, dir)
	nc2, err := nats.Connect(p.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	st = queryUntilFound(t, nc2, "z-1")
	if st.PresenceID != "available" || st.Version != 1 {
		t.Fatalf("after restart: %+v", st)
	}
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for getStatus(t, url+"/readyz") != 200 {
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(50 * time.Millisecond) // polling a readiness probe
	}
}

func queryUntilFound(t *testing.T, nc *nats.Conn, agent string) events.StatusChanged {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		m, err := nc.Request(events.Subjects{}.QueryAgent(agent), nil, 2*time.Second)
		if err == nil && m.Header.Get("Nats-Service-Error-Code") == "" {
			st, err := events.DecodeStatus(m)
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s never found: %v %v", agent, err, m)
		}
		time.Sleep(50 * time.Millisecond) // polling the query subject until the event is applied
	}
}

// TestPortInUse: a port the user chose that is taken is an error that says what to do.
func TestPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	bin := build(t)
	out, err := exec.Command(bin, "--data-dir", t.TempDir(), "--nats-listen", l.Addr().String(), "--http-addr", "").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit = %v, output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "--nats-listen 127.0.0.1:0") || !strings.Contains(string(out), l.Addr().String()) {
		t.Fatalf("message does not name the port and the fix:\n%s", out)
	}
}

func TestBadFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--partitions", "zero"}, {"--dedupe-window", "soon"}, {"--log-format", "xml"}, {"--otlp-endpoint", "localhost:4318"}} {
		err := run(context.Background(), args, cli.NoEnv, os.Stdout)
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: error %v should name the flag", args, err)
		}
	}
	o, err := parse(nil, func(k string) (string, bool) {
		v, ok := map[string]string{"PRESENCED_SUBJECT_PREFIX": "acme.presence", "PRESENCED_PARTITIONS": "8",
			"PRESENCED_HTTP_ADDR": "", "PRESENCED_BATCH_SIZE": ""}[k]
		return v, ok
	})
	// Set but empty: a string turns off (or clears) what it names; a number keeps its default.
	if err == nil && (o.httpAddr != "" || !o.explicit["http-addr"] || o.batch != 500) {
		t.Fatalf("empty variables: http-addr %q (explicit %v), batch size %d", o.httpAddr, o.explicit["http-addr"], o.batch)
	}
	if err != nil || o.prefix != "acme.presence" || o.partitions != 8 {
		t.Fatalf("env not read: %+v %v", o, err)
	}
	o, _ = parse([]string{"--partitions", "3"}, func(k string) (string, bool) {
		v, ok := map[string]string{"PRESENCED_PARTITIONS": "8"}[k]
		return v, ok
	})
	if o.partitions != 3 {
		t.Fatalf("flag should win over env: %d", o.partitions)
	}
}

// awaitMetric scrapes /metrics until a line starts with want.
func awaitMetric(t *testing.T, base, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has no %s:\n%s", want, body)
		}
		time.Sleep(50 * time.Millisecond) // polling a scrape endpoint
	}
}

// TestRedisACLAndNoSecretLogged: the worker reaches a Redis that requires an
// ACL user through the credentials in its URL; with a wrong password it stays
// not ready and says why; the password never appears in its output.
func TestRedisACLAndNoSecretLogged(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-Pa55"
	rd := testenv.StartRedis(t, testenv.WithArgs("--user", "default", "off", "--user", "presenced", "on", ">"+secret, "~*", "&*", "+@all"))
	bin := build(t)
	url := "redis://presenced:" + secret + "@" + rd.Addr() + "/0"

	good := start(t, bin, t.TempDir(), "--redis-url", url)
	deadline := time.Now().Add(20 * time.Second)
	for getStatus(t, good.httpURL+"/readyz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("not ready with the right ACL user:\n%s", good.output)
		}
		time.Sleep(50 * time.Millisecond) // polling the readiness probe
	}

	bad := start(t, bin, t.TempDir(), "--redis-url", "redis://presenced:wrong-"+secret+"@"+rd.Addr()+"/0", "--nats-listen", "127.0.0.1:0")
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(bad.output.String(), "WRONGPASS") {
		if time.Now().After(deadline) {
			t.Fatalf("a wrong Redis password is not reported:\n%s", bad.output)
		}
		time.Sleep(50 * time.Millisecond) // the log has no completion event
	}
	if code := getStatus(t, bad.httpURL+"/readyz"); code == http.StatusOK {
		t.Fatal("ready with a wrong Redis password")
	}
	awaitMetric(t, bad.httpURL, `presenced_backend_errors_total{backend="redis",op=`)
	for _, p := range []*proc{good, bad} {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		_ = p.cmd.Wait()
		if strings.Contains(p.output.String(), secret) {
			t.Fatalf("the Redis password was logged:\n%s", p.output)
		}
	}
}

// TestSpansExported: with --otlp-endpoint, a traced input's span reaches the
// collector over OTLP/HTTP (flushed at the latest by the graceful shutdown).
func TestSpansExported(t *testing.T) {
	t.Parallel()
	got := make(chan string, 16)
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		// The protobuf payload holds the span name as plain bytes.
		if bytes.Contains(body, []byte("presenced agent.login")) {
			got <- r.URL.Path + " " + r.Header.Get("Content-Type")
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer collector.Close()

	bin := build(t)
	p := start(t, bin, t.TempDir(), "--otlp-endpoint", collector.URL)
	nc, err := nats.Connect(p.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitReady(t, p.httpURL)
	js, _ := jetstream.New(nc)
	m, err := events.NewInput(events.Subjects{}, events.AgentLogin, "s-1", "s-login", "test", events.SessionData{})
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Set("ce-traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	queryUntilFound(t, nc, "s-1")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("SIGTERM should exit 0: %v\n%s", err, p.output)
	}
	select {
	case req := <-got:
		if req != "/v1/traces application/x-protobuf" {
			t.Fatalf("collector got %s", req)
		}
	default:
		t.Fatalf("no span of the login reached the collector:\n%s", p.output)
	}
}
