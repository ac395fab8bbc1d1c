package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/internal/workertest"
	"github.com/presenced/presenced/router"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// world is a NATS server, an in-process worker and a view of every status change.
type world struct {
	t    *testing.T
	url  string
	nc   *nats.Conn
	js   jetstream.JetStream
	subj events.Subjects
	n    atomic.Int64

	mu      sync.Mutex
	changed chan struct{}
	history []events.StatusChanged
}

func newWorld(t *testing.T) *world {
	n := testenv.StartNATS(t)
	w := &world{t: t, url: n.ClientURL(), nc: n.Conn(t), changed: make(chan struct{})}
	w.js, _ = jetstream.New(w.nc)
	workertest.Start(t, n.Conn(t), state.NewMemory(), worker.Config{Partitions: 2})
	if _, err := w.nc.Subscribe(w.subj.StatusWildcard(), func(m *nats.Msg) {
		st, err := events.DecodeStatus(m)
		if err != nil {
			t.Errorf("status: %v", err)
			return
		}
		w.mu.Lock()
		w.history = append(w.history, st)
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	return w
}

// await waits until the status history satisfies cond.
func (w *world) await(what string, cond func(h []events.StatusChanged) bool) {
	w.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		w.mu.Lock()
		ok, ch := cond(w.history), w.changed
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			w.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func latest(h []events.StatusChanged, agent string) (events.StatusChanged, bool) {
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].AgentID == agent {
			return h[i], true
		}
	}
	return events.StatusChanged{}, false
}

func (w *world) awaitStatus(agent, presence string) events.StatusChanged {
	w.t.Helper()
	var st events.StatusChanged
	w.await(agent+" in "+presence, func(h []events.StatusChanged) bool {
		var ok bool
		st, ok = latest(h, agent)
		return ok && st.PresenceID == presence
	})
	return st
}

func (w *world) publish(m *nats.Msg, err error) {
	w.t.Helper()
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.js.PublishMsg(context.Background(), m); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) input(typ events.Type, agent string, data any) {
	w.t.Helper()
	w.publish(events.NewInput(w.subj, typ, agent, fmt.Sprintf("t-%d", w.n.Add(1)), "test", data))
}

func (w *world) workstream(id string, allowed ...events.BaseStatus) {
	w.t.Helper()
	if err := router.EnsureRoutingStream(context.Background(), w.js, "presence"); err != nil {
		w.t.Fatal(err)
	}
	w.publish(events.NewWorkstreamEvent(w.subj, events.WorkstreamConfigured,
		events.Workstream{ID: id, Name: id, AllowedBaseStatuses: allowed}, fmt.Sprintf("ws-%d", w.n.Add(1)), "test"))
}

func (w *world) submit(id, workstream string) {
	w.t.Helper()
	w.publish(events.NewRoutingEvent(w.subj.WorkSubject(workstream), events.WorkSubmitted, "submit-"+id, "test",
		events.WorkItem{ID: id, WorkstreamID: workstream}))
}

func (w *world) complete(agent, item string) {
	w.t.Helper()
	w.publish(events.NewRoutingEvent(w.subj.DoneSubject(agent), events.WorkCompleted, "done-"+item, "test",
		events.WorkCompletedData{WorkItemID: item}))
}

// client is an agent's desktop: it answers offers as told.
type client struct {
	mu     sync.Mutex
	answer string // accept, decline or ignore
	offers []events.Offer
}

func (w *world) client(agent, answer string) *client {
	c := &client{answer: answer}
	if _, err := w.nc.Subscribe(w.subj.OfferSubject(agent), func(m *nats.Msg) {
		var o events.Offer
		if _, rej := events.DecodeRouting(m.Header, m.Data, events.WorkOffered, &o); rej != nil {
			w.t.Errorf("offer to %s: %v", agent, rej)
			return
		}
		c.mu.Lock()
		c.offers = append(c.offers, o)
		answer := c.answer
		c.mu.Unlock()
		switch answer {
		case "accept", "decline":
			b, _ := json.Marshal(events.OfferReply{Accept: answer == "accept"})
			_ = m.Respond(b)
		}
	}); err != nil {
		w.t.Fatal(err)
	}
	return c
}

func (c *client) offered() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for _, o := range c.offers {
		ids = append(ids, o.WorkItemID)
	}
	return ids
}

