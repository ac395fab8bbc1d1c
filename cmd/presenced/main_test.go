package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
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
	output           *strings.Builder
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
	p := &proc{cmd: cmd, output: &strings.Builder{}}
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
	go func() { _, _ = io.Copy(io.Discard, out) }()
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
	for _, args := range [][]string{{"--partitions", "zero"}, {"--dedupe-window", "soon"}, {"--log-format", "xml"}} {
		err := run(context.Background(), args, func(string) string { return "" }, os.Stdout)
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: error %v should name the flag", args, err)
		}
	}
	o, err := parse(nil, func(k string) string {
		return map[string]string{"PRESENCED_SUBJECT_PREFIX": "acme.presence", "PRESENCED_PARTITIONS": "8"}[k]
	})
	if err != nil || o.prefix != "acme.presence" || o.partitions != 8 {
		t.Fatalf("env not read: %+v %v", o, err)
	}
	o, _ = parse([]string{"--partitions", "3"}, func(k string) string { return map[string]string{"PRESENCED_PARTITIONS": "8"}[k] })
	if o.partitions != 3 {
		t.Fatalf("flag should win over env: %d", o.partitions)
	}
}
