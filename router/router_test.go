package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/internal/workertest"
	"github.com/presenced/presenced/router"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

type setup struct {
	t     *testing.T
	nc    *nats.Conn
	js    jetstream.JetStream
	redis *testenv.Redis
	n     int
}

// routerWait bounds a wait for the router to catch up with what the test did.
const routerWait = 20 * time.Second

func newSetup(t *testing.T) *setup {
	n := testenv.StartNATS(t)
	s := &setup{t: t, nc: n.Conn(t), redis: testenv.StartRedis(t)}
	s.js, _ = jetstream.New(s.nc)
	store := state.NewRedis(redis.NewClient(&redis.Options{Addr: s.redis.Addr()}), state.RedisConfig{})
	t.Cleanup(func() { _ = store.Close() })
	workertest.Start(t, n.Conn(t), store, worker.Config{Partitions: 4})
	return s
}

func (s *setup) publish(typ events.Type, agent string, data any) {
	s.t.Helper()
	s.n++
	m, err := events.NewInput(events.Subjects{}, typ, agent, fmt.Sprintf("r-%d", s.n), "test", data)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.js.PublishMsg(context.Background(), m); err != nil {
		s.t.Fatal(err)
	}
}

func (s *setup) workstream(typ events.Type, ws events.Workstream) {
	s.t.Helper()
	s.n++
	m, err := events.NewWorkstreamEvent(events.Subjects{}, typ, ws, fmt.Sprintf("ws-%d", s.n), "test")
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.js.PublishMsg(context.Background(), m); err != nil {
		s.t.Fatal(err)
	}
}

