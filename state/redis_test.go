package state_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// newRedisStore returns a store on srv with its own client, closed with the test.
func newRedisStore(t *testing.T, srv *testenv.Redis, prefix string) *state.Redis {
	t.Helper()
	s := state.NewRedis(redis.NewClient(&redis.Options{Addr: srv.Addr()}), state.RedisConfig{Prefix: prefix})
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// startRedisStore starts a redis-server of the test's own and returns it, a
// client on it and a store with the default prefix.
func startRedisStore(t *testing.T) (*testenv.Redis, *redis.Client, *state.Redis) {
	t.Helper()
	srv := testenv.StartRedis(t)
	return srv, srv.Client(t), newRedisStore(t, srv, "")
}

// TestRedisStore runs the suite over RESP2, which presenced speaks unless its
// Redis URL asks for another protocol, and over RESP3, go-redis's default: the
// replies come in other shapes (hashes and scores as flat arrays in RESP2).
func TestRedisStore(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	for _, protocol := range []int{2, 3} {
		t.Run(fmt.Sprintf("resp%d", protocol), func(t *testing.T) {
			t.Parallel()
			// One server for the suite; every subtest gets a key prefix of its own.
			runStoreSuite(t, func(t *testing.T) state.Store {
				s := state.NewRedis(redis.NewClient(&redis.Options{Addr: srv.Addr(), Protocol: protocol}), state.RedisConfig{Prefix: "suite:" + t.Name()})
				t.Cleanup(func() { _ = s.Close() })
				return s
			})
		})
	}
}

// TestRedisClusterStore runs the same suite against a real 3-master Redis
// Cluster through go-redis's cluster client: every script's keys share a slot,
// and pipelines of many agents span the masters.
func TestRedisClusterStore(t *testing.T) {
	t.Parallel()
	cl := testenv.StartRedisCluster(t, 3)
	runStoreSuite(t, func(t *testing.T) state.Store {
		s := state.NewRedis(redis.NewUniversalClient(&redis.UniversalOptions{Addrs: cl.Addrs(), IsClusterMode: true}), state.RedisConfig{Prefix: "suite:" + t.Name()})
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestRedisReadModel(t *testing.T) {
	t.Parallel()
	srv, c, s := startRedisStore(t)
	ctx := t.Context()
	const key = "presence:agent:{a1}"
	if k := s.Keys().Agent("a1"); k != key {
		t.Fatalf("read-model key %q, want %q", k, key)
	}
	hash := func() map[string]string {
		t.Helper()
		m, err := c.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	a := fullAgent("a1", 5, 7)
	a.Since = time.Date(2025, 3, 14, 11, 26, 53, 589793238, time.FixedZone("CEST", 2*3600))
	mustApply(t, s, state.Commit{Agent: a, Outbox: []state.Outgoing{outgoing("a1", 7)}})
	equal(t, "read model", public(hash()), map[string]string{
		"presenceId": "training",
		"name":       "Away – in training",
		"text":       "In training",
		"baseStatus": "away",
		"signedIn":   "true",
		"since":      "2025-03-14T09:26:53.589793238Z",
		"version":    "7",
	})
	// The worker's own fields share the hash, packed into one short field.
	h := hash()
	for k := range public(h) {
		delete(h, k)
	}
	equal(t, "worker fields", h, map[string]string{
		"seq": "5",
		"w":   "m|M|G|1/3|available|desk@1741944503589793245,phone.2:x@0|busy/busy/c/1741944353589793249",
	})
	// Every value fits Redis's compact hash encoding (64 bytes by default)...
	for k, v := range hash() {
		if len(v) > 64 && k != "w" {
			t.Fatalf("field %s is %d bytes", k, len(v))
		}
	}
	// ...and an idle agent's hash stays in it.
	idle := handlers.Agent{ID: "idle", AppliedSeq: 123456, Version: 7, PresenceID: "offline", Name: "Offline", Text: "Offline",
		BaseStatus: events.Offline, Since: t0, Origin: handlers.OriginSystem, Reason: events.ReasonLogout, Actor: "agent",
		Capacity: &handlers.Capacity{Used: 2, Total: 2}}
	mustApply(t, s, state.Commit{Agent: idle})
	if enc := c.ObjectEncoding(ctx, s.Keys().Agent("idle")).Val(); enc != "listpack" {
		t.Fatalf("idle agent's hash encoding %q, want listpack", enc)
	}
	if n := c.Exists(ctx, s.Keys().State("a1")).Val(); n != 0 {
		t.Fatal("an agent with a status also has a state key")
	}
	if got := c.Get(ctx, s.Keys().Outbox("a1")).Val(); !strings.HasPrefix(got, "p") || !strings.Contains(got, "status-a1-7") {
		t.Fatalf("outbox key holds %q", got)
	}

	b := a
	b.AppliedSeq, b.Version, b.SignedIn, b.Sessions = 6, 8, false, nil
	b.PresenceID, b.Name, b.Text, b.BaseStatus = "offline", "Offline", "Offline", events.Offline
	b.Since = time.Date(2025, 3, 14, 10, 0, 0, 0, time.UTC)
	mustApply(t, s, state.Commit{Agent: b, Expect: 5, Before: &a})
	equal(t, "read model after change", public(hash()), map[string]string{
		"presenceId": "offline", "name": "Offline", "text": "Offline", "baseStatus": "offline",
		"signedIn": "false", "since": "2025-03-14T10:00:00Z", "version": "8",
	})

	// Removal deletes the read model and leaves a tombstone state.
	gone := fullAgent("a1", 7, 9)
	mustApply(t, s, state.Commit{Agent: gone, Expect: 6, Removed: true})
	if n := c.Exists(ctx, key).Val(); n != 0 {
		t.Fatalf("read model still there after removal: %v", hash())
	}
	raw, err := c.Get(ctx, s.Keys().State("a1")).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	delete(fields, "signedIn") // a bool without omitempty: always encoded, false here
	equal(t, "tombstone", fields, map[string]any{"id": "a1", "version": 9.0, "appliedSeq": 7.0})

	// Back again, then a state without status: the read model goes again.
	tomb := handlers.Agent{ID: "a1", AppliedSeq: 7, Version: 9}
	back := fullAgent("a1", 8, 10)
	mustApply(t, s, state.Commit{Agent: back, Expect: 7, Before: &tomb})
	if h := hash(); h["version"] != "10" {
		t.Fatalf("read model after re-creation: %v", h)
	}
	if n := c.Exists(ctx, s.Keys().State("a1")).Val(); n != 0 {
		t.Fatal("the tombstone is left next to the read model")
	}
	mustApply(t, s, state.Commit{Agent: handlers.Agent{ID: "a1", AppliedSeq: 9, Version: 10}, Expect: 8, Before: &back})
	if n := c.Exists(ctx, key).Val(); n != 0 {
		t.Fatalf("read model of an agent without status: %v", hash())
	}

	// A custom prefix.
	s2 := newRedisStore(t, srv, "org1")
	mustApply(t, s2, state.Commit{Agent: fullAgent("a1", 1, 1)})
	if v := c.HGet(ctx, "org1:agent:{a1}", "presenceId").Val(); v != "training" {
		t.Fatalf("org1 read model presenceId = %q", v)
	}
}

// public keeps the read-model fields of contract §5.
func public(h map[string]string) map[string]string {
	out := map[string]string{}
	for _, k := range []string{"presenceId", "name", "text", "baseStatus", "signedIn", "since", "version"} {
		if v, ok := h[k]; ok {
			out[k] = v
		}
	}
	return out
}

func TestRedisKeysShareSlot(t *testing.T) {
	t.Parallel()
	_, c, s := startRedisStore(t)
	ctx := t.Context()

	seen := []state.Seen{{Key: state.DedupeKey("s", "1"), At: t0}}
	later := time.Now().Add(time.Hour)
	commitIn(t, s, 7, []state.IndexEntry{
		{AgentID: "a1", Lease: true, Deadline: t0, To: "training"},
		{AgentID: "b-2", Lease: true, Deadline: t0, To: "default:busy"},
	},
		state.Commit{Agent: fullAgent("a1", 1, 1), Outbox: []state.Outgoing{outgoing("a1", 1)}},
		state.Commit{Agent: fullAgent("b-2", 1, 1), Outbox: []state.Outgoing{outgoing("b-2", 1)}},
		state.Commit{Agent: fullAgent("gone", 1, 1), Removed: true},
	)
	if err := s.SaveSeen(ctx, map[string][]state.Seen{"a1": seen, "b-2": seen}, map[string]time.Time{"a1": later, "b-2": later}); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.SwapPartition(ctx, 7, state.Partition{}, state.Partition{Config: handlers.NewConfig()}); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, err := s.SaveConfig(ctx, handlers.Config{Seq: 1}); err != nil {
		t.Fatal(err)
	}

	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	byTag := map[string][]string{}
	for _, k := range keys {
		byTag[state.HashTag(k)] = append(byTag[state.HashTag(k)], k)
	}
	equal(t, "keys of a1", byTag["a1"], []string{
		"presence:agent:{a1}", "presence:outbox:{a1}", "presence:seen:{a1}"})
	equal(t, "keys of b-2", byTag["b-2"], []string{
		"presence:agent:{b-2}", "presence:outbox:{b-2}", "presence:seen:{b-2}"})
	equal(t, "keys of a tombstone", byTag["gone"], []string{"presence:state:{gone}"})
	wantP7 := []string{"presence:members:{p7}:default:busy", "presence:members:{p7}:training", "presence:partition:{p7}"}
	for _, id := range []string{"a1", "b-2"} {
		if k := s.Keys().LeaseShard(7, state.LeaseShardOf(id)); !slices.Contains(wantP7, k) {
			wantP7 = append(wantP7, k)
		}
	}
	slices.Sort(wantP7)
	equal(t, "keys of partition 7", byTag["p7"], wantP7)
	equal(t, "config", byTag["presence:config"], []string{"presence:config"})
	if len(byTag) != 5 {
		t.Fatalf("unexpected keys: %v", keys)
	}

	// The helper agrees for every key a commit script touches.
	k := s.Keys()
	for _, key := range []string{k.State("x"), k.Agent("x"), k.Seen("x"), k.Outbox("x")} {
		if state.HashTag(key) != "x" {
			t.Fatalf("key %q has hash tag %q", key, state.HashTag(key))
		}
	}
	for _, key := range []string{k.Leases(12), k.LeaseShard(12, state.LeaseShards-1), k.Members(12, "a{b}"), k.Partition(12)} {
		if state.HashTag(key) != "p12" {
			t.Fatalf("key %q has hash tag %q", key, state.HashTag(key))
		}
	}
}

// countingHook counts single commands, pipelines and the commands queued in them.
type countingHook struct{ cmds, pipelines, queued atomic.Int64 }

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.cmds.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		h.queued.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

func TestRedisOneRoundTripPerCall(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	s := state.NewRedis(client, state.RedisConfig{CommitChunk: 2})
	t.Cleanup(func() { _ = s.Close() })
	ctx := t.Context()
	mustApply(t, s, state.Commit{Agent: fullAgent("warm", 1, 1)}) // loads the scripts
	if err := s.DropOutbox(ctx, map[string]uint64{"warm": 1}); err != nil {
		t.Fatal(err)
	}
	h := &countingHook{}
	client.AddHook(h)

	check := func(what string, f func() error) {
		t.Helper()
		h.cmds.Store(0)
		h.pipelines.Store(0)
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if c, p := h.cmds.Load(), h.pipelines.Load(); c != 0 || p != 1 {
			t.Fatalf("%s: %d single commands and %d pipelines, want one pipeline", what, c, p)
		}
	}
	ids := []string{"a", "b", "c", "d", "e"}
	check("Commit (three scripts and index entries)", func() error {
		var cs []state.Commit
		var idx []state.IndexEntry
		for _, id := range ids {
			cs = append(cs, state.Commit{Agent: fullAgent(id, 1, 1), Outbox: []state.Outgoing{outgoing(id, 1)}})
			idx = append(idx, state.IndexEntry{AgentID: id, Lease: true, Deadline: t0, From: "x", To: "y"})
		}
		_, err := s.Commit(ctx, 0, cs, idx)
		return err
	})
	check("Load", func() error {
		recs, err := s.Load(ctx, ids)
		for i, r := range recs {
			if len(r.Outbox) != 1 || r.Agent.ID != ids[i] || r.Agent.AppliedSeq != 1 {
				t.Fatalf("record %d: %+v", i, r)
			}
		}
		return err
	})
	check("DropOutbox (three scripts)", func() error {
		published := map[string]uint64{}
		for _, id := range ids {
			published[id] = 1
		}
		return s.DropOutbox(ctx, published)
	})
	check("SaveSeen", func() error {
		m, exp := map[string][]state.Seen{}, map[string]time.Time{}
		for _, id := range ids {
			m[id], exp[id] = []state.Seen{{Key: state.DedupeKey("s", id), At: t0}}, time.Now().Add(time.Minute)
		}
		return s.SaveSeen(ctx, m, exp)
	})
	seqs := map[string]uint64{}
	for _, id := range ids {
		seqs[id] = 1
	}
	check("Verify", func() error {
		h.queued.Store(0)
		bad, err := s.Verify(ctx, seqs)
		if len(bad) != 0 {
			t.Fatalf("mismatches %v", bad)
		}
		if q := h.queued.Load(); q != int64(len(ids)) {
			t.Fatalf("Verify queued %d commands for %d agents with a status, want one each", q, len(ids))
		}
		return err
	})

	// An agent without a status is read from its state key, in a second round
	// trip for it alone.
	mustApply(t, s, state.Commit{Agent: handlers.Agent{ID: "nostatus", AppliedSeq: 3, Version: 1}})
	seqs["nostatus"] = 4
	h.pipelines.Store(0)
	h.queued.Store(0)
	bad, err := s.Verify(ctx, seqs)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "agents stored behind, the one without a status among them", bad, []string{"nostatus"})
	if p, q := h.pipelines.Load(), h.queued.Load(); p != 2 || q != int64(len(ids))+2 {
		t.Fatalf("Verify with an agent without a status: %d pipelines, %d commands; want 2 and %d", p, q, len(ids)+2)
	}
}

func TestRedisScriptCacheFlushed(t *testing.T) {
	t.Parallel()
	_, c, s := startRedisStore(t)
	ctx := t.Context()
	mustApply(t, s, state.Commit{Agent: fullAgent("a", 1, 1)})
	if _, err := s.SaveConfig(ctx, handlers.Config{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// Every EVALSHA fails with NOSCRIPT; each commit must still run exactly once.
	got := commit(t, s,
		state.Commit{Agent: fullAgent("a", 2, 2), Expect: 1, Outbox: []state.Outgoing{outgoing("a", 2)}},
		state.Commit{Agent: fullAgent("c", 2, 3), Expect: 1, Outbox: []state.Outgoing{outgoing("c", 3)}},
		state.Commit{Agent: fullAgent("b", 1, 1)},
	)
	equal(t, "applied after flush", got, []bool{true, false, true})
	rec := load1(t, s, "a")
	equal(t, "agent", rec.Agent, fullAgent("a", 2, 2))
	equal(t, "outbox", versions(rec.Outbox), []uint64{2})

	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.SaveConfig(ctx, handlers.Config{Seq: 2}); err != nil || !ok {
		t.Fatalf("SaveConfig after flush = %v, %v", ok, err)
	}
}

func TestRedisUnavailable(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t) // no AOF: a restart comes back empty
	// Few retries, so the calls below fail fast.
	s := state.NewRedis(redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialerRetries: 1}), state.RedisConfig{})
	t.Cleanup(func() { _ = s.Close() })
	ctx := t.Context()
	mustApply(t, s, state.Commit{Agent: fullAgent("a", 1, 1)})

	srv.Kill()
	if err := s.Ping(ctx); err == nil {
		t.Fatal("Ping succeeded with Redis down")
	}
	if _, err := s.Commit(ctx, 0, []state.Commit{{Agent: fullAgent("a", 2, 2), Expect: 1}}, nil); err == nil {
		t.Fatal("Commit succeeded with Redis down")
	}
	if _, err := s.Load(ctx, []string{"a"}); err == nil {
		t.Fatal("Load succeeded with Redis down")
	}
	if _, err := s.Agent(ctx, "a"); err == nil || errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Agent with Redis down: %v", err)
	}
	if _, _, err := s.LoadPartition(ctx, 0); err == nil {
		t.Fatal("LoadPartition succeeded with Redis down")
	}

	srv.Restart()
	// go-redis keeps reporting the last dial error until its background probe (once
	// a second) reconnects; wait for that, bounded.
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for err := s.Ping(ctx); err != nil; err = s.Ping(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("Ping after restart: %v", err)
		}
		<-tick.C
	}
	equal(t, "after an empty restart", load1(t, s, "a").Agent, handlers.Agent{ID: "a"})
}

func TestRedisSurvivesRestartWithAOF(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t, testenv.WithAOF())
	s := newRedisStore(t, srv, "")
	a := fullAgent("a", 3, 2)
	seen := []state.Seen{{Key: state.DedupeKey("s", "k"), At: t0}}
	mustApply(t, s, state.Commit{Agent: a, Outbox: []state.Outgoing{outgoing("a", 2)}, Seen: seen})
	srv.Kill()
	srv.Restart()
	rec := load1(t, s, "a")
	equal(t, "agent", rec.Agent, a)
	equal(t, "seen", rec.Seen, seen)
	equal(t, "outbox", rec.Outbox, []state.Outgoing{outgoing("a", 2)})
}

