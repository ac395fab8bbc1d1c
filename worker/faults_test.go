package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/internal/workertest"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// TestExpiryOnceWithReplicas: with three replicas sweeping, every expired session
// ends exactly once.
func TestExpiryOnceWithReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for range 3 {
		e.startWorker()
	}
	e.publish(events.SettingsConfigured, "", map[string]any{"sessionTtlSeconds": 1})
	const n = 12
	for i := range n {
		e.publish(events.AgentLogin, fmt.Sprintf("x-%d", i), sess{SessionID: "s"})
	}
	for i := range n {
		a := fmt.Sprintf("x-%d", i)
		expectStatus(t, e.waitVersion(a, 2), "offline", events.ReasonSessionExpired, false)
		e.publish(events.AgentLogin, a, sess{SessionID: "s"})
	}
	for i := range n {
		a := fmt.Sprintf("x-%d", i)
		expectStatus(t, e.waitVersion(a, 3), "available", events.ReasonReconnect, true)
		if l := e.status.get(a); len(l) > 3 && l[3].Reason != events.ReasonSessionExpired {
			t.Fatalf("%s: %s", a, describe(l))
		}
	}
	e.expectNoDuplicates()
}

func (e *env) expectNoDuplicates() {
	e.t.Helper()
	e.status.mu.Lock()
	defer e.status.mu.Unlock()
	for a, l := range e.status.byAgent {
		for i, st := range l {
			if st.Version != uint64(i+1) {
				e.t.Fatalf("agent %s: versions not 1..n: %s", a, describe(l))
			}
		}
	}
	for id, n := range e.status.ids {
		if n != 1 {
			e.t.Fatalf("status %s published %d times", id, n)
		}
	}
}

// TestRedisUnavailable: while redis-server is down the worker holds events back,
// reports not ready, rejects nothing, and catches up by itself when it returns.
func TestRedisUnavailable(t *testing.T) {
	t.Parallel()
	e := &env{t: t, nats: testenv.StartNATS(t), redis: testenv.StartRedis(t, testenv.WithAOF())}
	e.init()
	w := e.startWorker()
	e.publish(events.AgentLogin, "u-1", sess{})
	e.waitVersion("u-1", 1)

	e.redis.Kill()
	e.publish(events.AgentPresenceSet, "u-1", events.PresenceSetData{PresenceID: "busy"})
	e.publish(events.AgentLogin, "u-2", sess{})
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := w.Ready(context.Background())
		if err != nil && (strings.Contains(err.Error(), "retrying") || strings.Contains(err.Error(), "state store")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker still ready with Redis down: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling the readiness probe
	}
	e.redis.Restart()
	expectStatus(t, e.waitVersion("u-1", 2), "busy", events.ReasonManual, true)
	expectStatus(t, e.waitVersion("u-2", 1), "available", events.ReasonLogin, true)
	e.waitReady(w)
	stream, _ := e.js.Stream(context.Background(), e.names.RejectedStream())
	if info, err := stream.Info(context.Background()); err != nil || info.State.Msgs != 0 {
		t.Fatalf("rejections while Redis was down: %+v %v", info.State, err)
	}
	e.expectNoDuplicates()
}

