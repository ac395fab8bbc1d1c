package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// TestSweepRepairsLeaseIndex: a lease entry the agent does not have (left by a
// write that did not finish, or by a move from an older layout) is put right by
// the next sweep that meets it, and expires nothing.
func TestSweepRepairsLeaseIndex(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	const a = "stale-1"
	e.publish(events.AgentLogin, a, sess{SessionID: "desk"})
	e.waitVersion(a, 1)
	e.publish(events.AgentLogout, a, sess{SessionID: "desk"})
	e.waitVersion(a, 2)

	c := e.redis.Client(t)
	ctx := context.Background()
	key := state.Keys{Prefix: state.DefaultPrefix}.LeaseShard(worker.PartitionOf(a, testConfig(t).Partitions), state.LeaseShardOf(a))
	if err := c.ZAdd(ctx, key, redis.Z{Score: float64(time.Now().Add(-time.Minute).UnixMilli()), Member: a}).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.ZScore(ctx, key, a).Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the stale lease entry is still there after 10 s of sweeps")
		}
		time.Sleep(50 * time.Millisecond) // polling the index the sweep repairs
	}
	// The repair expired nothing: a session.expired for a signed-out agent would
	// change nothing anyway, so check none was published.
	e.publish(events.AgentLogin, a, sess{SessionID: "desk"})
	if st := e.waitVersion(a, 3); st.Cause.Type != events.AgentLogin {
		t.Fatalf("version 3 caused by %s, want the login", st.Cause.Type)
	}
}