func TestRedisCorruptState(t *testing.T) {
	t.Parallel()
	_, c, s := startRedisStore(t)
	ctx := t.Context()
	if err := c.Set(ctx, s.Keys().State("a"), "not json", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, 0, []state.Commit{{Agent: fullAgent("a", 1, 1)}}, nil); err == nil ||
		!strings.Contains(err.Error(), "not a JSON object") {
		t.Fatalf("Commit over corrupt state: %v", err)
	}
	if _, err := s.Load(ctx, []string{"a"}); err == nil {
		t.Fatal("Load of corrupt state succeeded")
	}
	if got, _ := c.Get(ctx, s.Keys().State("a")).Result(); got != "not json" {
		t.Fatalf("corrupt state overwritten: %q", got)
	}
}

func TestRedisBadPrefix(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	s := newRedisStore(t, srv, "org{1}")
	if err := s.Ping(t.Context()); err == nil || !strings.Contains(err.Error(), "braces") {
		t.Fatalf("Ping with a bad prefix: %v", err)
	}
	if _, err := s.Commit(t.Context(), 0, []state.Commit{{Agent: fullAgent("a", 1, 1)}}, nil); err == nil {
		t.Fatal("Commit with a bad prefix succeeded")
	}
}

// TestRedisLeaseShards: leases spread over the partition's shards, each small
// enough for Redis's listpack encoding, and a lease index stored before the
// shards is read and moved into them by the next sweep.
func TestRedisLeaseShards(t *testing.T) {
	t.Parallel()
	_, c, s := startRedisStore(t)
	ctx := t.Context()
	base := t0.Truncate(time.Millisecond)

	// The agents of one partition out of 16, as a partition's owner writes them.
	var idx []state.IndexEntry
	for i := 0; len(idx) < 1000; i++ {
		if id := fmt.Sprintf("ag-%d", i); worker.PartitionOf(id, 16) == 3 {
			idx = append(idx, state.IndexEntry{AgentID: id, Lease: true, Deadline: base.Add(time.Duration(len(idx)) * time.Millisecond)})
		}
	}
	commitIn(t, s, 3, idx)
	used := 0
	for sh := range state.LeaseShards {
		key := s.Keys().LeaseShard(3, sh)
		n := c.ZCard(ctx, key).Val()
		if n == 0 {
			continue
		}
		used++
		if enc := c.ObjectEncoding(ctx, key).Val(); enc != "listpack" {
			t.Errorf("shard %s with %d entries is %s, not listpack", key, n, enc)
		}
	}
	if used < state.LeaseShards*3/4 {
		t.Errorf("a partition's 1000 leases landed in %d of %d shards", used, state.LeaseShards)
	}
	ids, err := s.DueAgents(ctx, 3, base.Add(999*time.Millisecond), 3)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "earliest three across shards", ids, []string{idx[0].AgentID, idx[1].AgentID, idx[2].AgentID})

	// An index as stored before the shards. Where an agent is in a shard too, the
	// earlier deadline is kept: one too early is put right by the sweep that
	// meets it (worker's TestSweepRepairsLeaseIndex), one too late would hold an
	// expiry back.
	old := s.Keys().Leases(4)
	if err := c.ZAdd(ctx, old, redis.Z{Score: float64(base.UnixMilli()), Member: "x"},
		redis.Z{Score: float64(base.Add(time.Hour).UnixMilli()), Member: "y"},
		redis.Z{Score: float64(base.UnixMilli()), Member: "early"},
		redis.Z{Score: float64(base.Add(3 * time.Hour).UnixMilli()), Member: "late"}).Err(); err != nil {
		t.Fatal(err)
	}
	commitIn(t, s, 4, []state.IndexEntry{
		{AgentID: "early", Lease: true, Deadline: base.Add(2 * time.Hour)},
		{AgentID: "late", Lease: true, Deadline: base.Add(2 * time.Hour)},
	})
	ids, err = s.DueAgents(ctx, 4, base, 0)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "due from the old index", ids, []string{"early", "x"})
	if c.Exists(ctx, old).Val() != 0 {
		t.Error("the old lease index is still there after a sweep")
	}
	ids, err = s.DueAgents(ctx, 4, base.Add(2*time.Hour), 0)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "all, moved into shards", ids, []string{"early", "x", "y", "late"})
}
