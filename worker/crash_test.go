package worker_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/internal/workertest"
)

var buildOnce struct {
	sync.Once
	bin string
	err error
}

// presencedBinary builds cmd/presenced once per test run.
func presencedBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "presenced-bin")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.bin = filepath.Join(dir, "presenced")
		out, err := exec.Command("go", "build", "-o", buildOnce.bin, "../cmd/presenced").CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.bin
}

// startProcess runs presenced as a real process against the env's servers.
func (e *env) startProcess(extraEnv ...string) *exec.Cmd {
	e.t.Helper()
	cmd := exec.Command(presencedBinary(e.t))
	natsURL, redisURL := e.natsURL, e.redisURL
	if natsURL == "" {
		natsURL = e.nats.ClientURL()
	}
	if redisURL == "" {
		redisURL = e.redis.URL()
	}
	cmd.Env = append(os.Environ(),
		"PRESENCED_NATS_URL="+natsURL,
		"PRESENCED_REDIS_URL="+redisURL,
		"PRESENCED_HTTP_ADDR=",
		"PRESENCED_PARTITIONS=4",
		"PRESENCED_LEASE_TTL=1s",
		"PRESENCED_BATCH_SIZE=16",
		"PRESENCED_LOG_LEVEL="+cmp.Or(os.Getenv("PRESENCED_TEST_LOG"), "warn"),
	)
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	})
	return cmd
}

// workload publishes a deterministic mix in which most events change status
// and returns how many events it published.
func (e *env) workload(agents, rounds int) int {
	e.load("k", agents, 0, rounds)
	return agents * rounds
}

// oracle replays the input stream through the pure rules: the status changes
// every agent must end up with, in order.
func (e *env) oracle() map[string][]events.StatusChanged {
	e.t.Helper()
	ctx := context.Background()
	cons, err := e.js.OrderedConsumer(ctx, e.names.InputStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		e.t.Fatal(err)
	}
	info, _ := cons.Info(ctx)
	rules := handlers.Rules{Source: "presenced"}
	cfg := handlers.NewConfig()
	agents := map[string]handlers.Agent{}
	out := map[string][]events.StatusChanged{}
	for range info.NumPending {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			e.t.Fatal(err)
		}
		meta, _ := m.Metadata()
		subject := logical(m.Subject())
		ev, rej := e.subj.Decode(subject, m.Headers(), m.Data())
		if rej != nil || ev.Role == events.RoleConfig || ev.Type == events.SessionExpired {
			continue
		}
		ev.Seq, ev.Stored = meta.Sequence.Stream, meta.Timestamp
		a, changes, err := rules.Apply(cfg, agents[ev.AgentID], ev)
		if err != nil {
			continue
		}
		agents[ev.AgentID] = a
		out[ev.AgentID] = append(out[ev.AgentID], changes...)
	}
	return out
}

// logical drops the partition token of a stored input subject.
func logical(stored string) string {
	toks := strings.Split(stored, ".")
	if len(toks) != 5 {
		return stored
	}
	return strings.Join([]string{toks[0], toks[1], toks[2], toks[4]}, ".")
}

// expectExactly compares every agent's published statuses with the oracle:
// nothing lost, nothing doubled, versions 1..n in order.
func (e *env) expectExactly(want map[string][]events.StatusChanged) {
	e.t.Helper()
	for agent, w := range want {
		got := e.status.waitFor(e.t, agent, fmt.Sprintf("%d statuses", len(w)), func(l []events.StatusChanged) bool { return len(l) >= len(w) })
		if len(got) != len(w) {
			e.t.Fatalf("agent %s: got %s, want %s", agent, describe(got), describe(w))
		}
		for i := range w {
			if got[i].Version != uint64(i+1) || got[i].PresenceID != w[i].PresenceID || got[i].Reason != w[i].Reason || !got[i].Since.Equal(w[i].Since) {
				e.t.Fatalf("agent %s: got %s, want %s", agent, describe(got), describe(w))
			}
		}
	}
	e.status.mu.Lock()
	defer e.status.mu.Unlock()
	for id, n := range e.status.ids {
		if n != 1 {
			e.t.Fatalf("status event %s published %d times", id, n)
		}
	}
}

// TestKilledBetweenCommitAndPublish kills a real worker process right after a
// state commit, before its status changes are published, then restarts it.
func TestKilledBetweenCommitAndPublish(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	first := e.startProcess("PRESENCED_FAULT_KILL_AFTER_COMMITS=3")
	e.waitStreams()
	e.status = e.collect()
	total := e.workload(40, 6)
	err := first.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("first worker should die by SIGKILL after its 3rd commit, got %v", err)
	}
	if done := countStatuses(e); done >= total {
		t.Fatalf("the worker finished before being killed (%d statuses)", done)
	}
	e.startProcess()
	want := e.oracle()
	e.expectExactly(want)
	for a, w := range want {
		last := w[len(w)-1]
		if rm := e.readModel(a); rm["presenceId"] != last.PresenceID || rm["version"] != fmt.Sprint(last.Version) {
			t.Fatalf("read model of %s = %v, want %s v%d", a, rm, last.PresenceID, last.Version)
		}
	}
}

func countStatuses(e *env) int {
	e.status.mu.Lock()
	defer e.status.mu.Unlock()
	n := 0
	for _, l := range e.status.byAgent {
		n += len(l)
	}
	return n
}

// TestTwoReplicas runs two in-process replicas on one stream, stops one mid-load
// and checks per-agent order and exactly-once output against the oracle.
func TestTwoReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	second := e.startWorkerCancelable()
	e.workload(30, 3)
	second() // leave mid-load: its partitions move to the first replica
	e.workload(30, 3)
	e.expectExactly(e.oracle())
}

// startWorkerCancelable starts a replica and returns a function that stops it.
func (e *env) startWorkerCancelable() func() {
	e.t.Helper()
	_, stop := workertest.Start(e.t, e.nats.Conn(e.t), newRedisStore(e), testConfig(e.t))
	return stop
}

// waitStreams waits until a worker process has created the streams.
func (e *env) waitStreams() {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err1 := e.js.Stream(context.Background(), e.names.InputStream())
		_, err2 := e.js.Stream(context.Background(), e.names.StatusStream())
		if err1 == nil && err2 == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("streams not created: %v %v", err1, err2)
		}
		time.Sleep(20 * time.Millisecond) // polling for another process's start-up
	}
}
