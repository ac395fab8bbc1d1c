package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/internal/workertest"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// TestNotReadyWhileLoading: until the snapshot is loaded, the eligibility
// query answers 503 over NATS and HTTP (never an empty list, never 404 for a
// workstream not read yet), Eligible fails with ErrNotReady, and Lag says how
// much is left rather than 0.
func TestNotReadyWhileLoading(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	workertest.Start(t, n.Conn(t), state.NewMemory(), worker.Config{Partitions: 2})
	nc := n.Conn(t)
	js, _ := jetstream.New(nc)
	subj := events.Subjects{}
	if err := EnsureRoutingStream(context.Background(), js, "presence"); err != nil {
		t.Fatal(err)
	}
	publish := func(m *nats.Msg, err error) {
		t.Helper()
		if err == nil {
			_, err = js.PublishMsg(context.Background(), m)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	publish(events.NewWorkstreamEvent(subj, events.WorkstreamConfigured,
		events.Workstream{ID: "chat", Name: "Chat", AllowedBaseStatuses: []events.BaseStatus{events.Available}}, "ws-1", "test"))
	agents := []string{"l-1", "l-2", "l-3"}
	statuses := make(chan struct{}, len(agents))
	sub, err := nc.Subscribe(subj.StatusWildcard(), func(*nats.Msg) { statuses <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range agents {
		publish(events.NewInput(subj, events.AgentLogin, a, fmt.Sprintf("login-%d", i), "test", events.SessionData{}))
	}
	for range agents {
		select {
		case <-statuses:
		case <-time.After(20 * time.Second):
			t.Fatal("the worker published no status for every login")
		}
	}
	_ = sub.Unsubscribe()

	r, err := New(nc, Config{Logger: workertest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	served, err := r.Serve()
	if err != nil {
		t.Fatal(err)
	}
	defer served.Unsubscribe()
	mux := http.NewServeMux()
	mux.Handle("GET /eligible/{workstreamId}", r.EligibleHandler())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ask := func(ws string) (natsCode, httpCode int, httpBody string, reply EligibleReply) {
		t.Helper()
		m, err := nc.Request(subj.Eligible(ws), nil, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		natsCode = http.StatusOK
		if c := m.Header.Get("Nats-Service-Error-Code"); c != "" {
			_, _ = fmt.Sscan(c, &natsCode)
		} else if err := json.Unmarshal(m.Data, &reply); err != nil {
			t.Fatalf("NATS reply %s: %v", m.Data, err)
		}
		res, err := http.Get(srv.URL + "/eligible/" + ws)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode == http.StatusServiceUnavailable && res.Header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
		return natsCode, res.StatusCode, string(b), reply
	}
	notReady := func(when string) {
		t.Helper()
		for _, ws := range []string{"chat", "nope"} {
			if natsCode, httpCode, body, _ := ask(ws); natsCode != http.StatusServiceUnavailable || httpCode != http.StatusServiceUnavailable {
				t.Errorf("%s, eligible %s: NATS %d, HTTP %d %q; want 503 from both", when, ws, natsCode, httpCode, body)
			}
		}
		if _, err := r.Eligible("chat"); !errors.Is(err, ErrNotReady) {
			t.Errorf("%s: Eligible = %v, want ErrNotReady", when, err)
		}
		if r.Ready() {
			t.Errorf("%s: Ready", when)
		}
	}

	// Not running yet: nothing read, and nothing known about how much there is.
	notReady("before Run")
	if lag := r.Lag(); lag != LagUnknown {
		t.Errorf("Lag before Run = %d, want LagUnknown", lag)
	}

	// Hold the first message of each stream before it is applied.
	stalled, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r.applyHook = func() {
		once.Do(func() { close(stalled) })
		<-release
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	var released sync.Once
	t.Cleanup(func() { released.Do(func() { close(release) }) })
	select {
	case <-stalled:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the router never started reading")
	}
	notReady("mid-load")
	if lag, want := r.Lag(), uint64(len(agents)+1); lag != want {
		t.Errorf("Lag mid-load = %d, want %d (three statuses and one workstream unread)", lag, want)
	}

	released.Do(func() { close(release) })
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if err := r.WaitReady(wctx); err != nil {
		t.Fatalf("never ready: %v", err)
	}
	if lag := r.Lag(); lag != 0 {
		t.Errorf("Lag once ready = %d, want 0", lag)
	}
	if err := r.Readiness(); err != nil {
		t.Errorf("Readiness once ready: %v", err)
	}
	natsCode, httpCode, body, reply := ask("chat")
	if natsCode != http.StatusOK || httpCode != http.StatusOK || len(reply.Agents) != len(agents) {
		t.Fatalf("once ready: NATS %d %+v, HTTP %d %s", natsCode, reply, httpCode, body)
	}
	var fromHTTP EligibleReply
	if err := json.Unmarshal([]byte(body), &fromHTTP); err != nil || fromHTTP.WorkstreamID != "chat" || len(fromHTTP.Agents) != len(agents) {
		t.Fatalf("HTTP reply %s: %v", body, err)
	}
	if natsCode, httpCode, _, _ := ask("nope"); natsCode != http.StatusNotFound || httpCode != http.StatusNotFound {
		t.Fatalf("unknown workstream once ready: NATS %d, HTTP %d, want 404", natsCode, httpCode)
	}
}