// startRouter runs the command in-process until the returned stop.
func (w *world) startRouter(args ...string) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--nats-url", w.url, "--log-level", "warn"}, args...), cli.NoEnv, os.Stderr)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				w.t.Errorf("router: %v", err)
			}
		})
	}
	w.t.Cleanup(stop)
	return stop
}

func TestIgnoredOfferMakesAgentInactiveAndWorkMovesOn(t *testing.T) {
	w := newWorld(t)
	w.workstream("chat", events.Available, events.Busy)
	// Signed in in this order, so the ignorer has been available longest and is offered first.
	ignorer := w.client("a-ignore", "ignore")
	taker := w.client("a-take", "accept")
	away := w.client("a-away", "accept")
	for _, a := range []string{"a-ignore", "a-take", "a-away"} {
		w.input(events.AgentLogin, a, nil)
		w.awaitStatus(a, "available")
	}
	w.input(events.AgentPresenceSet, "a-away", events.PresenceSetData{PresenceID: "away"})
	w.awaitStatus("a-away", "away")
	w.startRouter("--offer-timeout", "300ms", "--capacity", "2")

	w.submit("w1", "chat")
	inactive := w.awaitStatus("a-ignore", "inactive")
	if inactive.Cause.Type != events.NotificationMissed || inactive.Actor != "router" {
		t.Fatalf("inactive caused by %+v / %s, want a notification.missed from the router", inactive.Cause, inactive.Actor)
	}
	// The taker gets w1; capacity 1 of 2 makes it busy (reason capacity).
	busy := w.awaitStatus("a-take", "busy")
	if busy.Reason != events.Reason("capacity") {
		t.Fatalf("a-take busy for %q, want capacity", busy.Reason)
	}
	w.submit("w2", "chat")
	w.awaitStatus("a-take", "busy_dnd") // full: 2 of 2
	// Nobody may take w3: the taker is full, the ignorer inactive, the third away.
	w.submit("w3", "chat")
	w.complete("a-take", "w1")
	// Capacity drops to 1 of 2 (busy), then w3 fills it again.
	w.await("a-take busy then busy_dnd again", func(h []events.StatusChanged) bool { return times(h, "a-take", "busy_dnd") == 2 })
	if got := taker.offered(); !slices.Equal(got, []string{"w1", "w2", "w3"}) {
		t.Fatalf("a-take was offered %v, want w1 w2 w3", got)
	}
	if got := ignorer.offered(); !slices.Equal(got, []string{"w1"}) {
		t.Fatalf("a-ignore was offered %v; after going inactive it must get nothing", got)
	}
	if got := away.offered(); len(got) != 0 {
		t.Fatalf("a-away (away is not allowed by chat) was offered %v", got)
	}
}

func TestDeclinedOfferWithRejectedHandlingOn(t *testing.T) {
	w := newWorld(t)
	w.input(events.SettingsConfigured, "", []byte(`{"rejectedNotification":true}`))
	w.workstream("voice", events.Available)
	decliner := w.client("a-decline", "decline")
	w.input(events.AgentLogin, "a-decline", nil)
	w.awaitStatus("a-decline", "available")
	w.startRouter("--offer-timeout", "2s")
	w.submit("v1", "voice")
	dnd := w.awaitStatus("a-decline", "busy_dnd")
	if dnd.Cause.Type != events.NotificationRejected {
		t.Fatalf("busy_dnd caused by %s, want notification.rejected", dnd.Cause.Type)
	}
	// Sticky: the item waits, and goes to the agent once it is available again.
	w.input(events.AgentPresenceSet, "a-decline", events.PresenceSetData{PresenceID: "available"})
	decliner.mu.Lock()
	decliner.answer = "accept"
	decliner.mu.Unlock()
	w.await("v1 accepted at last", func(h []events.StatusChanged) bool {
		st, _ := latest(h, "a-decline")
		return st.PresenceID == "busy" && st.Reason == events.Reason("capacity") // 1 of 2
	})
	if got := decliner.offered(); !slices.Equal(got, []string{"v1", "v1"}) {
		t.Fatalf("offers %v, want v1 declined then v1 accepted", got)
	}
}

