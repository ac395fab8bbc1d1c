package handlers

import (
	"testing"
	"time"

	"github.com/presenced/presenced/events"
)

// BenchmarkApply measures the rules on the hot path: one agent event applied to
// a signed-in agent, with allocations.
func BenchmarkApply(b *testing.B) {
	rules := Rules{Source: "bench"}
	cfg := NewConfig()
	now := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
	a, _, err := rules.Apply(cfg, Agent{}, events.Event{Type: events.AgentLogin, Role: events.RoleAgent, AgentID: "a-1",
		ID: "e-0", Source: "bench", Seq: 1, Stored: now, Data: events.SessionData{SessionID: "default"}})
	if err != nil {
		b.Fatal(err)
	}
	evs := []events.Event{
		{Type: events.AgentPresenceSet, Role: events.RoleAgent, Data: events.PresenceSetData{PresenceID: "busy"}},
		{Type: events.NotificationMissed, Role: events.RoleRouter, Data: events.NotificationData{}},
		{Type: events.AgentPresenceSet, Role: events.RoleAgent, Data: events.PresenceSetData{PresenceID: "available"}},
		{Type: events.AgentCapacityChanged, Role: events.RoleRouter, Data: events.CapacityData{Used: 1, Total: 2}},
		{Type: events.AgentHeartbeat, Role: events.RoleAgent, Data: events.SessionData{SessionID: "default"}},
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ev := evs[i%len(evs)]
		ev.AgentID, ev.ID, ev.Source, ev.Seq, ev.Stored = "a-1", "e", "bench", uint64(i+2), now.Add(time.Duration(i)*time.Millisecond)
		next, _, err := rules.Apply(cfg, a, ev)
		if err != nil {
			b.Fatal(err)
		}
		a = next
	}
}