// TestCheckpointFailureRetried: a checkpoint is written beside the partition's
// work, so while checkpoints fail (readyz reports the retries) and while one
// hangs, inputs are still handled; a failed one is retried until it lands, and
// every status change is out once.
func TestCheckpointFailureRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var failing, hanging atomic.Bool
	failed := make(chan struct{}, 1)
	hung := make(chan struct{}, 1)
	release := make(chan struct{})
	landed := make(chan struct{}, 1)
	w := e.startWorkerWithHooks(worker.Hooks{BeforeCheckpoint: func(ctx context.Context) error {
		switch {
		case failing.Load():
			select {
			case failed <- struct{}{}:
			default:
			}
			return errors.New("injected: checkpoint not written")
		case hanging.Load():
			select {
			case hung <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		select {
		case landed <- struct{}{}:
		default:
		}
		return nil
	}}, func(c *worker.Config) { c.CheckpointInterval = 50 * time.Millisecond })
	const n = 8
	round := func(version uint64, presence string) {
		t.Helper()
		for i := range n {
			e.publish(events.AgentPresenceSet, fmt.Sprintf("f-%d", i), events.PresenceSetData{PresenceID: presence})
		}
		for i := range n {
			expectStatus(t, e.waitVersion(fmt.Sprintf("f-%d", i), version), presence, events.ReasonManual, true)
		}
	}
	await := func(c chan struct{}, what string) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(20 * time.Second):
			t.Fatalf("no checkpoint %s", what)
		}
	}
	for i := range n {
		e.publish(events.AgentLogin, fmt.Sprintf("f-%d", i), sess{})
	}
	for i := range n {
		expectStatus(t, e.waitVersion(fmt.Sprintf("f-%d", i), 1), "available", events.ReasonLogin, true)
	}

	failing.Store(true)
	await(failed, "failed")
	round(2, "busy")
	if err := w.Ready(context.Background()); err == nil {
		t.Fatal("ready while checkpoints fail")
	}
	hanging.Store(true) // first, so that none lands in between
	failing.Store(false)
	await(hung, "started")
	round(3, "away")
	select {
	case <-landed: // from before the failures
	default:
	}
	hanging.Store(false)
	close(release)
	await(landed, "landed")
	e.waitReady(w)
	round(4, "available")

	// A partition that stops while its checkpoints fail (here: its consumer
	// deleted) leaves no retry behind it in /readyz.
	select {
	case <-failed:
	default:
	}
	failing.Store(true)
	await(failed, "failed before the consumers went")
	ctx := context.Background()
	stream, err := e.js.Stream(ctx, e.names.InputStream())
	if err != nil {
		t.Fatal(err)
	}
	for name := range stream.ConsumerNames(ctx).Name() {
		if err := stream.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	failing.Store(false)
	round(5, "busy")
	e.waitReady(w)
	e.expectNoDuplicates()
}

// replyLost is the real Redis store, except that while armed a commit is applied
// and then reported failed: what a client sees when the server goes away after
// applying a script and before its reply.
type replyLost struct {
	state.Store
	armed atomic.Int32
	lost  atomic.Int32
}

func (s *replyLost) Commit(ctx context.Context, p int, commits []state.Commit, index []state.IndexEntry) ([]bool, error) {
	ok, err := s.Store.Commit(ctx, p, commits, index)
	if err == nil && len(commits) > 0 && s.armed.Add(-1) >= 0 {
		s.lost.Add(1)
		return nil, errors.New("injected: connection closed before the reply")
	}
	return ok, err
}

// TestCommitReplyLost: a commit the store applied but whose reply never came
// looks like a store that moved under the owner; the partition is taken over
// again, and the changes of that commit, in the store's outbox only, still go
// out, once and in order.
func TestCommitReplyLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	store := &replyLost{Store: newRedisStore(e)}
	cfg := testConfig(t)
	cfg.Partitions = 1
	w, _ := workertest.StartWithHooks(t, e.nats.Conn(t), store, cfg, worker.Hooks{})
	e.status = e.collect()
	const n = 6
	for i := range n {
		e.publish(events.AgentLogin, fmt.Sprintf("l-%d", i), sess{})
	}
	for i := range n {
		e.waitVersion(fmt.Sprintf("l-%d", i), 1)
	}
	store.armed.Store(1)
	for i := range n {
		e.publish(events.AgentPresenceSet, fmt.Sprintf("l-%d", i), events.PresenceSetData{PresenceID: "busy"})
	}
	for i := range n {
		expectStatus(t, e.waitVersion(fmt.Sprintf("l-%d", i), 2), "busy", events.ReasonManual, true)
	}
	if store.lost.Load() != 1 {
		t.Fatalf("%d replies lost, want 1", store.lost.Load())
	}
	for i := range n {
		e.publish(events.AgentPresenceSet, fmt.Sprintf("l-%d", i), events.PresenceSetData{PresenceID: "away"})
	}
	for i := range n {
		expectStatus(t, e.waitVersion(fmt.Sprintf("l-%d", i), 3), "away", events.ReasonManual, true)
	}
	e.waitReady(w)
	e.expectNoDuplicates()
}

