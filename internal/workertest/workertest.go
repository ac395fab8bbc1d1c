// Package workertest runs an in-process presenced worker for the tests of the
// packages built around it.
package workertest

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// Logger logs at warn, or at PRESENCED_TEST_LOG's level, naming the test.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	_ = level.UnmarshalText([]byte(os.Getenv("PRESENCED_TEST_LOG")))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("test", t.Name())
}

// Start runs a worker until the returned stop is called or the test ends, and
// returns once it is ready.
func Start(t testing.TB, nc *nats.Conn, store state.Store, cfg worker.Config) (*worker.Worker, func()) {
	t.Helper()
	return StartWithHooks(t, nc, store, cfg, worker.Hooks{})
}

// StartWithHooks is Start with faults injected at the hooks' points.
func StartWithHooks(t testing.TB, nc *nats.Conn, store state.Store, cfg worker.Config, hooks worker.Hooks) (*worker.Worker, func()) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	w, err := worker.New(nc, store, cfg, nil, hooks)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("worker: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := w.Ready(context.Background())
		if err == nil {
			return w, stop
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker not ready: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling the readiness probe
	}
}

// Until polls cond every 20 ms until it holds, and fails the test after within:
// for what no event announces (a write to Redis, a router catching up).
func Until(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, within)
		}
		time.Sleep(20 * time.Millisecond) // polling: nothing announces what cond reads
	}
}