func startRouter(t *testing.T, nc *nats.Conn) *router.Router {
	r, err := router.New(nc, router.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func ids(agents []router.Agent) []string {
	var out []string
	for _, a := range agents {
		out = append(out, a.AgentID)
	}
	return out
}

func TestEligibleFollowsStatusAndWorkstreams(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	if err := router.EnsureRoutingStream(context.Background(), s.js, "presence"); err != nil {
		t.Fatal(err)
	}
	s.workstream(events.WorkstreamConfigured, events.Workstream{ID: "chat", Name: "Chat", AllowedBaseStatuses: []events.BaseStatus{events.Available, events.Busy}})
	for _, a := range []string{"a-1", "a-2", "a-3", "a-4"} {
		s.publish(events.AgentLogin, a, events.SessionData{})
	}
	s.publish(events.AgentPresenceSet, "a-3", events.PresenceSetData{PresenceID: "away"})
	s.publish(events.NotificationMissed, "a-4", events.NotificationData{})

	// A router that starts late rebuilds the picture from the streams.
	r := startRouter(t, s.nc)
	workertest.Until(t, routerWait, "router ready", r.Ready)
	for id, p := range map[string]string{"a-1": "available", "a-2": "available", "a-3": "away", "a-4": "inactive"} {
		workertest.Until(t, routerWait, id+" "+p, func() bool { a, _ := r.Agent(id); return a.PresenceID == p })
	}
	got, err := r.Eligible("chat")
	if err != nil || fmt.Sprint(ids(got)) != "[a-1 a-2]" {
		t.Fatalf("eligible = %v %v, want a-1 a-2 (longest in presence first)", ids(got), err)
	}
	if _, err := r.Eligible("voice"); err != router.ErrUnknownWorkstream {
		t.Fatalf("unknown workstream: %v", err)
	}

	// Live: a-1 goes busy (still allowed, now the newest), a-2 logs out.
	s.publish(events.AgentPresenceSet, "a-1", events.PresenceSetData{PresenceID: "busy"})
	s.publish(events.AgentLogout, "a-2", events.SessionData{})
	s.publish(events.AgentPresenceSet, "a-3", events.PresenceSetData{PresenceID: "available"})
	workertest.Until(t, routerWait, "a-2 offline", func() bool { a, _ := r.Agent("a-2"); return !a.SignedIn && a.Version == 2 })
	workertest.Until(t, routerWait, "a-3 available", func() bool { a, _ := r.Agent("a-3"); return a.PresenceID == "available" })
	got, _ = r.Eligible("chat")
	if fmt.Sprint(ids(got)) != "[a-1 a-3]" && fmt.Sprint(ids(got)) != "[a-3 a-1]" {
		t.Fatalf("eligible = %v", ids(got))
	}
	if got[0].Since.After(got[1].Since) {
		t.Fatalf("not longest first: %+v", got)
	}

	// The eligibility query subject.
	sub, err := r.Serve()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	m, err := s.nc.Request(events.Subjects{}.Eligible("chat"), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply router.EligibleReply
	if err := json.Unmarshal(m.Data, &reply); err != nil || reply.WorkstreamID != "chat" || len(reply.Agents) != 2 {
		t.Fatalf("reply %s: %v", m.Data, err)
	}
	s.workstream(events.WorkstreamRemoved, events.Workstream{ID: "chat"})
	workertest.Until(t, routerWait, "chat removed", func() bool { _, ok := r.Workstream("chat"); return !ok })
	m, err = s.nc.Request(events.Subjects{}.Eligible("chat"), nil, 5*time.Second)
	if err != nil || m.Header.Get("Nats-Service-Error-Code") != "404" {
		t.Fatalf("removed workstream: %v %v", m, err)
	}
}

func TestOlderVersionNeverOverwrites(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	r := startRouter(t, s.nc)
	workertest.Until(t, routerWait, "router ready", r.Ready)
	s.publish(events.AgentLogin, "o-1", events.SessionData{})
	s.publish(events.AgentPresenceSet, "o-1", events.PresenceSetData{PresenceID: "busy"})
	workertest.Until(t, routerWait, "o-1 busy", func() bool { a, _ := r.Agent("o-1"); return a.Version == 2 })
	if r.Apply(events.StatusChanged{AgentID: "o-1", PresenceID: "available", BaseStatus: events.Available, SignedIn: true, Version: 1}) {
		t.Fatal("an older version was applied")
	}
	if a, _ := r.Agent("o-1"); a.PresenceID != "busy" {
		t.Fatalf("agent = %+v", a)
	}
}

// TestAgreesWithReadModel: after a burst of mixed events, the router's picture
// equals the Redis read model for every agent.
func TestAgreesWithReadModel(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	r := startRouter(t, s.nc)
	s.workstream(events.WorkstreamConfigured, events.Workstream{ID: "chat", Name: "Chat", AllowedBaseStatuses: []events.BaseStatus{events.Available, events.Busy}})
	const agents, total = 1000, 10000
	kinds := []func(i int) (events.Type, any){
		func(int) (events.Type, any) { return events.AgentLogin, events.SessionData{} },
		func(int) (events.Type, any) {
			return events.AgentPresenceSet, events.PresenceSetData{PresenceID: "busy"}
		},
		func(i int) (events.Type, any) {
			return events.AgentCapacityChanged, events.CapacityData{Used: i % 3, Total: 2}
		},
		func(int) (events.Type, any) { return events.NotificationMissed, events.NotificationData{} },
		func(int) (events.Type, any) {
			return events.AgentPresenceSet, events.PresenceSetData{PresenceID: "available"}
		},
		func(int) (events.Type, any) { return events.AgentHeartbeat, events.SessionData{} },
		func(int) (events.Type, any) { return events.AgentLogout, events.SessionData{} },
	}
	var late *router.Router
	for i := range total {
		// Everyone signs in first, then each agent walks the kinds from its own offset.
		round, agent := i/agents, i%agents
		k := 0
		if round > 0 {
			k = (round + agent) % len(kinds)
		}
		typ, data := kinds[k](i)
		m, err := events.NewInput(events.Subjects{}, typ, fmt.Sprintf("m-%d", i%agents), fmt.Sprintf("burst-%d", i), "test", data)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.js.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
		if i%1000 == 999 {
			<-s.js.PublishAsyncComplete()
		}
		if i == total/2 {
			// A router that starts mid-burst loads a snapshot, then follows.
			late = startRouter(t, s.nc)
		}
	}
	select {
	case <-s.js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		t.Fatal("burst not acknowledged")
	}
	rc := s.redis.Client(t)
	ctx := context.Background()
	check := func() error {
		wantEligible, known := 0, 0
		for i := range agents {
			id := fmt.Sprintf("m-%d", i)
			rm, err := rc.HGetAll(ctx, "presence:agent:{"+id+"}").Result()
			if err != nil {
				return err
			}
			for _, rt := range []*router.Router{r, late} {
				a, ok := rt.Agent(id)
				if !ok && len(rm) == 0 {
					continue // never signed in: neither knows it
				}
				if !ok || rm["presenceId"] != a.PresenceID || rm["version"] != fmt.Sprint(a.Version) || rm["signedIn"] != fmt.Sprint(a.SignedIn) {
					return fmt.Errorf("%s: router %+v, read model %v", id, a, rm)
				}
			}
			if len(rm) > 0 {
				known++
			}
			allowed := rm["signedIn"] == "true" && (rm["baseStatus"] == "available" || rm["baseStatus"] == "busy")
			if allowed {
				wantEligible++
			}
		}
		for _, rt := range []*router.Router{r, late} {
			el, err := rt.Eligible("chat")
			if err != nil {
				return err
			}
			if len(el) != wantEligible {
				return fmt.Errorf("eligible for chat: router lists %d, read model %d", len(el), wantEligible)
			}
		}
		if known < agents/2 || wantEligible == 0 {
			return fmt.Errorf("the burst left too little to compare: %d agents known, %d eligible", known, wantEligible)
		}
		return nil
	}
	// Done means every partition consumer has handled everything.
	drained := func() bool {
		stream, err := s.js.Stream(ctx, "PRESENCE_IN")
		if err != nil {
			return false
		}
		n := 0
		for name := range stream.ConsumerNames(ctx).Name() {
			c, err := stream.Consumer(ctx, name)
			if err != nil || c.CachedInfo().NumPending > 0 || c.CachedInfo().NumAckPending > 0 {
				return false
			}
			n++
		}
		return n == 4
	}
	workertest.Until(t, routerWait, "the worker to drain the input", drained)
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := check()
		if err == nil && r.Lag() == 0 && late.Lag() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("router and read model disagree: %v (lags %d, %d)", err, r.Lag(), late.Lag())
		}
		time.Sleep(20 * time.Millisecond) // the routers follow the status stream asynchronously
	}
}

type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietRedisLog{}) }

