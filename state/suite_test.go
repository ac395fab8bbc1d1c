package state_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/state"
)

// runStoreSuite is the conformance suite every Store implementation passes.
// newStore returns an empty store private to the calling (sub)test; subtests run
// in parallel.
func runStoreSuite(t *testing.T, newStore func(t *testing.T) state.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s state.Store)
	}{
		{"LoadUnknown", testLoadUnknown},
		{"RoundTrip", testRoundTrip},
		{"LoadOrder", testLoadOrder},
		{"StaleCommitRefused", testStaleCommitRefused},
		{"BatchInOrder", testBatchInOrder},
		{"Dedupe", testDedupe},
		{"Outbox", testOutbox},
		{"Removed", testRemoved},
		{"NoStatus", testNoStatus},
		{"Partition", testPartition},
		{"Config", testConfig},
		{"DueAgents", testDueAgents},
		{"AgentsIn", testAgentsIn},
		{"Copies", testCopies},
		{"InvalidCommit", testInvalidCommit},
		{"Concurrent", testConcurrent},
		{"Ping", testPing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, newStore(t))
		})
	}
}

// t0 has nanoseconds and is in UTC, as stored times come back.
var t0 = time.Date(2025, 3, 14, 9, 26, 53, 589793238, time.UTC)

const window = 2 * time.Minute

// fullAgent sets every field of handlers.Agent.
func fullAgent(id string, seq, version uint64) handlers.Agent {
	return handlers.Agent{
		ID: id, Version: version, AppliedSeq: seq,
		PresenceID: "training", Name: "Away – in training", Text: "In training", BaseStatus: events.Away,
		SignedIn: true, Since: t0, Origin: handlers.OriginManual,
		Sessions: []handlers.Session{
			{ID: "desk", Deadline: t0.Add(90*time.Second + 7)},
			{ID: "phone"}, // never expires
		},
		DefaultPresenceID: "available",
		Capacity:          &handlers.Capacity{Used: 1, Total: 3},
		Held: &handlers.Held{PresenceID: "busy", BaseStatus: events.Busy, Origin: handlers.OriginCapacity,
			ExpiredAt: t0.Add(-time.Minute + 11)},
	}
}

// outgoing is a status change of version v with every field set.
func outgoing(id string, v uint64) state.Outgoing {
	tp := fmt.Sprintf("00-%032x-%016x-01", v+1, v+1)
	return state.Outgoing{
		ID:          fmt.Sprintf("status-%s-%d", id, v),
		TraceParent: tp,
		Status: events.StatusChanged{
			AgentID: id, PresenceID: "busy", Name: "Busy", Text: "Busy", BaseStatus: events.Busy,
			SignedIn: true, Since: t0.Add(time.Duration(v) * time.Second), Reason: events.ReasonManual, Actor: "agent",
			Previous: &events.Previous{PresenceID: "available", BaseStatus: events.Available, Since: t0},
			Cause:    events.Cause{ID: fmt.Sprintf("ev-%d", v), Source: "desk", Type: events.AgentPresenceSet},
			Version:  v, TraceParent: tp,
		},
	}
}

func load1(t *testing.T, s state.Store, id string, keys ...string) state.Snapshot {
	t.Helper()
	snaps, err := s.Load(t.Context(), []state.LoadRequest{{AgentID: id, DedupeKeys: keys}})
	if err != nil {
		t.Fatalf("Load(%s): %v", id, err)
	}
	if len(snaps) != 1 {
		t.Fatalf("Load(%s) returned %d snapshots", id, len(snaps))
	}
	return snaps[0]
}

func commit(t *testing.T, s state.Store, cs ...state.Commit) []bool {
	t.Helper()
	applied, err := s.Commit(t.Context(), cs, window)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(applied) != len(cs) {
		t.Fatalf("Commit returned %d results for %d commits", len(applied), len(cs))
	}
	return applied
}