func TestRestartReannouncesCapacityAndKeepsQueue(t *testing.T) {
	w := newWorld(t)
	w.workstream("chat", events.Available, events.Busy)
	w.client("a-1", "accept")
	w.input(events.AgentLogin, "a-1", nil)
	w.awaitStatus("a-1", "available")
	stop := w.startRouter("--capacity", "1")
	w.submit("c1", "chat")
	w.awaitStatus("a-1", "busy_dnd") // 1 of 1
	w.submit("c2", "chat")           // waits: a-1 is full
	stop()

	announced := make(chan events.CapacityData, 4)
	sub, err := w.nc.Subscribe(w.subj.RouterIn("a-1"), func(m *nats.Msg) {
		ev, rej := w.subj.Decode(m.Subject, m.Header, m.Data)
		if rej == nil && ev.Type == events.AgentCapacityChanged {
			announced <- ev.Data.(events.CapacityData)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	w.startRouter("--capacity", "1")
	select {
	case c := <-announced:
		if c != (events.CapacityData{Used: 1, Total: 1}) {
			t.Fatalf("re-announced %+v, want used 1 of 1", c)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no capacity re-announced at start")
	}
	// c2 survived the restart: completing c1 frees a-1 and c2 is assigned.
	w.complete("a-1", "c1")
	w.await("c2 assigned after restart", func(h []events.StatusChanged) bool { return times(h, "a-1", "busy_dnd") == 2 })
}

func TestEligibilityQuery(t *testing.T) {
	w := newWorld(t)
	w.workstream("chat", events.Available)
	w.input(events.AgentLogin, "a-1", nil)
	w.awaitStatus("a-1", "available")
	w.startRouter()
	var reply router.EligibleReply
	deadline := time.Now().Add(20 * time.Second)
	for len(reply.Agents) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("eligibility query never listed a-1")
		}
		m, err := w.nc.Request(w.subj.Eligible("chat"), nil, 2*time.Second)
		if err != nil {
			time.Sleep(50 * time.Millisecond) // the router is still subscribing
			continue
		}
		if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
			// 503 until the router's snapshot is loaded; anything else is wrong.
			if code != "503" {
				t.Fatalf("eligibility query answered %s: %s", code, m.Header.Get("Nats-Service-Error"))
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			t.Fatal(err)
		}
	}
	if reply.WorkstreamID != "chat" || reply.Agents[0].AgentID != "a-1" || reply.Agents[0].BaseStatus != events.Available {
		t.Fatalf("reply %+v", reply)
	}
	m, err := w.nc.Request(w.subj.Eligible("nope"), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Nats-Service-Error-Code") != "404" {
		t.Fatalf("unknown workstream answered %q", m.Header.Get("Nats-Service-Error-Code"))
	}
}

// routerEvents collects what routers publish for one agent on its router subject.
func (w *world) routerEvents(agent string) <-chan events.Event {
	ch := make(chan events.Event, 64)
	sub, err := w.nc.Subscribe(w.subj.RouterIn(agent), func(m *nats.Msg) {
		ev, rej := w.subj.Decode(m.Subject, m.Header, m.Data)
		if rej != nil {
			w.t.Errorf("router event: %v", rej)
			return
		}
		ch <- ev
	})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return ch
}

func next(t *testing.T, ch <-chan events.Event, typ events.Type) events.Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.Type == typ {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s published", typ)
		}
	}
}

