package worker_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/workertest"
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
	key := leaseKey(t, a)
	if err := c.ZAdd(ctx, key, redis.Z{Score: float64(time.Now().Add(-time.Minute).UnixMilli()), Member: a}).Err(); err != nil {
		t.Fatal(err)
	}
	workertest.Until(t, 10*time.Second, "the stale lease entry gone", func() bool { return c.ZScore(ctx, key, a).Err() != nil })
	// The repair expired nothing: a session.expired for a signed-out agent would
	// change nothing anyway, so check none was published.
	e.publish(events.AgentLogin, a, sess{SessionID: "desk"})
	if st := e.waitVersion(a, 3); st.Cause.Type != events.AgentLogin {
		t.Fatalf("version 3 caused by %s, want the login", st.Cause.Type)
	}
}

// TestHeartbeatLeavesLeaseIndexBehind: a heartbeat that moves the lease by less
// than half of it leaves the agent's lease entry where it was; the sweep that
// meets the early entry puts it right instead of ending the session, and the
// session ends at the heartbeat's deadline.
func TestHeartbeatLeavesLeaseIndexBehind(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	e.publish(events.SettingsConfigured, "", map[string]any{"sessionTtlSeconds": 4, "reconnectGraceSeconds": 60})
	const a = "lag-1"
	e.publish(events.AgentLogin, a, sess{SessionID: "s"})
	e.waitVersion(a, 1)

	c := e.redis.Client(t)
	ctx := context.Background()
	lease := leaseKey(t, a)
	login, err := c.ZScore(ctx, lease, a).Result()
	if err != nil {
		t.Fatalf("lease entry after the login: %v", err)
	}
	// The clock has to move for the deadline to: a second on, the heartbeat's
	// deadline is a second past the login's, which the sweep (every 200 ms)
	// meets in between, and still less than half the 4 s lease.
	time.Sleep(time.Second)
	hb := e.publishMsg(e.input(events.AgentHeartbeat, a, sess{SessionID: "s"}))
	// A heartbeat publishes nothing: it is applied once the hash holds its sequence.
	workertest.Until(t, 10*time.Second, "the heartbeat applied", func() bool {
		seq, err := strconv.ParseUint(e.readModel(a)["seq"], 10, 64)
		return err == nil && seq >= hb
	})
	if got, err := c.ZScore(ctx, lease, a).Result(); err != nil || got != login {
		t.Fatalf("lease entry %v (%v) after the heartbeat, want it left at the login's %v", got, err, login)
	}

	// The login's deadline passes: the sweep finds the agent's own deadline
	// ahead and moves the entry there, and the session goes on.
	var repaired float64
	workertest.Until(t, 10*time.Second, "the early entry put right", func() bool {
		repaired, err = c.ZScore(ctx, lease, a).Result()
		return err == nil && repaired != login
	})
	if repaired < login+500 {
		t.Fatalf("lease entry moved from %v to %v, want the heartbeat's deadline, about a second later", login, repaired)
	}
	if l := e.status.get(a); len(l) != 1 {
		t.Fatalf("status changes when the early entry was put right: %s; want the session still on", describe(l))
	}

	st := e.waitVersion(a, 2)
	expectStatus(t, st, "offline", events.ReasonSessionExpired, false)
	if got := float64(st.Since.UnixMilli()); got < repaired-1 || got > repaired {
		t.Fatalf("the session ended at %v, want at the heartbeat's deadline %v", st.Since, time.UnixMilli(int64(repaired)))
	}
}

// leaseKey is the lease index shard that holds agent a.
func leaseKey(t *testing.T, a string) string {
	return state.Keys{Prefix: state.DefaultPrefix}.LeaseShard(worker.PartitionOf(a, testConfig(t).Partitions), state.LeaseShardOf(a))
}