func mustApply(t *testing.T, s state.Store, cs ...state.Commit) {
	t.Helper()
	for i, ok := range commit(t, s, cs...) {
		if !ok {
			t.Fatalf("commit %d (agent %s seq %d) not applied", i, cs[i].Agent.ID, cs[i].Agent.AppliedSeq)
		}
	}
}

func seenKeys(s state.Snapshot) []string {
	var ks []string
	for k, ok := range s.Seen {
		if ok {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks
}

func versions(out []state.Outgoing) []uint64 {
	var vs []uint64
	for _, o := range out {
		vs = append(vs, o.Status.Version)
	}
	return vs
}

func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func notFound(t *testing.T, s state.Store, id string) {
	t.Helper()
	a, err := s.Agent(t.Context(), id)
	if !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Agent(%s) = %+v, %v; want ErrNotFound", id, a, err)
	}
}

func testLoadUnknown(t *testing.T, s state.Store) {
	snap := load1(t, s, "nobody", "k1", "k2")
	equal(t, "agent", snap.Agent, handlers.Agent{ID: "nobody"})
	equal(t, "seen", seenKeys(snap), nil)
	if len(snap.Outbox) != 0 {
		t.Fatalf("outbox of unknown agent: %+v", snap.Outbox)
	}
	notFound(t, s, "nobody")
	snaps, err := s.Load(t.Context(), nil)
	if err != nil || len(snaps) != 0 {
		t.Fatalf("Load(nil) = %v, %v", snaps, err)
	}
}

func testRoundTrip(t *testing.T, s state.Store) {
	a := fullAgent("a1", 5, 2)
	mustApply(t, s, state.Commit{Agent: a, DedupeKey: "src/ev1", DedupeAt: t0,
		Outbox: []state.Outgoing{outgoing("a1", 1), outgoing("a1", 2)}})

	snap := load1(t, s, "a1", "src/ev1")
	equal(t, "loaded agent", snap.Agent, a)
	if loc := snap.Agent.Since.Location(); loc != time.UTC {
		t.Fatalf("Since location %v, want UTC", loc)
	}
	if snap.Agent.Since.Nanosecond() != t0.Nanosecond() {
		t.Fatalf("Since lost nanoseconds: %v", snap.Agent.Since)
	}
	equal(t, "seen", seenKeys(snap), []string{"src/ev1"})
	equal(t, "outbox", snap.Outbox, []state.Outgoing{outgoing("a1", 1), outgoing("a1", 2)})

	got, err := s.Agent(t.Context(), "a1")
	if err != nil {
		t.Fatalf("Agent: %v", err)
	}
	equal(t, "Agent()", got, a)

	// A minimal agent round-trips with its zero values intact.
	min := handlers.Agent{ID: "a2", AppliedSeq: 1, Version: 1, PresenceID: "offline", BaseStatus: events.Offline}
	mustApply(t, s, state.Commit{Agent: min})
	equal(t, "minimal agent", load1(t, s, "a2").Agent, min)
}

func testLoadOrder(t *testing.T, s state.Store) {
	mustApply(t, s,
		state.Commit{Agent: fullAgent("b", 2, 1)},
		state.Commit{Agent: fullAgent("a", 3, 1)},
	)
	snaps, err := s.Load(t.Context(), []state.LoadRequest{{AgentID: "a"}, {AgentID: "x"}, {AgentID: "b"}, {AgentID: "a"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sn := range snaps {
		got = append(got, fmt.Sprintf("%s@%d", sn.Agent.ID, sn.Agent.AppliedSeq))
	}
	equal(t, "load order", got, []string{"a@3", "x@0", "b@2", "a@3"})
}

func testStaleCommitRefused(t *testing.T, s state.Store) {
	a := fullAgent("a1", 5, 1)
	mustApply(t, s, state.Commit{Agent: a, DedupeKey: "k1", DedupeAt: t0, Outbox: []state.Outgoing{outgoing("a1", 1)}})

	for _, seq := range []uint64{5, 4, 0} {
		b := fullAgent("a1", seq, 9)
		b.PresenceID, b.Sessions = "busy", nil
		got := commit(t, s, state.Commit{Agent: b, DedupeKey: "k2", DedupeAt: t0.Add(time.Hour),
			Outbox: []state.Outgoing{outgoing("a1", 9)}})
		if got[0] {
			t.Fatalf("commit with appliedSeq %d over 5 applied", seq)
		}
	}
	snap := load1(t, s, "a1", "k1", "k2")
	equal(t, "agent after refused commits", snap.Agent, a)
	equal(t, "seen after refused commits", seenKeys(snap), []string{"k1"})
	equal(t, "outbox after refused commits", versions(snap.Outbox), []uint64{1})
	// The refused commit at t0+1h did not move the dedupe clock: k1 is still there.

	// A never-seen agent counts as appliedSeq 0.
	if got := commit(t, s, state.Commit{Agent: fullAgent("new", 0, 1)}); got[0] {
		t.Fatal("commit with appliedSeq 0 of a new agent applied")
	}
	equal(t, "agent after refused first commit", load1(t, s, "new").Agent, handlers.Agent{ID: "new"})
	notFound(t, s, "new")
}

func testBatchInOrder(t *testing.T, s state.Store) {
	a6 := fullAgent("a", 6, 1)
	a7 := fullAgent("a", 7, 2)
	a7.PresenceID = "busy"
	b1 := fullAgent("b", 1, 1)
	got := commit(t, s,
		state.Commit{Agent: a6, DedupeKey: "e6", DedupeAt: t0},
		state.Commit{Agent: b1},
		state.Commit{Agent: fullAgent("a", 6, 5), DedupeKey: "dup", DedupeAt: t0}, // same seq again
		state.Commit{Agent: a7, DedupeKey: "e7", DedupeAt: t0.Add(time.Second), Outbox: []state.Outgoing{outgoing("a", 2)}},
		state.Commit{Agent: fullAgent("a", 5, 0)}, // older
	)
	equal(t, "applied", got, []bool{true, true, false, true, false})
	snap := load1(t, s, "a", "e6", "dup", "e7")
	equal(t, "agent", snap.Agent, a7)
	equal(t, "seen", seenKeys(snap), []string{"e6", "e7"})
	equal(t, "outbox", versions(snap.Outbox), []uint64{2})
	equal(t, "other agent", load1(t, s, "b").Agent, b1)
}

func testDedupe(t *testing.T, s state.Store) {
	seq := uint64(0)
	rec := func(id, key string, at time.Time) {
		t.Helper()
		seq++
		mustApply(t, s, state.Commit{Agent: fullAgent(id, seq, 1), DedupeKey: key, DedupeAt: at})
	}
	keys := []string{"k1", "k2", "k3", "k4", "k5", "late"}
	rec("a", "k1", t0)
	rec("a", "k2", t0.Add(time.Minute))
	equal(t, "both inside the window", seenKeys(load1(t, s, "a", keys...)), []string{"k1", "k2"})

	// Newest now t0+2m30s: k1 (t0) is older than newest-window (t0+30s) and is forgotten.
	rec("a", "k3", t0.Add(2*time.Minute+30*time.Second))
	equal(t, "k1 out of the window", seenKeys(load1(t, s, "a", keys...)), []string{"k2", "k3"})

	// Exactly at newest-window is still inside.
	rec("a", "k4", t0.Add(3*time.Minute))
	equal(t, "k2 on the edge", seenKeys(load1(t, s, "a", keys...)), []string{"k2", "k3", "k4"})
	rec("a", "k5", t0.Add(3*time.Minute+time.Millisecond))
	equal(t, "k2 past the edge", seenKeys(load1(t, s, "a", keys...)), []string{"k3", "k4", "k5"})

	// A key recorded with a DedupeAt already older than the window is not kept,
	// and it does not move the clock back.
	rec("a", "late", t0)
	equal(t, "late key", seenKeys(load1(t, s, "a", keys...)), []string{"k3", "k4", "k5"})

	// A commit without a key keeps the keys.
	seq++
	mustApply(t, s, state.Commit{Agent: fullAgent("a", seq, 1)})
	equal(t, "after a commit without key", seenKeys(load1(t, s, "a", keys...)), []string{"k3", "k4", "k5"})

	// Keys are per agent; the same key recorded again keeps one entry at its newer time.
	equal(t, "other agent", seenKeys(load1(t, s, "b", keys...)), nil)
	rec("b", "k1", t0)
	rec("b", "k1", t0.Add(10*time.Minute))
	rec("b", "k2", t0.Add(11*time.Minute))
	equal(t, "re-recorded key", seenKeys(load1(t, s, "b", keys...)), []string{"k1", "k2"})

	// Two keys in one Commit call are applied in order.
	seq++
	got := commit(t, s,
		state.Commit{Agent: fullAgent("c", seq, 1), DedupeKey: "x1", DedupeAt: t0},
		state.Commit{Agent: fullAgent("c", seq+1, 1), DedupeKey: "x2", DedupeAt: t0.Add(3 * time.Minute)},
	)
	seq++
	equal(t, "applied", got, []bool{true, true})
	equal(t, "batch", seenKeys(load1(t, s, "c", "x1", "x2")), []string{"x2"})
}

func testOutbox(t *testing.T, s state.Store) {
	mustApply(t, s,
		state.Commit{Agent: fullAgent("a", 1, 1), Outbox: []state.Outgoing{outgoing("a", 1)}},
		state.Commit{Agent: fullAgent("a", 2, 3), Outbox: []state.Outgoing{outgoing("a", 3), outgoing("a", 2)}},
		state.Commit{Agent: fullAgent("b", 1, 1), Outbox: []state.Outgoing{outgoing("b", 1)}},
		state.Commit{Agent: fullAgent("a", 3, 4), Outbox: []state.Outgoing{outgoing("a", 4)}},
	)
	snap := load1(t, s, "a")
	equal(t, "outbox in version order", snap.Outbox,
		[]state.Outgoing{outgoing("a", 1), outgoing("a", 2), outgoing("a", 3), outgoing("a", 4)})

	if err := s.AckOutbox(t.Context(), map[string]uint64{"a": 2, "nobody": 7}); err != nil {
		t.Fatalf("AckOutbox: %v", err)
	}
	equal(t, "after ack <= 2", versions(load1(t, s, "a").Outbox), []uint64{3, 4})
	equal(t, "other agent untouched", versions(load1(t, s, "b").Outbox), []uint64{1})
	if err := s.AckOutbox(t.Context(), nil); err != nil {
		t.Fatalf("AckOutbox(nil): %v", err)
	}
	if err := s.AckOutbox(t.Context(), map[string]uint64{"a": 1}); err != nil {
		t.Fatal(err)
	}
	equal(t, "ack below the lowest", versions(load1(t, s, "a").Outbox), []uint64{3, 4})
	if err := s.AckOutbox(t.Context(), map[string]uint64{"a": 10, "b": 1}); err != nil {
		t.Fatal(err)
	}
	if o := load1(t, s, "a").Outbox; len(o) != 0 {
		t.Fatalf("outbox after ack of all: %+v", o)
	}
	if o := load1(t, s, "b").Outbox; len(o) != 0 {
		t.Fatalf("outbox of b after ack: %+v", o)
	}
	// The state is untouched by acks.
	equal(t, "agent", load1(t, s, "a").Agent, fullAgent("a", 3, 4))
}

func testRemoved(t *testing.T, s state.Store) {
	mustApply(t, s, state.Commit{Agent: fullAgent("a", 3, 4)})
	gone := fullAgent("a", 4, 5)
	gone.PresenceID, gone.BaseStatus, gone.SignedIn = "offline", events.Offline, false
	mustApply(t, s, state.Commit{Agent: gone, Removed: true, DedupeKey: "rm", DedupeAt: t0,
		Outbox: []state.Outgoing{outgoing("a", 5)}})

	snap := load1(t, s, "a", "rm")
	equal(t, "tombstone", snap.Agent, handlers.Agent{ID: "a", Version: 5, AppliedSeq: 4})
	equal(t, "seen", seenKeys(snap), []string{"rm"})
	equal(t, "outbox", versions(snap.Outbox), []uint64{5})
	notFound(t, s, "a")

	// The tombstone still refuses redeliveries; a later event brings the agent back.
	if commit(t, s, state.Commit{Agent: fullAgent("a", 4, 6)})[0] {
		t.Fatal("commit at the tombstone's appliedSeq applied")
	}
	notFound(t, s, "a")
	back := fullAgent("a", 9, 6)
	mustApply(t, s, state.Commit{Agent: back})
	got, err := s.Agent(t.Context(), "a")
	if err != nil {
		t.Fatalf("Agent after re-creation: %v", err)
	}
	equal(t, "re-created", got, back)
}

func testNoStatus(t *testing.T, s state.Store) {
	// An event applied to an agent that never had a status (say, a rejected one)
	// stores the sequence only.
	a := handlers.Agent{ID: "quiet", AppliedSeq: 12, DefaultPresenceID: "busy"}
	mustApply(t, s, state.Commit{Agent: a})
	equal(t, "stored", load1(t, s, "quiet").Agent, a)
	notFound(t, s, "quiet")
}

func testPartition(t *testing.T, s state.Store) {
	def, err := s.LoadPartition(t.Context(), 3)
	if err != nil {
		t.Fatalf("LoadPartition: %v", err)
	}
	equal(t, "default config", def.Config, handlers.NewConfig())
	if def.Seen == nil || len(def.Seen) != 0 {
		t.Fatalf("default Seen = %#v, want empty map", def.Seen)
	}
	if def.Floor != 0 {
		t.Fatalf("default Floor = %d", def.Floor)
	}

	cfg := handlers.NewConfig()
	cfg.Seq = 41
	cfg.Custom["training"] = events.Presence{ID: "training", Name: "Away – in training", Text: "Training",
		BaseStatus: events.Away, Description: "d", Selectable: true}
	cfg.Settings.DefaultPresenceID = "busy"
	cfg.Settings.SessionTTL = 30 * time.Second
	cfg.Settings.RejectedNotification = true
	rec := state.Partition{Config: cfg, Seen: map[string]time.Time{"cfg/1": t0, "cfg/2": t0.Add(3)}, Floor: 40, Marker: "owner/1"}
	swap(t, s, 3, state.Partition{}, rec, true)
	got, err := s.LoadPartition(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "partition round trip", got, rec)

	other, err := s.LoadPartition(t.Context(), 4)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "other partition", other.Config, handlers.NewConfig())

	// A swap only replaces the record the caller holds.
	rec2 := state.Partition{Config: handlers.NewConfig(), Seen: map[string]time.Time{}, Marker: "owner/2", Floor: 50}
	rec2.Config.Seq = 41
	swap(t, s, 3, state.Partition{}, rec2, false) // the store is not empty
	stale := rec
	stale.Floor = 41
	swap(t, s, 3, stale, rec2, false) // the store moved past what the caller holds
	wrong := rec
	wrong.Marker = "someone-else"
	swap(t, s, 3, wrong, rec2, false)
	got, err = s.LoadPartition(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "refused swaps leave the record", got, rec)
	swap(t, s, 3, rec, rec2, true)
	got, err = s.LoadPartition(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "swapped", got, rec2)
}

func swap(t *testing.T, s state.Store, p int, old, rec state.Partition, want bool) {
	t.Helper()
	ok, err := s.SwapPartition(t.Context(), p, old, rec)
	if err != nil || ok != want {
		t.Fatalf("SwapPartition = %v, %v; want %v", ok, err, want)
	}
}

func testConfig(t *testing.T, s state.Store) {
	got, err := s.Config(t.Context())
	if err != nil {
		t.Fatalf("Config: %v", err)
	}
	equal(t, "default", got, handlers.NewConfig())

	save := func(seq uint64, name string) bool {
		t.Helper()
		c := handlers.NewConfig()
		c.Seq = seq
		c.Custom["p"] = events.Presence{ID: "p", Name: name, Text: name, BaseStatus: events.Busy, Selectable: true}
		ok, err := s.SaveConfig(t.Context(), c)
		if err != nil {
			t.Fatalf("SaveConfig(%d): %v", seq, err)
		}
		return ok
	}
	check := func(seq uint64, name string) {
		t.Helper()
		got, err := s.Config(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if got.Seq != seq || got.Custom["p"].Name != name {
			t.Fatalf("Config = seq %d name %q, want %d %q", got.Seq, got.Custom["p"].Name, seq, name)
		}
	}
	if !save(5, "five") {
		t.Fatal("first SaveConfig refused")
	}
	check(5, "five")
	if save(5, "again") {
		t.Fatal("SaveConfig with equal seq applied")
	}
	if save(4, "four") {
		t.Fatal("SaveConfig with lower seq applied")
	}
	check(5, "five")
	if !save(6, "six") {
		t.Fatal("SaveConfig with higher seq refused")
	}
	check(6, "six")
	got, err = s.Config(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := handlers.NewConfig()
	want.Seq = 6
	want.Custom["p"] = events.Presence{ID: "p", Name: "six", Text: "six", BaseStatus: events.Busy, Selectable: true}
	equal(t, "config round trip", got, want)
}

func testDueAgents(t *testing.T, s state.Store) {
	ctx := t.Context()
	idx := func(p int, es ...state.IndexEntry) {
		t.Helper()
		if err := s.Index(ctx, p, es); err != nil {
			t.Fatalf("Index: %v", err)
		}
	}
	due := func(p int, now time.Time, limit int) []string {
		t.Helper()
		ids, err := s.DueAgents(ctx, p, now, limit)
		if err != nil {
			t.Fatalf("DueAgents: %v", err)
		}
		return ids
	}
	// Lease deadlines count at millisecond precision (rounded up); base is on a millisecond.
	base := t0.Truncate(time.Millisecond)
	idx(1,
		state.IndexEntry{AgentID: "a", Deadline: base.Add(3 * time.Second)},
		state.IndexEntry{AgentID: "d", Deadline: base.Add(1 * time.Second)},
		state.IndexEntry{AgentID: "c", Deadline: base.Add(2 * time.Second)},
		state.IndexEntry{AgentID: "b", Deadline: base.Add(1 * time.Second)},
		state.IndexEntry{AgentID: "never"}, // zero deadline: not indexed
	)
	idx(2, state.IndexEntry{AgentID: "p2", Deadline: base})

	equal(t, "none due yet", due(1, base.Add(500*time.Millisecond), 10), []string(nil))
	equal(t, "due at the deadline", due(1, base.Add(time.Second), 10), []string{"b", "d"})
	equal(t, "deadline order, ties by id", due(1, base.Add(2*time.Second), 10), []string{"b", "d", "c"})
	equal(t, "limit", due(1, base.Add(time.Hour), 2), []string{"b", "d"})
	equal(t, "no limit", due(1, base.Add(time.Hour), 0), []string{"b", "d", "c", "a"})
	equal(t, "other partition", due(2, base.Add(time.Hour), 10), []string{"p2"})

	// Moving a deadline replaces it; a zero deadline removes the agent.
	idx(1, state.IndexEntry{AgentID: "b", Deadline: base.Add(10 * time.Second)}, state.IndexEntry{AgentID: "c"})
	equal(t, "after moves", due(1, base.Add(5*time.Second), 10), []string{"d", "a"})
	idx(1, state.IndexEntry{AgentID: "d"}, state.IndexEntry{AgentID: "a"}, state.IndexEntry{AgentID: "nobody"})
	equal(t, "after removals", due(1, base.Add(time.Hour), 10), []string{"b"})

	// A deadline inside a millisecond is never due before it passes.
	idx(3, state.IndexEntry{AgentID: "f", Deadline: t0})
	equal(t, "sub-ms deadline not due early", due(3, base, 10), []string(nil))
	equal(t, "sub-ms deadline due after", due(3, base.Add(time.Millisecond), 10), []string{"f"})
}

func testAgentsIn(t *testing.T, s state.Store) {
	ctx := t.Context()
	idx := func(p int, es ...state.IndexEntry) {
		t.Helper()
		if err := s.Index(ctx, p, es); err != nil {
			t.Fatalf("Index: %v", err)
		}
	}
	in := func(p int, presence string) []string {
		t.Helper()
		ids, err := s.AgentsIn(ctx, p, presence)
		if err != nil {
			t.Fatalf("AgentsIn: %v", err)
		}
		return ids
	}
	idx(1,
		state.IndexEntry{AgentID: "b", To: "training"},
		state.IndexEntry{AgentID: "a", To: "training"},
		state.IndexEntry{AgentID: "c", To: "busy"},
	)
	idx(2, state.IndexEntry{AgentID: "z", To: "training"})
	equal(t, "training", in(1, "training"), []string{"a", "b"})
	equal(t, "busy", in(1, "busy"), []string{"c"})
	equal(t, "empty", in(1, "away"), []string(nil))
	equal(t, "other partition", in(2, "training"), []string{"z"})

	idx(1, state.IndexEntry{AgentID: "a", From: "training", To: "busy"})
	equal(t, "moved out", in(1, "training"), []string{"b"})
	equal(t, "moved in", in(1, "busy"), []string{"a", "c"})

	// From == To keeps the agent; To "" only removes.
	idx(1, state.IndexEntry{AgentID: "b", From: "training", To: "training"})
	equal(t, "same presence", in(1, "training"), []string{"b"})
	idx(1, state.IndexEntry{AgentID: "c", From: "busy"}, state.IndexEntry{AgentID: "b", From: "training"})
	equal(t, "removed", in(1, "busy"), []string{"a"})
	equal(t, "removed all", in(1, "training"), []string(nil))
	equal(t, "other partition untouched", in(2, "training"), []string{"z"})
}

func testCopies(t *testing.T, s state.Store) {
	in := fullAgent("a", 1, 1)
	out := outgoing("a", 1)
	mustApply(t, s, state.Commit{Agent: in, Outbox: []state.Outgoing{out}})
	// Mutating what was committed does not reach the store.
	in.Sessions[0].ID, in.Capacity.Used, in.Held.PresenceID = "x", 99, "x"
	out.Status.Previous.PresenceID = "x"

	snap := load1(t, s, "a")
	equal(t, "after mutating the input", snap.Agent, fullAgent("a", 1, 1))
	equal(t, "outbox after mutating the input", snap.Outbox, []state.Outgoing{outgoing("a", 1)})

	// Mutating what was returned does not either.
	snap.Agent.Sessions[0].ID, snap.Agent.Capacity.Used, snap.Agent.Held.PresenceID = "y", 98, "y"
	snap.Outbox[0].Status.Previous.PresenceID = "y"
	ag, err := s.Agent(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	ag.Sessions[1].ID, ag.Capacity.Total = "z", 0
	equal(t, "after mutating the output", load1(t, s, "a").Agent, fullAgent("a", 1, 1))
	equal(t, "outbox after mutating the output", load1(t, s, "a").Outbox, []state.Outgoing{outgoing("a", 1)})

	cfg := handlers.NewConfig()
	cfg.Seq = 1
	cfg.Custom["p"] = events.Presence{ID: "p", Name: "P"}
	rec := state.Partition{Config: cfg, Seen: map[string]time.Time{"k": t0}}
	swap(t, s, 0, state.Partition{}, rec, true)
	if _, err := s.SaveConfig(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Custom["q"] = events.Presence{ID: "q"}
	rec.Seen["k2"] = t0
	got, err := s.LoadPartition(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	got.Seen["k3"] = t0
	got.Config.Custom["r"] = events.Presence{ID: "r"}
	got, err = s.LoadPartition(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Seen) != 1 || len(got.Config.Custom) != 1 {
		t.Fatalf("partition record aliased: %+v", got)
	}
	c, err := s.Config(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c.Custom["s"] = events.Presence{ID: "s"}
	if c, err = s.Config(t.Context()); err != nil || len(c.Custom) != 1 {
		t.Fatalf("config aliased: %+v, %v", c, err)
	}
	// Returned maps are never nil, so callers may add to them.
	def, err := s.LoadPartition(t.Context(), 9)
	if err != nil {
		t.Fatal(err)
	}
	def.Seen["k"], def.Config.Custom["p"] = t0, events.Presence{}
}

func testInvalidCommit(t *testing.T, s state.Store) {
	bad := []struct {
		name string
		c    state.Commit
	}{
		{"empty id", state.Commit{Agent: handlers.Agent{AppliedSeq: 1}}},
		{"brace in id", state.Commit{Agent: handlers.Agent{ID: "a}b", AppliedSeq: 1}}},
		{"dedupe key without time", state.Commit{Agent: handlers.Agent{ID: "x", AppliedSeq: 1}, DedupeKey: "k"}},
		{"seq beyond 2^53", state.Commit{Agent: handlers.Agent{ID: "x", AppliedSeq: 1 << 53}}},
		{"outbox version beyond 2^53", state.Commit{Agent: handlers.Agent{ID: "x", AppliedSeq: 1},
			Outbox: []state.Outgoing{outgoing("x", 1<<60)}}},
	}
	for _, b := range bad {
		// A valid commit in the same call is not applied either.
		ok := state.Commit{Agent: fullAgent("good", 1, 1)}
		if _, err := s.Commit(t.Context(), []state.Commit{ok, b.c}, window); err == nil {
			t.Fatalf("%s: Commit accepted it", b.name)
		}
		notFound(t, s, "good")
	}
	if _, err := s.Commit(t.Context(), []state.Commit{{Agent: fullAgent("good", 1, 1)}}, -time.Second); err == nil {
		t.Fatal("negative window accepted")
	}
	if got, err := s.Commit(t.Context(), nil, window); err != nil || len(got) != 0 {
		t.Fatalf("Commit(nil) = %v, %v", got, err)
	}
	if _, err := s.Load(t.Context(), []state.LoadRequest{{AgentID: ""}}); err == nil {
		t.Fatal("Load of an empty id accepted")
	}
}

func testConcurrent(t *testing.T, s state.Store) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("g%d", g)
			for seq := uint64(1); seq <= 20; seq++ {
				ok, err := s.Commit(context.Background(), []state.Commit{{Agent: fullAgent(id, seq, seq),
					DedupeKey: fmt.Sprint(seq), DedupeAt: t0.Add(time.Duration(seq) * time.Second),
					Outbox: []state.Outgoing{outgoing(id, seq)}}}, window)
				if err != nil || !ok[0] {
					errs <- fmt.Errorf("%s seq %d: applied %v, %v", id, seq, ok, err)
					return
				}
				if err := s.AckOutbox(context.Background(), map[string]uint64{id: seq - 1}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for g := range 8 {
		id := fmt.Sprintf("g%d", g)
		snap := load1(t, s, id, "20")
		equal(t, id, snap.Agent, fullAgent(id, 20, 20))
		equal(t, id+" outbox", versions(snap.Outbox), []uint64{20})
	}
}

func testPing(t *testing.T, s state.Store) {
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

// Some tests stop redis-server on purpose; go-redis would log every refused dial.
func init() { redis.SetLogger(quietRedisLog{}) }
