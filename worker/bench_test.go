package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// BenchmarkPipeline measures presenced end to end on a preloaded input stream:
// b.N events over 1000 agents (login, set, missed, set, logout: each changes the
// status), consumed by one worker with Redis state until the last status is out.
//
//	go test -run '^$' -bench Pipeline -benchtime 20000x ./worker
func BenchmarkPipeline(b *testing.B) {
	for _, store := range []string{"redis", "memory"} {
		for _, p := range []int{1, 4, 16} {
			b.Run(fmt.Sprintf("%s/partitions=%d", store, p), func(b *testing.B) { benchPipeline(b, store, p) })
		}
	}
}

func benchPipeline(b *testing.B, store string, partitions int) {
	nb := newBenchEnv(b)
	js := nb.js
	subj := events.Subjects{}
	ctx := context.Background()
	cfg := worker.Config{Logger: quietLogger(), Partitions: partitions}
	var st state.Store = state.NewMemory()
	if store == "redis" {
		st = nb.redisStore()
	}
	// Create the streams first so the load can be preloaded.
	w, err := worker.New(nb.nc, st, cfg, nil, worker.Hooks{})
	if err != nil {
		b.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	for w.Ready(ctx) != nil {
		time.Sleep(10 * time.Millisecond) // polling the readiness probe
	}
	cancel()
	<-done

	const agents = 1000
	kinds := []struct {
		typ  events.Type
		data any
	}{
		{events.AgentLogin, events.SessionData{}},
		{events.AgentPresenceSet, events.PresenceSetData{PresenceID: "busy"}},
		{events.NotificationMissed, events.NotificationData{}},
		{events.AgentPresenceSet, events.PresenceSetData{PresenceID: "away"}},
		{events.AgentLogout, events.SessionData{}},
	}
	var last jetstream.PubAckFuture
	for i := range b.N {
		k := kinds[(i/agents)%len(kinds)]
		a := fmt.Sprintf("b-%d", i%agents)
		m, err := events.NewInput(subj, k.typ, a, fmt.Sprintf("e-%d", i), "bench", k.data)
		if err != nil {
			b.Fatal(err)
		}
		// b.N may pass the room for outstanding publishes: wait for room.
		if last, err = js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
			b.Fatal(err)
		}
	}
	if last != nil {
		<-last.Ok()
	}
	status, err := js.Stream(ctx, worker.NamesFor("presence").StatusStream())
	if err != nil {
		b.Fatal(err)
	}
	want := uint64(b.N)

	b.ResetTimer()
	start := time.Now()
	w2, err := worker.New(nb.nc, st, cfg, nil, worker.Hooks{})
	if err != nil {
		b.Fatal(err)
	}
	wctx, cancel = context.WithCancel(ctx)
	go func() { done <- w2.Run(wctx) }()
	for {
		info, err := status.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.State.LastSeq >= want {
			break
		}
		time.Sleep(5 * time.Millisecond) // polling the stream's sequence, the cheapest progress signal
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}

type benchEnv struct {
	b     *testing.B
	nc    *nats.Conn
	js    jetstream.JetStream
	redis *testenv.Redis
}

func newBenchEnv(b *testing.B) *benchEnv {
	n := testenv.StartNATS(b)
	nc := n.Conn(b)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return &benchEnv{b: b, nc: nc, js: js, redis: testenv.StartRedis(b)}
}

func (nb *benchEnv) redisStore() state.Store {
	s := state.NewRedis(redis.NewClient(&redis.Options{Addr: nb.redis.Addr()}), state.RedisConfig{})
	nb.b.Cleanup(func() { _ = s.Close() })
	return s
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}
