package state_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
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
		{"CompareAndSet", testCompareAndSet},
		{"PartialWrite", testPartialWrite},
		{"Restore", testRestore},
		{"ManyAgentsInOrder", testManyAgents},
		{"Outbox", testOutbox},
		{"Seen", testSeen},
		{"Verify", testVerify},
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

// fullAgent sets every field of handlers.Agent.
func fullAgent(id string, seq, version uint64) handlers.Agent {
	return handlers.Agent{
		ID: id, Version: version, AppliedSeq: seq,
		PresenceID: "training", Name: "Away – in training", Text: "In training", BaseStatus: events.Away,
		SignedIn: true, Since: t0, Origin: handlers.OriginManual, Reason: events.ReasonManual, Actor: "agent",
		Sessions: []handlers.Session{
			{ID: "desk", Deadline: t0.Add(90*time.Second + 7)},
			{ID: "phone.2:x"}, // never expires
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

func load1(t *testing.T, s state.Store, id string) state.Record {
	t.Helper()
	recs, err := s.Load(t.Context(), []string{id})
	if err != nil {
		t.Fatalf("Load(%s): %v", id, err)
	}
	if len(recs) != 1 {
		t.Fatalf("Load(%s) returned %d records", id, len(recs))
	}
	return recs[0]
}

func commitIn(t *testing.T, s state.Store, p int, index []state.IndexEntry, cs ...state.Commit) []bool {
	t.Helper()
	applied, err := s.Commit(t.Context(), p, cs, index)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(applied) != len(cs) {
		t.Fatalf("Commit returned %d results for %d commits", len(applied), len(cs))
	}
	return applied
}

func commit(t *testing.T, s state.Store, cs ...state.Commit) []bool {
	t.Helper()
	return commitIn(t, s, 0, nil, cs...)
}

func mustApply(t *testing.T, s state.Store, cs ...state.Commit) {
	t.Helper()
	for i, ok := range commit(t, s, cs...) {
		if !ok {
			t.Fatalf("commit %d (agent %s seq %d) not applied", i, cs[i].Agent.ID, cs[i].Agent.AppliedSeq)
		}
	}
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
	rec := load1(t, s, "nobody")
	equal(t, "agent", rec.Agent, handlers.Agent{ID: "nobody"})
	if len(rec.Outbox) != 0 || len(rec.Seen) != 0 {
		t.Fatalf("outbox or dedupe entries of an unknown agent: %+v", rec)
	}
	notFound(t, s, "nobody")
	recs, err := s.Load(t.Context(), nil)
	if err != nil || len(recs) != 0 {
		t.Fatalf("Load(nil) = %v, %v", recs, err)
	}
}

func testRoundTrip(t *testing.T, s state.Store) {
	a := fullAgent("a1", 5, 2)
	mustApply(t, s, state.Commit{Agent: a, Outbox: []state.Outgoing{outgoing("a1", 1), outgoing("a1", 2)}})

	rec := load1(t, s, "a1")
	equal(t, "loaded agent", rec.Agent, a)
	if loc := rec.Agent.Since.Location(); loc != time.UTC {
		t.Fatalf("Since location %v, want UTC", loc)
	}
	equal(t, "outbox", rec.Outbox, []state.Outgoing{outgoing("a1", 1), outgoing("a1", 2)})

	got, err := s.Agent(t.Context(), "a1")
	if err != nil {
		t.Fatalf("Agent: %v", err)
	}
	equal(t, "Agent()", got, a)

	// A minimal agent round-trips with its zero values intact.
	min := handlers.Agent{ID: "a2", AppliedSeq: 1, Version: 1, PresenceID: "offline", Name: "Offline", Text: "Offline",
		BaseStatus: events.Offline, Since: t0}
	mustApply(t, s, state.Commit{Agent: min})
	equal(t, "minimal agent", load1(t, s, "a2").Agent, min)
}

// testCompareAndSet: a commit lands only on the sequence its writer expects,
// so a store that lost or rewound data, or a second writer, shows as a refusal
// with nothing written.
func testCompareAndSet(t *testing.T, s state.Store) {
	a := fullAgent("a1", 5, 1)
	if got := commit(t, s, state.Commit{Agent: a, Expect: 3}); got[0] {
		t.Fatal("commit expecting seq 3 applied over nothing")
	}
	notFound(t, s, "a1")
	mustApply(t, s, state.Commit{Agent: a, Outbox: []state.Outgoing{outgoing("a1", 1)}})
	b := fullAgent("a1", 9, 2)
	b.PresenceID = "busy"
	for _, expect := range []uint64{0, 4, 6, 9} {
		if got := commit(t, s, state.Commit{Agent: b, Expect: expect, Outbox: []state.Outgoing{outgoing("a1", 2)}}); got[0] {
			t.Fatalf("commit expecting %d applied over seq 5", expect)
		}
	}
	rec := load1(t, s, "a1")
	equal(t, "refused commits wrote nothing", rec.Agent, a)
	equal(t, "outbox after refusals", versions(rec.Outbox), []uint64{1})
	mustApply(t, s, state.Commit{Agent: b, Expect: 5, Outbox: []state.Outgoing{outgoing("a1", 2)}})
	equal(t, "after the expected commit", load1(t, s, "a1").Agent, b)
}

// testPartialWrite: a writer that says what it holds writes only what changed,
// and the result is the same as a full write.
func testPartialWrite(t *testing.T, s state.Store) {
	a := fullAgent("a1", 1, 1)
	mustApply(t, s, state.Commit{Agent: a})
	steps := []func(*handlers.Agent){
		func(b *handlers.Agent) {
			b.PresenceID, b.Name, b.Text, b.BaseStatus = "busy", "Busy", "Busy", events.Busy
		},
		func(b *handlers.Agent) { b.Sessions = nil; b.SignedIn = false; b.Held = nil },
		func(b *handlers.Agent) {
			b.Capacity = nil
			b.DefaultPresenceID = ""
			b.Origin = ""
			b.Reason = ""
			b.Actor = ""
		},
		func(b *handlers.Agent) {},
		func(b *handlers.Agent) {
			b.Sessions = []handlers.Session{{ID: "x", Deadline: t0}}
			b.Since = t0.Add(time.Hour)
		},
	}
	for i, step := range steps {
		before := a
		a.AppliedSeq++
		a.Version++
		step(&a)
		mustApply(t, s, state.Commit{Agent: a, Expect: before.AppliedSeq, Before: &before})
		equal(t, fmt.Sprintf("after step %d", i), load1(t, s, "a1").Agent, a)
	}
}

// testRestore: a restore writes an agent only over an older stored one.
func testRestore(t *testing.T, s state.Store) {
	newer := fullAgent("a1", 10, 4)
	mustApply(t, s, state.Commit{Agent: newer, Outbox: []state.Outgoing{outgoing("a1", 4)}})
	older := fullAgent("a1", 7, 3)
	older.PresenceID = "away"
	if got := commit(t, s, state.Commit{Agent: older, Restore: true}); got[0] {
		t.Fatal("restore of seq 7 applied over seq 10")
	}
	equal(t, "kept the newer agent", load1(t, s, "a1").Agent, newer)
	restored := fullAgent("a1", 12, 5)
	mustApply(t, s, state.Commit{Agent: restored, Restore: true, Expect: 99})
	rec := load1(t, s, "a1")
	equal(t, "restored", rec.Agent, restored)
	if len(rec.Outbox) != 0 {
		t.Fatalf("a restore keeps the old outbox: %+v", rec.Outbox)
	}
	mustApply(t, s, state.Commit{Agent: fullAgent("fresh", 3, 1), Restore: true})
	equal(t, "restored into nothing", load1(t, s, "fresh").Agent, fullAgent("fresh", 3, 1))
}

// testManyAgents: one call commits many agents (more than any chunk), each
// judged on its own.
func testManyAgents(t *testing.T, s state.Store) {
	var cs []state.Commit
	for i := range 250 {
		cs = append(cs, state.Commit{Agent: fullAgent(fmt.Sprintf("m%03d", i), uint64(i+1), 1)})
	}
	mustApply(t, s, cs...)
	for i := range cs {
		cs[i].Expect = cs[i].Agent.AppliedSeq
		cs[i].Agent.AppliedSeq += 1000
		if i%3 == 0 {
			cs[i].Expect++ // wrong: refused
		}
	}
	got := commit(t, s, cs...)
	for i, ok := range got {
		if ok != (i%3 != 0) {
			t.Fatalf("commit %d applied = %v", i, ok)
		}
		want := uint64(i + 1)
		if ok {
			want += 1000
		}
		if a := load1(t, s, fmt.Sprintf("m%03d", i)).Agent; a.AppliedSeq != want {
			t.Fatalf("agent %d at seq %d, want %d", i, a.AppliedSeq, want)
		}
	}
}

func testOutbox(t *testing.T, s state.Store) {
	a := fullAgent("a1", 1, 2)
	mustApply(t, s, state.Commit{Agent: a, Outbox: []state.Outgoing{outgoing("a1", 1), outgoing("a1", 2)}})
	// A commit without changes keeps the outbox, unless told to drop it.
	b := a
	b.AppliedSeq = 2
	mustApply(t, s, state.Commit{Agent: b, Expect: 1, Before: &a})
	equal(t, "kept", versions(load1(t, s, "a1").Outbox), []uint64{1, 2})
	c := b
	c.AppliedSeq, c.Version = 3, 3
	mustApply(t, s, state.Commit{Agent: c, Expect: 2, Before: &b, Outbox: []state.Outgoing{outgoing("a1", 3)}})
	equal(t, "replaced", versions(load1(t, s, "a1").Outbox), []uint64{3})
	d := c
	d.AppliedSeq = 4
	mustApply(t, s, state.Commit{Agent: d, Expect: 3, Before: &c, DropOutbox: true})
	equal(t, "dropped by the commit", versions(load1(t, s, "a1").Outbox), []uint64(nil))

	// DropOutbox drops an outbox only while the agent is at the sequence it was
	// published at: a later commit (one whose reply was lost, say) stored an
	// outbox that is not out yet.
	mustApply(t, s, state.Commit{Agent: fullAgent("x", 1, 1), Outbox: []state.Outgoing{outgoing("x", 1)}},
		state.Commit{Agent: fullAgent("y", 1, 1), Outbox: []state.Outgoing{outgoing("y", 1)}},
		state.Commit{Agent: fullAgent("z", 1, 1), Outbox: []state.Outgoing{outgoing("z", 1)}})
	y1, y2 := fullAgent("y", 1, 1), fullAgent("y", 2, 2)
	mustApply(t, s, state.Commit{Agent: y2, Expect: 1, Before: &y1, Outbox: []state.Outgoing{outgoing("y", 2)}})
	if err := s.DropOutbox(t.Context(), map[string]uint64{"x": 1, "y": 1, "z": 7, "nobody": 1}); err != nil {
		t.Fatal(err)
	}
	equal(t, "x published at its sequence: dropped", versions(load1(t, s, "x").Outbox), []uint64(nil))
	equal(t, "y committed again since: its new outbox stays", versions(load1(t, s, "y").Outbox), []uint64{2})
	equal(t, "z at another sequence: kept", versions(load1(t, s, "z").Outbox), []uint64{1})
	if err := s.DropOutbox(t.Context(), map[string]uint64{"y": 2}); err != nil {
		t.Fatal(err)
	}
	equal(t, "y dropped at its sequence", versions(load1(t, s, "y").Outbox), []uint64(nil))
	// An agent stored without a status (its state key) is compared the same way.
	bare := handlers.Agent{ID: "bare", AppliedSeq: 3, Version: 1}
	mustApply(t, s, state.Commit{Agent: bare, Outbox: []state.Outgoing{outgoing("bare", 1)}})
	if err := s.DropOutbox(t.Context(), map[string]uint64{"bare": 2}); err != nil {
		t.Fatal(err)
	}
	equal(t, "bare at another sequence: kept", versions(load1(t, s, "bare").Outbox), []uint64{1})
	if err := s.DropOutbox(t.Context(), map[string]uint64{"bare": 3}); err != nil {
		t.Fatal(err)
	}
	equal(t, "bare dropped", versions(load1(t, s, "bare").Outbox), []uint64(nil))
	if err := s.DropOutbox(t.Context(), map[string]uint64{"{": 1}); err == nil {
		t.Fatal("DropOutbox accepted an invalid agent id")
	}
}

func testSeen(t *testing.T, s state.Store) {
	k1, k2 := state.DedupeKey("src", "e1"), state.DedupeKey("src", "e2")
	if k1 == k2 || k1 != state.DedupeKey("src", "e1") || state.DedupeKey("sr", "ce1") == state.DedupeKey("src", "e1") {
		t.Fatal("dedupe keys: different events must differ, the same event must not")
	}
	entries := []state.Seen{{Key: k1, At: t0}, {Key: k2, At: t0.Add(time.Second + 3)}}
	future := time.Now().Add(time.Hour)
	err := s.SaveSeen(t.Context(), map[string][]state.Seen{"a1": entries, "a2": entries},
		map[string]time.Time{"a1": future, "a2": time.Now().Add(-time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "a1 entries", load1(t, s, "a1").Seen, entries)
	equal(t, "a2 entries already expired", len(load1(t, s, "a2").Seen), 0)
	if err := s.SaveSeen(t.Context(), map[string][]state.Seen{"a1": nil}, nil); err != nil {
		t.Fatal(err)
	}
	equal(t, "a1 entries cleared", len(load1(t, s, "a1").Seen), 0)
	// Entries expire by themselves.
	if err := s.SaveSeen(t.Context(), map[string][]state.Seen{"a3": entries}, map[string]time.Time{"a3": time.Now().Add(300 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(load1(t, s, "a3").Seen) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("dedupe entries did not expire")
		}
		time.Sleep(50 * time.Millisecond) // expiry is the server's clock: nothing to wait on
	}
	// Saving entries does not make an agent known.
	notFound(t, s, "a1")

	// A commit stores the agent's entries with its outbox; they are what Load
	// returns until the outbox is dropped, then the saved ones are.
	saved := []state.Seen{{Key: k1, At: t0}}
	if err := s.SaveSeen(t.Context(), map[string][]state.Seen{"j": saved}, map[string]time.Time{"j": future}); err != nil {
		t.Fatal(err)
	}
	j := fullAgent("j", 1, 1)
	mustApply(t, s, state.Commit{Agent: j, Seen: entries})
	if rec := load1(t, s, "j"); !rec.HasOutbox || len(rec.Outbox) != 0 || !reflect.DeepEqual(rec.Seen, entries) {
		t.Fatalf("after a commit with entries only: %+v", rec)
	}
	j2 := fullAgent("j", 2, 2)
	more := append(entries, state.Seen{Key: state.DedupeKey("src", "e3"), At: t0.Add(2 * time.Second)})
	mustApply(t, s, state.Commit{Agent: j2, Expect: 1, Before: &j, Seen: more, Outbox: []state.Outgoing{outgoing("j", 2)}})
	rec := load1(t, s, "j")
	equal(t, "entries with the next commit", rec.Seen, more)
	equal(t, "its outbox", versions(rec.Outbox), []uint64{2})
	if err := s.DropOutbox(t.Context(), map[string]uint64{"j": 2}); err != nil {
		t.Fatal(err)
	}
	rec = load1(t, s, "j")
	equal(t, "the saved entries once the outbox is dropped", rec.Seen, saved)
	if rec.HasOutbox {
		t.Fatal("HasOutbox after the drop")
	}
}

func testVerify(t *testing.T, s state.Store) {
	mustApply(t, s, state.Commit{Agent: fullAgent("a1", 4, 1)}, state.Commit{Agent: fullAgent("a2", 6, 1)},
		state.Commit{Agent: handlers.Agent{ID: "t", AppliedSeq: 8, Version: 2}})
	bad, err := s.Verify(t.Context(), map[string]uint64{"a1": 5, "a2": 5, "t": 8, "gone": 3, "never": 0})
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "agents stored behind what was committed", bad, []string{"a1", "gone"})
	if _, err := s.Verify(t.Context(), map[string]uint64{"a}b": 1}); err == nil {
		t.Fatal("Verify accepted an invalid agent id")
	}
}

func testRemoved(t *testing.T, s state.Store) {
	a := fullAgent("a1", 3, 4)
	mustApply(t, s, state.Commit{Agent: a, Outbox: []state.Outgoing{outgoing("a1", 4)}})
	gone := a
	gone.AppliedSeq, gone.Version = 6, 5
	mustApply(t, s, state.Commit{Agent: gone, Expect: 3, Before: &a, Removed: true, Outbox: []state.Outgoing{outgoing("a1", 5)}})
	notFound(t, s, "a1")
	rec := load1(t, s, "a1")
	equal(t, "tombstone", rec.Agent, handlers.Agent{ID: "a1", AppliedSeq: 6, Version: 5})
	equal(t, "final status in the outbox", versions(rec.Outbox), []uint64{5})
	// The agent comes back: versions continue from the tombstone.
	back := fullAgent("a1", 9, 6)
	tomb := rec.Agent
	mustApply(t, s, state.Commit{Agent: back, Expect: 6, Before: &tomb})
	equal(t, "back", load1(t, s, "a1").Agent, back)
	if got, err := s.Agent(t.Context(), "a1"); err != nil || got.Version != 6 {
		t.Fatalf("Agent after return = %+v, %v", got, err)
	}
}

// testNoStatus: an agent that only has configuration has a state but no status.
func testNoStatus(t *testing.T, s state.Store) {
	a := handlers.Agent{ID: "a1", AppliedSeq: 2, DefaultPresenceID: "busy", Capacity: &handlers.Capacity{Used: 0, Total: 2}}
	mustApply(t, s, state.Commit{Agent: a})
	notFound(t, s, "a1")
	equal(t, "no-status state", load1(t, s, "a1").Agent, a)
	b := fullAgent("a1", 3, 1)
	mustApply(t, s, state.Commit{Agent: b, Expect: 2, Before: &a})
	equal(t, "first status", load1(t, s, "a1").Agent, b)
	if got, err := s.Agent(t.Context(), "a1"); err != nil || !reflect.DeepEqual(got, b) {
		t.Fatalf("Agent = %+v, %v", got, err)
	}
}

func testPartition(t *testing.T, s state.Store) {
	rec, found, err := s.LoadPartition(t.Context(), 3)
	if err != nil || found {
		t.Fatalf("LoadPartition of nothing = %+v, %v, %v", rec, found, err)
	}
	equal(t, "empty record", rec, state.NewPartition())
	next := state.NewPartition()
	next.Seq, next.Marker = 40, "w1/7"
	next.Config.Seq = 12
	next.Config.Custom["training"] = events.Presence{ID: "training", Name: "T", Text: "T", BaseStatus: events.Away, Selectable: true}
	next.Seen["src\x00cfg"] = t0
	if ok, err := s.SwapPartition(t.Context(), 3, state.Partition{Marker: "other"}, next); err != nil || ok {
		t.Fatalf("swap against a wrong marker = %v, %v", ok, err)
	}
	if ok, err := s.SwapPartition(t.Context(), 3, state.NewPartition(), next); err != nil || !ok {
		t.Fatalf("first swap = %v, %v", ok, err)
	}
	got, found, err := s.LoadPartition(t.Context(), 3)
	if err != nil || !found {
		t.Fatalf("LoadPartition = %v, %v", found, err)
	}
	equal(t, "stored record", got, next)
	later := next
	later.Seq = 90
	for _, old := range []state.Partition{{Marker: "w1/7", Seq: 39}, {Marker: "w1/8", Seq: 40}, {}} {
		if ok, err := s.SwapPartition(t.Context(), 3, old, later); err != nil || ok {
			t.Fatalf("swap against %+v = %v, %v", old, ok, err)
		}
	}
	if ok, err := s.SwapPartition(t.Context(), 3, next, later); err != nil || !ok {
		t.Fatalf("swap against the held record = %v, %v", ok, err)
	}
	if got, _, _ := s.LoadPartition(t.Context(), 3); got.Seq != 90 {
		t.Fatalf("checkpoint %d, want 90", got.Seq)
	}
	if _, found, _ := s.LoadPartition(t.Context(), 4); found {
		t.Fatal("partitions share a record")
	}
}

func testConfig(t *testing.T, s state.Store) {
	c, err := s.Config(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "default config", c, handlers.NewConfig())
	cfg := handlers.NewConfig()
	cfg.Seq = 5
	cfg.Custom["t"] = events.Presence{ID: "t", Name: "T", Text: "T", BaseStatus: events.Away}
	if ok, err := s.SaveConfig(t.Context(), cfg); err != nil || !ok {
		t.Fatalf("SaveConfig = %v, %v", ok, err)
	}
	older := handlers.NewConfig()
	older.Seq = 5
	if ok, err := s.SaveConfig(t.Context(), older); err != nil || ok {
		t.Fatalf("SaveConfig of an equal seq = %v, %v", ok, err)
	}
	if c, _ = s.Config(t.Context()); !reflect.DeepEqual(c, cfg) {
		t.Fatalf("config %+v, want %+v", c, cfg)
	}
}

func testDueAgents(t *testing.T, s state.Store) {
	base := t0.Truncate(time.Millisecond)
	idx := []state.IndexEntry{
		{AgentID: "late", Lease: true, Deadline: base.Add(3 * time.Second)},
		{AgentID: "b", Lease: true, Deadline: base.Add(time.Second)},
		{AgentID: "a", Lease: true, Deadline: base.Add(time.Second)},
		{AgentID: "frac", Lease: true, Deadline: base.Add(2*time.Second + 100)}, // rounds up
		{AgentID: "gone", Lease: true, Deadline: base},
		{AgentID: "gone", Lease: true}, // removed again
		{AgentID: "members-only", To: "training"},
	}
	commitIn(t, s, 1, idx)
	due := func(now time.Time, limit int) []string {
		ids, err := s.DueAgents(t.Context(), 1, now, limit)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	equal(t, "none due", due(base, 0), []string(nil))
	equal(t, "tie by id", due(base.Add(time.Second), 0), []string{"a", "b"})
	equal(t, "not early", due(base.Add(2*time.Second+100), 0), []string{"a", "b"})
	equal(t, "rounded up", due(base.Add(2*time.Second+time.Millisecond), 0), []string{"a", "b", "frac"})
	equal(t, "limit", due(base.Add(time.Hour), 2), []string{"a", "b"})
	equal(t, "all", due(base.Add(time.Hour), 0), []string{"a", "b", "frac", "late"})
	equal(t, "other partition", func() []string { ids, _ := s.DueAgents(t.Context(), 2, base.Add(time.Hour), 0); return ids }(), []string(nil))
}

func testAgentsIn(t *testing.T, s state.Store) {
	commitIn(t, s, 2, []state.IndexEntry{
		{AgentID: "b", To: "training"}, {AgentID: "a", To: "training"}, {AgentID: "c", To: "default:training"},
		{AgentID: "a", From: "training", To: "lunch"}, {AgentID: "d", From: "training", To: "training"},
	})
	in := func(p int, name string) []string {
		ids, err := s.AgentsIn(t.Context(), p, name)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	equal(t, "training", in(2, "training"), []string{"b", "d"})
	equal(t, "lunch", in(2, "lunch"), []string{"a"})
	equal(t, "defaults", in(2, "default:training"), []string{"c"})
	equal(t, "other partition", in(3, "training"), []string(nil))
}

// testCopies: what a store returns is the caller's to change.
func testCopies(t *testing.T, s state.Store) {
	a := fullAgent("a1", 1, 1)
	mustApply(t, s, state.Commit{Agent: a, Outbox: []state.Outgoing{outgoing("a1", 1)}})
	rec := load1(t, s, "a1")
	rec.Agent.Sessions[0].ID, rec.Agent.Capacity.Used, rec.Agent.Held.PresenceID = "x", 9, "x"
	rec.Outbox[0].ID = "x"
	equal(t, "reloaded", load1(t, s, "a1").Agent, a)
	cfg := handlers.NewConfig()
	cfg.Seq = 1
	if _, err := s.SaveConfig(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	c, _ := s.Config(t.Context())
	c.Custom["s"] = events.Presence{ID: "s"}
	if c, err := s.Config(t.Context()); err != nil || len(c.Custom) != 0 {
		t.Fatalf("config aliased: %+v, %v", c, err)
	}
	// Returned maps are never nil, so callers may add to them.
	def, _, err := s.LoadPartition(t.Context(), 9)
	if err != nil {
		t.Fatal(err)
	}
	def.Seen["k"], def.Config.Custom["p"] = t0, events.Presence{}
}

func testInvalidCommit(t *testing.T, s state.Store) {
	bad := []struct {
		name  string
		c     []state.Commit
		index []state.IndexEntry
	}{
		{"empty id", []state.Commit{{Agent: handlers.Agent{AppliedSeq: 1}}}, nil},
		{"brace in id", []state.Commit{{Agent: handlers.Agent{ID: "a}b", AppliedSeq: 1}}}, nil},
		{"seq 0", []state.Commit{{Agent: handlers.Agent{ID: "x"}}}, nil},
		{"seq beyond 2^53", []state.Commit{{Agent: handlers.Agent{ID: "x", AppliedSeq: 1 << 53}}}, nil},
		{"one agent twice", []state.Commit{{Agent: fullAgent("x", 1, 1)}, {Agent: fullAgent("x", 2, 2)}}, nil},
		{"bad index id", nil, []state.IndexEntry{{AgentID: "", To: "p"}}},
	}
	for _, b := range bad {
		// A valid commit in the same call is not applied either.
		cs := append([]state.Commit{{Agent: fullAgent("good", 1, 1)}}, b.c...)
		if _, err := s.Commit(t.Context(), 0, cs, b.index); err == nil {
			t.Fatalf("%s: Commit accepted it", b.name)
		}
		notFound(t, s, "good")
	}
	if got, err := s.Commit(t.Context(), 0, nil, nil); err != nil || len(got) != 0 {
		t.Fatalf("Commit(nil) = %v, %v", got, err)
	}
	if _, err := s.Load(t.Context(), []string{""}); err == nil {
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
			var prev *handlers.Agent
			for seq := uint64(1); seq <= 20; seq++ {
				a := fullAgent(id, seq, seq)
				var expect uint64
				if prev != nil {
					expect = prev.AppliedSeq
				}
				ok, err := s.Commit(context.Background(), g, []state.Commit{{Agent: a, Expect: expect, Before: prev,
					Outbox: []state.Outgoing{outgoing(id, seq)}}}, nil)
				if err != nil || !ok[0] {
					errs <- fmt.Errorf("%s seq %d: applied %v, %v", id, seq, ok, err)
					return
				}
				prev = &a
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
		rec := load1(t, s, id)
		equal(t, id, rec.Agent, fullAgent(id, 20, 20))
		equal(t, id+" outbox", versions(rec.Outbox), []uint64{20})
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