// TestCountsByBaseStatus: signed-in agents count under their base status, the
// rest as offline, and the collector exports the same once the picture is loaded.
func TestCountsByBaseStatus(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	r := startRouter(t, s.nc)
	workertest.Until(t, routerWait, "router ready", r.Ready)
	apply := func(id string, b events.BaseStatus, signedIn bool, v uint64) {
		r.Apply(events.StatusChanged{AgentID: id, PresenceID: string(b), BaseStatus: b, SignedIn: signedIn, Version: v})
	}
	apply("c-1", events.Available, true, 1)
	apply("c-2", events.Available, true, 1)
	apply("c-3", events.Busy, true, 1)
	apply("c-4", events.Offline, false, 1)
	apply("c-2", events.Away, true, 2)
	apply("c-3", events.Offline, false, 2)
	want := map[events.BaseStatus]int{events.Available: 1, events.Busy: 0, events.BusyDND: 0, events.Away: 1, events.Offline: 2}
	if got := r.Counts(); !maps.Equal(got, want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(router.NewAgentsCollector(r, "test_agents"))
	expected := `# HELP test_agents Agents by the base status of their current presence (signed-out agents count as offline).
# TYPE test_agents gauge
test_agents{base_status="available"} 1
test_agents{base_status="away"} 1
test_agents{base_status="busy"} 0
test_agents{base_status="busy_dnd"} 0
test_agents{base_status="offline"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "test_agents"); err != nil {
		t.Fatal(err)
	}
}
