package main

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/internal/workertest"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// statuses is every status change seen, in the order it arrived.
type statuses struct {
	t       *testing.T
	mu      sync.Mutex
	changed chan struct{}
	all     []events.StatusChanged
}

func follow(t *testing.T, nc *nats.Conn) *statuses {
	s := &statuses{t: t, changed: make(chan struct{})}
	if _, err := nc.Subscribe(events.Subjects{}.StatusWildcard(), func(m *nats.Msg) {
		st, err := events.DecodeStatus(m)
		if err != nil {
			t.Errorf("status: %v", err)
			return
		}
		s.mu.Lock()
		s.all = append(s.all, st)
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

// await waits until cond holds for the history and returns what cond found.
func (s *statuses) await(what string, cond func(all []events.StatusChanged) (int, bool)) int {
	s.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		s.mu.Lock()
		i, ok := cond(s.all)
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return i
		}
		select {
		case <-ch:
		case <-timeout:
			s.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (s *statuses) snapshot() []events.StatusChanged {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]events.StatusChanged(nil), s.all...)
}

// TestIgnoringAgentStaysInactive: with breaks on, the answering agent keeps
// going away and coming back, while the agent who ignores offers, once a missed
// notification made it Inactive, never changes its presence again.
func TestIgnoringAgentStaysInactive(t *testing.T) {
	n := testenv.StartNATS(t)
	workertest.Start(t, n.Conn(t), state.NewMemory(), worker.Config{Partitions: 2})
	nc := n.Conn(t)
	seen := follow(t, nc)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--nats-url", n.ClientURL(), "--log-level", "warn", "--agents", "2", "--ignore", "agent-02",
			"--work-rate", "0", "--break-every", "100ms", "--break-for", "30ms"}, cli.NoEnv, io.Discard)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("presence-sim: %v", err)
			}
		})
	}
	t.Cleanup(stop)

	seen.await("both agents signed in", func(all []events.StatusChanged) (int, bool) {
		in := map[string]bool{}
		for _, st := range all {
			in[st.AgentID] = in[st.AgentID] || st.SignedIn
		}
		return 0, in["agent-01"] && in["agent-02"]
	})
	// What the router does when agent-02 lets an offer time out.
	js, _ := jetstream.New(nc)
	m, err := events.NewInput(events.Subjects{}, events.NotificationMissed, "agent-02", "missed-1", "test", events.NotificationData{WorkItemID: "w-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	inactiveAt := seen.await("agent-02 Inactive", func(all []events.StatusChanged) (int, bool) {
		for i, st := range all {
			if st.AgentID == "agent-02" && st.PresenceID == events.InactiveID {
				return i, true
			}
		}
		return 0, false
	})
	// Five of agent-01's breaks take at least four break intervals' shortest
	// jitter: longer than agent-02's first break would have come had it one.
	const breaks = 5
	seen.await("agent-01 to take five breaks after agent-02 went Inactive", func(all []events.StatusChanged) (int, bool) {
		n := 0
		for _, st := range all[inactiveAt+1:] {
			if st.AgentID == "agent-01" && st.PresenceID == "away" && st.Actor == "agent" {
				n++
			}
		}
		return 0, n >= breaks
	})
	all := seen.snapshot()
	for _, st := range all[inactiveAt+1:] {
		if st.AgentID == "agent-02" {
			t.Errorf("agent-02 left Inactive: version %d is %s (%s, by %s)", st.Version, st.PresenceID, st.Reason, st.Actor)
		}
	}
	for _, st := range all[:inactiveAt] {
		if st.AgentID == "agent-02" && st.Reason == events.ReasonManual {
			t.Errorf("agent-02 picked %s by itself (version %d) before going Inactive", st.PresenceID, st.Version)
		}
	}
	stop()
}