// TestKilledMidLoad SIGKILLs a worker process while it works through a backlog,
// restarts it, and checks the output against the rules applied in stream order.
func TestKilledMidLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	first := e.startProcess()
	e.waitStreams()
	e.status = e.collect()
	e.workload(50, 6)
	e.status.waitFor(t, "k-0", "a first status", func(l []events.StatusChanged) bool { return len(l) > 0 })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	e.startProcess()
	e.expectExactly(e.oracle())
	e.expectNoDuplicates()
}

// TestPartitionConsumersLost: partition consumers deleted under a running
// worker, and all of them lost with a NATS restart (their state is held in the
// server's memory), are noticed; each partition is taken over again and every
// later event is applied, its change published once.
func TestPartitionConsumersLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	agents := make([]string, 16) // over all four partitions
	for i := range agents {
		agents[i] = fmt.Sprintf("cl-%d", i)
		e.publish(events.AgentLogin, agents[i], sess{})
	}
	for _, a := range agents {
		e.waitVersion(a, 1)
	}
	ctx := context.Background()
	stream, err := e.js.Stream(ctx, e.names.InputStream())
	if err != nil {
		t.Fatal(err)
	}
	var deleted int
	for name := range stream.ConsumerNames(ctx).Name() {
		if err := stream.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if deleted < 4 {
		t.Fatalf("deleted %d consumers, want one per partition", deleted)
	}
	for _, a := range agents {
		e.publish(events.AgentPresenceSet, a, events.PresenceSetData{PresenceID: "busy"})
	}
	for _, a := range agents {
		expectStatus(t, e.waitVersion(a, 2), "busy", events.ReasonManual, true)
	}

	e.nats.Restart()
	for _, a := range agents {
		e.publish(events.AgentPresenceSet, a, events.PresenceSetData{PresenceID: "away"})
	}
	for _, a := range agents {
		expectStatus(t, e.waitVersion(a, 3), "away", events.ReasonManual, true)
	}
	e.expectNoDuplicates()
}

// TestStalledPartitionTakenOver: an input lost on its way from the consumer to
// its partition, with none after it to show the gap, is one the partition
// never receives, and the server delivers it again only after the ack wait
// (here far longer than the test). The partition notices that its consumer
// delivered an input it did not receive and that nothing came for StallAfter,
// and is taken over again with a new consumer, which delivers it again; the
// partition goes on from there, each change out once. (stallVerdict's table
// test covers the cases that must not count as a stall.)
func TestStalledPartitionTakenOver(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var lose atomic.Bool
	lost := make(chan uint64, 1)
	e.startWorkerWithHooks(worker.Hooks{LoseDelivery: func(seq uint64) bool {
		if !lose.CompareAndSwap(true, false) {
			return false
		}
		lost <- seq
		return true
	}}, func(c *worker.Config) {
		c.Partitions = 1
		c.AckWait = 10 * time.Minute
		c.StallAfter = time.Second
	})
	e.publish(events.AgentLogin, "st-1", sess{})
	e.waitVersion("st-1", 1)

	lose.Store(true)
	seq := e.publishMsg(e.input(events.AgentPresenceSet, "st-1", events.PresenceSetData{PresenceID: "busy"}))
	select {
	case got := <-lost:
		if got != seq {
			t.Fatalf("lost the delivery of input %d, want %d", got, seq)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("input not delivered")
	}
	expectStatus(t, e.waitVersion("st-1", 2), "busy", events.ReasonManual, true)
	e.publish(events.AgentPresenceSet, "st-1", events.PresenceSetData{PresenceID: "away"})
	expectStatus(t, e.waitVersion("st-1", 3), "away", events.ReasonManual, true)
	e.expectNoDuplicates()
}
