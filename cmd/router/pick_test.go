package main

import (
	"testing"
	"time"

	"github.com/presenced/presenced/router"
)

func TestPick(t *testing.T) {
	now := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
	cands := []router.Agent{{AgentID: "a"}, {AgentID: "b"}, {AgentID: "c"}}
	full := load{Total: 2, Items: map[string]int{"w1": 1, "w2": 1}}
	half := load{Total: 2, Items: map[string]int{"w1": 1}}
	for _, tc := range []struct {
		name  string
		cands []router.Agent
		loads map[string]load
		units int
		holds map[string]hold
		tried map[string]bool
		want  string // "" = nobody
	}{
		{name: "longest idle first", cands: cands, units: 1, want: "a"},
		{name: "nobody eligible", cands: nil, units: 1, want: ""},
		{name: "full agent skipped", cands: cands, loads: map[string]load{"a": full}, units: 1, want: "b"},
		{name: "room for one unit", cands: cands, loads: map[string]load{"a": half}, units: 1, want: "a"},
		{name: "no room for two units", cands: cands, loads: map[string]load{"a": half}, units: 2, want: "b"},
		{name: "item larger than default capacity", cands: cands, units: 3, want: ""},
		{name: "open offer holds the agent", cands: cands, holds: map[string]hold{"a": {offering: true}}, units: 1, want: "b"},
		{name: "recent miss holds the agent", cands: cands, holds: map[string]hold{"a": {until: now.Add(time.Second)}}, units: 1, want: "b"},
		{name: "expired hold", cands: cands, holds: map[string]hold{"a": {until: now}}, units: 1, want: "a"},
		{name: "already offered this item", cands: cands, tried: map[string]bool{"a": true, "b": true}, units: 1, want: "c"},
		{name: "everyone tried", cands: cands, tried: map[string]bool{"a": true, "b": true, "c": true}, units: 1, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := pick(tc.cands, tc.loads, 2, tc.units, tc.holds, tc.tried, now)
			if tc.want == "" {
				if ok {
					t.Fatalf("picked %s, want nobody", got.AgentID)
				}
				return
			}
			if !ok || got.AgentID != tc.want {
				t.Fatalf("picked %q (%v), want %s", got.AgentID, ok, tc.want)
			}
		})
	}
}

// TestLongestIdleFirst: pick measures idle time from the later of the agent's
// last work (assigned or finished) and the start of its current presence, and
// does not trust the order the candidates come in.
func TestLongestIdleFirst(t *testing.T) {
	at := func(hhmm string) time.Time {
		tm, err := time.Parse(time.DateTime, "2026-01-01 "+hhmm+":00")
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	agent := func(id, since string) router.Agent { return router.Agent{AgentID: id, Since: at(since)} }
	worked := func(lastWork string, items ...string) load {
		l := load{Total: 2, Items: map[string]int{}, LastWork: at(lastWork)}
		for _, it := range items {
			l.Items[it] = 1
		}
		return l
	}
	for _, tc := range []struct {
		name  string
		cands []router.Agent
		loads map[string]load
		want  string
	}{
		{name: "never had work: the earliest presence, whatever the candidates' order",
			cands: []router.Agent{agent("b", "09:10"), agent("a", "09:20"), agent("c", "09:00")}, want: "c"},
		{name: "work given without a presence change counts from the work",
			// a has been busy by hand since 08:00 and took an item at 09:05 while
			// staying busy; b has been available since 08:30 with no work.
			cands: []router.Agent{agent("a", "08:00"), agent("b", "08:30")},
			loads: map[string]load{"a": worked("09:05", "w1")}, want: "b"},
		{name: "the one who finished longest ago",
			cands: []router.Agent{agent("a", "08:00"), agent("b", "08:00")},
			loads: map[string]load{"a": worked("09:10"), "b": worked("09:02")}, want: "b"},
		{name: "back from a break counts from the return",
			// a last worked at 08:00 but came back from a break at 09:00; b has
			// been waiting since it finished at 08:55.
			cands: []router.Agent{agent("a", "09:00"), agent("b", "08:55")},
			loads: map[string]load{"a": worked("08:00"), "b": worked("08:55")}, want: "b"},
		{name: "a presence newer than the last work counts from the presence",
			cands: []router.Agent{agent("a", "09:30"), agent("b", "09:15")},
			loads: map[string]load{"a": worked("09:00")}, want: "b"},
		{name: "a never-worked agent against one who just finished",
			cands: []router.Agent{agent("a", "09:20"), agent("b", "08:00")},
			loads: map[string]load{"b": worked("09:25")}, want: "a"},
		{name: "equal idle time: by agent id",
			cands: []router.Agent{agent("b", "09:00"), agent("a", "09:00")}, want: "a"},
		{name: "the longest idle is full: the next longest",
			cands: []router.Agent{agent("a", "08:00"), agent("b", "09:00"), agent("c", "08:30")},
			loads: map[string]load{"a": worked("07:00", "w1", "w2")}, want: "c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := pick(tc.cands, tc.loads, 2, 1, nil, nil, at("10:00"))
			if !ok || got.AgentID != tc.want {
				t.Fatalf("picked %q (%v), want %s", got.AgentID, ok, tc.want)
			}
		})
	}
}

func TestIdleSince(t *testing.T) {
	since := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
	a := router.Agent{AgentID: "a", Since: since}
	for _, tc := range []struct {
		name string
		l    load
		want time.Time
	}{
		{"no work recorded", load{}, since},
		{"work before the presence", load{LastWork: since.Add(-time.Hour)}, since},
		{"work after the presence", load{LastWork: since.Add(time.Minute)}, since.Add(time.Minute)},
	} {
		if got := idleSince(a, tc.l); !got.Equal(tc.want) {
			t.Errorf("%s: idleSince = %v, want %v", tc.name, got, tc.want)
		}
	}
}
