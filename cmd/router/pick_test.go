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
