package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/internal/workertest"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// env is one black-box setup: a real embedded NATS server, a real redis-server,
// and a client that only publishes CloudEvents and reads the output subjects.
type env struct {
	t       *testing.T
	nats    *testenv.NATS
	redis   *testenv.Redis
	nc      *nats.Conn
	js      jetstream.JetStream
	subj    events.Subjects
	names   worker.Names
	status  *collector
	nextID  int
	mu      sync.Mutex
	workers []context.CancelFunc
	// natsURL and redisURL, when set, replace the single servers' URLs for
	// worker processes (clusters).
	natsURL, redisURL string
}

// testConfig makes failures readable: logs name the test, and
// PRESENCED_TEST_LOG=debug shows everything.
func testConfig(t *testing.T) worker.Config {
	return worker.Config{
		Partitions: 4, LeaseTTL: 2 * time.Second, SweepInterval: 200 * time.Millisecond,
		Logger: workertest.Logger(t),
	}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, nats: testenv.StartNATS(t), redis: testenv.StartRedis(t)}
	e.init()
	return e
}

func (e *env) init() {
	e.nc = e.nats.Conn(e.t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		e.t.Fatal(err)
	}
	e.js = js
	e.names = worker.NamesFor("presence")
	e.subj = e.names.Subjects
}

// startWorker runs an in-process replica with Redis state until the test ends.
func (e *env) startWorker(mutate ...func(*worker.Config)) *worker.Worker {
	e.t.Helper()
	return e.startWorkerWithHooks(worker.Hooks{}, mutate...)
}

func (e *env) startWorkerWithHooks(hooks worker.Hooks, mutate ...func(*worker.Config)) *worker.Worker {
	e.t.Helper()
	cfg := testConfig(e.t)
	for _, m := range mutate {
		m(&cfg)
	}
	w, _ := workertest.StartWithHooks(e.t, e.nats.Conn(e.t), newRedisStore(e), cfg, hooks)
	if e.status == nil {
		e.status = e.collect()
	}
	return w
}

func (e *env) waitReady(w *worker.Worker) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := w.Ready(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("worker not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling a readiness probe, not ordering events
	}
}

// collector gathers every status event from the status stream, in order.
type collector struct {
	mu      sync.Mutex
	cond    *sync.Cond
	byAgent map[string][]events.StatusChanged
	ids     map[string]int
}

func (e *env) collect() *collector {
	c := &collector{byAgent: map[string][]events.StatusChanged{}, ids: map[string]int{}}
	c.cond = sync.NewCond(&c.mu)
	ctx := context.Background()
	cons, err := e.js.OrderedConsumer(ctx, e.names.StatusStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		e.t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		st, err := events.DecodeStatus(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			e.t.Errorf("status event: %v", err)
			return
		}
		c.mu.Lock()
		c.byAgent[st.AgentID] = append(c.byAgent[st.AgentID], st)
		c.ids[m.Headers().Get("ce-id")]++
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(cc.Stop)
	return c
}

// waitFor blocks until the agent's status list satisfies ok, or fails the test.
func (c *collector) waitFor(t *testing.T, agent string, what string, ok func([]events.StatusChanged) bool) []events.StatusChanged {
	t.Helper()
	timer := time.AfterFunc(20*time.Second, func() { c.mu.Lock(); c.cond.Broadcast(); c.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(20 * time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	for !ok(c.byAgent[agent]) {
		if time.Now().After(deadline) {
			t.Fatalf("agent %s: timed out waiting for %s; got %s", agent, what, describe(c.byAgent[agent]))
		}
		c.cond.Wait()
	}
	return append([]events.StatusChanged(nil), c.byAgent[agent]...)
}

// waitVersion waits for the agent's status with version v and returns it.
func (e *env) waitVersion(agent string, v uint64) events.StatusChanged {
	e.t.Helper()
	list := e.status.waitFor(e.t, agent, fmt.Sprintf("version %d", v), func(l []events.StatusChanged) bool {
		return len(l) > 0 && l[len(l)-1].Version >= v
	})
	for _, st := range list {
		if st.Version == v {
			return st
		}
	}
	e.t.Fatalf("agent %s: version %d missing from %s", agent, v, describe(list))
	return events.StatusChanged{}
}

func (c *collector) get(agent string) []events.StatusChanged {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]events.StatusChanged(nil), c.byAgent[agent]...)
}

func describe(l []events.StatusChanged) string {
	s := "["
	for _, st := range l {
		s += fmt.Sprintf(" v%d:%s/%s", st.Version, st.PresenceID, st.Reason)
	}
	return s + " ]"
}

// publish sends one binary-mode input event and returns its id.
func (e *env) publish(typ events.Type, agent string, data any) string {
	e.t.Helper()
	m := e.input(typ, agent, data)
	e.publishMsg(m)
	return m.Header.Get("ce-id")
}

// input builds the next binary-mode input event, with an id unique in the test.
func (e *env) input(typ events.Type, agent string, data any) *nats.Msg {
	e.t.Helper()
	e.mu.Lock()
	e.nextID++
	id := fmt.Sprintf("%s-%d", e.t.Name(), e.nextID)
	e.mu.Unlock()
	m, err := events.NewInput(e.subj, typ, agent, id, "test", data)
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func (e *env) publishMsg(m *nats.Msg) uint64 {
	e.t.Helper()
	ack, err := e.js.PublishMsg(context.Background(), m)
	if err != nil {
		e.t.Fatalf("publish %s: %v", m.Subject, err)
	}
	return ack.Sequence
}

// query asks a request/reply subject and returns the data or the service error code.
func (e *env) query(subject string) ([]byte, string) {
	e.t.Helper()
	m, err := e.nc.Request(subject, nil, 5*time.Second)
	if err != nil {
		e.t.Fatalf("request %s: %v", subject, err)
	}
	return m.Data, m.Header.Get("Nats-Service-Error-Code")
}

func (e *env) queryAgent(agent string) (events.StatusChanged, string) {
	data, code := e.query(e.subj.QueryAgent(agent))
	var st events.StatusChanged
	if code == "" {
		if err := json.Unmarshal(data, &st); err != nil {
			e.t.Fatalf("query reply %q: %v", data, err)
		}
	}
	return st, code
}

// rejections reads the dead-letter stream from the start, waiting for n entries.
func (e *env) rejections(n int) []events.Rejected {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cons, err := e.js.OrderedConsumer(ctx, e.names.RejectedStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []events.Rejected
	for len(out) < n {
		m, err := cons.Next(jetstream.FetchMaxWait(20 * time.Second))
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, nats.ErrTimeout) {
				break
			}
			e.t.Fatalf("read rejected: %v", err)
		}
		r, err := events.DecodeRejected(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			e.t.Fatalf("decode rejected: %v", err)
		}
		out = append(out, r)
	}
	if len(out) < n {
		e.t.Fatalf("got %d rejections, want %d: %+v", len(out), n, out)
	}
	return out
}

// readModel returns the public Redis hash of an agent.
func (e *env) readModel(agent string) map[string]string {
	e.t.Helper()
	m, err := e.redis.Client(e.t).HGetAll(context.Background(), "presence:agent:{"+agent+"}").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func newRedisStore(e *env) state.Store {
	store := state.NewRedis(redis.NewClient(&redis.Options{Addr: e.redis.Addr()}), state.RedisConfig{})
	e.t.Cleanup(func() { _ = store.Close() })
	return store
}

type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

// The tests kill and restart redis-server on purpose; go-redis would log every
// refused dial of the pool.
func init() { redis.SetLogger(quietRedisLog{}) }