// TestRestartedRouterUsesNewIDs: a second run of the router offering the same
// item to the same agent, which misses it again, publishes a notification.missed
// with a new id, and the worker acts on it (a repeated id would be dropped as a
// copy of the first run's); a capacity re-announced at start has an id of its
// own too.
func TestRestartedRouterUsesNewIDs(t *testing.T) {
	w := newWorld(t)
	w.workstream("chat", events.Available, events.Busy)
	w.client("a-1", "ignore")
	w.input(events.AgentLogin, "a-1", nil)
	w.awaitStatus("a-1", "available")
	sent := w.routerEvents("a-1")

	stop := w.startRouter("--offer-timeout", "300ms")
	w.submit("m1", "chat")
	first := next(t, sent, events.NotificationMissed)
	inactive := w.awaitStatus("a-1", "inactive")
	stop()
	ids := map[string]bool{first.ID: true}
	for len(sent) > 0 {
		ids[(<-sent).ID] = true // any later attempt of the first run
	}

	// Back at the desk; the restarted router offers m1 to a-1 again, as its
	// first attempt in this run, and a-1 misses it again.
	w.input(events.AgentPresenceSet, "a-1", events.PresenceSetData{PresenceID: "available"})
	w.awaitStatus("a-1", "available")
	stop = w.startRouter("--offer-timeout", "300ms")
	second := next(t, sent, events.NotificationMissed)
	if ids[second.ID] {
		t.Fatalf("the restarted router published id %q, already used by its first run (%v)", second.ID, ids)
	}
	again := w.awaitStatus("a-1", "inactive")
	if again.Version <= inactive.Version || again.Cause.ID != second.ID {
		t.Fatalf("second Inactive %+v (cause %+v), want a new status caused by %s", again, again.Cause, second.ID)
	}

	stop()

	// Capacity: the same load announced by two runs (a-2 takes m1, still pending).
	taker := "a-2"
	w.client(taker, "accept")
	got := w.routerEvents(taker)
	w.input(events.AgentLogin, taker, nil)
	w.awaitStatus(taker, "available")
	stop = w.startRouter("--capacity", "1")
	w.submit("m2", "chat")
	assigned := next(t, got, events.AgentCapacityChanged)
	w.awaitStatus(taker, "busy_dnd")
	stop()
	w.startRouter("--capacity", "1")
	reannounced := next(t, got, events.AgentCapacityChanged)
	if reannounced.Data != assigned.Data || reannounced.ID == assigned.ID {
		t.Fatalf("capacity %s %+v, then after the restart %s %+v: want the same load under a new id",
			assigned.ID, assigned.Data, reannounced.ID, reannounced.Data)
	}
}

// TestHTTPEligibility: the router's HTTP eligibility query and /readyz answer
// 503 until the snapshot is loaded, then the list.
func TestHTTPEligibility(t *testing.T) {
	w := newWorld(t)
	w.workstream("chat", events.Available)
	w.input(events.AgentLogin, "a-1", nil)
	w.awaitStatus("a-1", "available")
	r, err := router.New(w.nc, router.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(httpHandler(r, prometheus.NewRegistry()))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	for _, p := range []string{"/eligible/chat", "/readyz"} {
		if code, body := get(p); code != http.StatusServiceUnavailable {
			t.Errorf("%s before the snapshot is loaded: %d %q, want 503", p, code, body)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := r.WaitReady(wctx); err != nil {
		t.Fatalf("router never ready: %v", err)
	}
	code, body := get("/eligible/chat")
	var reply router.EligibleReply
	if code != http.StatusOK || json.Unmarshal([]byte(body), &reply) != nil || len(reply.Agents) != 1 || reply.Agents[0].AgentID != "a-1" {
		t.Fatalf("/eligible/chat once ready: %d %s", code, body)
	}
	if code, _ := get("/eligible/nope"); code != http.StatusNotFound {
		t.Fatalf("/eligible/nope: %d, want 404", code)
	}
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz once ready: %d %q", code, body)
	}
}

// times counts how often agent entered presence in h.
func times(h []events.StatusChanged, agent, presence string) int {
	n := 0
	for _, st := range h {
		if st.AgentID == agent && st.PresenceID == presence {
			n++
		}
	}
	return n
}
