package handlers

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/presenced/presenced/events"
)

var t0 = time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)

var rules = Rules{Source: "presenced"}

// ev builds an input event stored sec seconds after t0.
func ev(sec int, typ events.Type, data any) events.Event {
	role, _ := events.RoleOf(typ)
	return events.Event{ID: fmt.Sprintf("e-%d-%s", sec, typ), Source: "test", Type: typ, AgentID: "a-1",
		Role: role, Stored: t0.Add(time.Duration(sec) * time.Second), Data: data}
}

func login(sec int, session string) events.Event {
	return ev(sec, events.AgentLogin, events.SessionData{SessionID: session})
}
func logout(sec int, session string) events.Event {
	return ev(sec, events.AgentLogout, events.SessionData{SessionID: session})
}
func heartbeat(sec int, session string) events.Event {
	return ev(sec, events.AgentHeartbeat, events.SessionData{SessionID: session})
}
func set(sec int, id string) events.Event {
	return ev(sec, events.AgentPresenceSet, events.PresenceSetData{PresenceID: id})
}
func missed(sec int) events.Event {
	return ev(sec, events.NotificationMissed, events.NotificationData{})
}
func rejected(sec int) events.Event {
	return ev(sec, events.NotificationRejected, events.NotificationData{})
}
func capacity(sec, used, total int) events.Event {
	return ev(sec, events.AgentCapacityChanged, events.CapacityData{Used: used, Total: total})
}
func expired(sec int, session string, deadlineSec int) events.Event {
	return ev(sec, events.SessionExpired, events.SessionExpiredData{SessionID: session, Deadline: t0.Add(time.Duration(deadlineSec) * time.Second)})
}
func configured(sec int, id, name string, b events.BaseStatus, selectable bool) events.Event {
	return ev(sec, events.PresenceConfigured, events.PresenceConfiguredData{ID: id, Name: name, Text: name, BaseStatus: b, Selectable: selectable})
}
func removed(sec int, id string) events.Event {
	return ev(sec, events.PresenceRemoved, events.PresenceRemovedData{ID: id})
}
func agentDefault(sec int, id *string) events.Event {
	return ev(sec, events.AgentConfigured, events.AgentConfiguredData{AgentID: "a-1", DefaultPresenceID: id})
}
func settings(sec int, d events.SettingsConfiguredData) events.Event {
	return ev(sec, events.SettingsConfigured, d)
}
func str(s string) *string { return &s }

// run applies steps the way the worker does: configuration events change the
// configuration and then the agent, the others go to Apply. It returns the agent,
// the changes and the error of the last step; earlier steps must succeed.
func run(t *testing.T, steps ...events.Event) (Config, Agent, []events.StatusChanged, error) {
	t.Helper()
	cfg, a := NewConfig(), Agent{ID: "a-1"}
	var out []events.StatusChanged
	var err error
	for i, e := range steps {
		e.Seq = uint64(i + 1)
		if e.Role == events.RoleConfig {
			var next Config
			next, err = rules.Configure(cfg, e)
			if err == nil {
				a, out = rules.Reconfigure(cfg, next, a, e)
				cfg = next
			}
		} else {
			var na Agent
			na, out, err = rules.Apply(cfg, a, e)
			if err == nil {
				a = na
			}
		}
		if err != nil && i < len(steps)-1 {
			t.Fatalf("step %d (%s): %v", i, e.Type, err)
		}
	}
	return cfg, a, out, err
}

type want struct {
	presence string
	reason   events.Reason
	signedIn bool
	sinceSec int
}

func TestRules(t *testing.T) {
	training := configured(0, "training", "Away – in training", events.Away, true)
	tests := []struct {
		name  string
		steps []events.Event
		code  events.Code // expected rejection of the last step
		want  []want      // changes of the last step
		check func(t *testing.T, a Agent)
	}{
		{name: "login signs in to available", steps: []events.Event{login(1, "s1")},
			want: []want{{"available", events.ReasonLogin, true, 1}}},
		{name: "login on another session changes nothing", steps: []events.Event{login(1, "s1"), login(2, "s2")},
			check: func(t *testing.T, a Agent) { expectSessions(t, a, "s1", "s2") }},
		{name: "login again on a live session refreshes its lease only", steps: []events.Event{login(1, "s1"), login(50, "s1")},
			check: func(t *testing.T, a Agent) { expectDeadline(t, a, "s1", 50+90) }},
		{name: "login uses the agent default", steps: []events.Event{training, agentDefault(1, str("training")), login(2, "s1")},
			want: []want{{"training", events.ReasonLogin, true, 2}}},
		{name: "login uses the org default without an agent default",
			steps: []events.Event{settings(1, events.SettingsConfiguredData{DefaultPresenceID: events.Optional[string]{Present: true, Value: "away"}}), login(2, "s1")},
			want:  []want{{"away", events.ReasonLogin, true, 2}}},
		{name: "agent default wins over org default",
			steps: []events.Event{settings(1, events.SettingsConfiguredData{DefaultPresenceID: events.Optional[string]{Present: true, Value: "away"}}), agentDefault(2, str("busy")), login(3, "s1")},
			want:  []want{{"busy", events.ReasonLogin, true, 3}}},
		{name: "removed agent default falls back to org default",
			steps: []events.Event{training, settings(1, events.SettingsConfiguredData{DefaultPresenceID: events.Optional[string]{Present: true, Value: "busy"}}), agentDefault(2, str("training")), removed(3, "training"), login(4, "s1")},
			want:  []want{{"busy", events.ReasonLogin, true, 4}}},
		{name: "removed org default falls back to available",
			steps: []events.Event{training, settings(1, events.SettingsConfiguredData{DefaultPresenceID: events.Optional[string]{Present: true, Value: "training"}}), removed(3, "training"), login(4, "s1")},
			want:  []want{{"available", events.ReasonLogin, true, 4}}},
		{name: "null clears the agent default", steps: []events.Event{agentDefault(1, str("busy")), agentDefault(2, nil), login(3, "s1")},
			want: []want{{"available", events.ReasonLogin, true, 3}}},
		{name: "unknown agent default is rejected", steps: []events.Event{agentDefault(1, str("nope"))}, code: events.CodeUnknownPresence},
		{name: "inactive cannot be a default", steps: []events.Event{agentDefault(1, str("inactive"))}, code: events.CodeNotSelectable},
		{name: "unknown org default is rejected", steps: []events.Event{settings(1, events.SettingsConfiguredData{DefaultPresenceID: events.Optional[string]{Present: true, Value: "nope"}})}, code: events.CodeUnknownPresence},
		{name: "login applies capacity in the same change",
			steps: []events.Event{capacity(1, 1, 3), login(2, "s1")},
			want:  []want{{"busy", events.ReasonLogin, true, 2}}},
		{name: "login to a sticky default ignores capacity",
			steps: []events.Event{capacity(1, 3, 3), agentDefault(1, str("away")), login(2, "s1")},
			want:  []want{{"away", events.ReasonLogin, true, 2}}},
		{name: "logout of the last session goes offline", steps: []events.Event{login(1, "s1"), logout(5, "s1")},
			want: []want{{"offline", events.ReasonLogout, false, 5}}},
		{name: "logout of one of two sessions changes nothing", steps: []events.Event{login(1, "s1"), login(2, "s2"), logout(5, "s1")},
			check: func(t *testing.T, a Agent) { expectSessions(t, a, "s2") }},
		{name: "logout of a session that is not live changes nothing", steps: []events.Event{login(1, "s1"), logout(5, "s9")}},
		{name: "heartbeat extends the lease", steps: []events.Event{login(1, "s1"), heartbeat(60, "s1")},
			check: func(t *testing.T, a Agent) { expectDeadline(t, a, "s1", 150) }},
		{name: "heartbeat for a dead session never signs in", steps: []events.Event{login(1, "s1"), logout(2, "s1"), heartbeat(3, "s1")},
			check: func(t *testing.T, a Agent) {
				if a.SignedIn || len(a.Sessions) != 0 {
					t.Fatalf("signed in again: %+v", a)
				}
			}},
		{name: "heartbeat after the lease ran out expires the session", steps: []events.Event{login(1, "s1"), heartbeat(95, "s1")},
			want: []want{{"offline", events.ReasonSessionExpired, false, 91}}},
		{name: "TTL 0 never expires", steps: []events.Event{settings(0, events.SettingsConfiguredData{SessionTTLSeconds: events.Optional[int]{Present: true, Value: 0}}), login(1, "s1"), missed(100000)},
			want: []want{{"inactive", events.ReasonMissedNotification, true, 100000}}},
		{name: "sweeper expiry goes offline at the deadline", steps: []events.Event{login(1, "s1"), set(2, "busy"), expired(92, "s1", 91)},
			want: []want{{"offline", events.ReasonSessionExpired, false, 91}},
			check: func(t *testing.T, a Agent) {
				if a.Held == nil || a.Held.PresenceID != "busy" {
					t.Fatalf("held = %+v", a.Held)
				}
			}},
		{name: "sweeper expiry after a heartbeat is a no-op", steps: []events.Event{login(1, "s1"), heartbeat(80, "s1"), expired(92, "s1", 91)},
			check: func(t *testing.T, a Agent) { expectSessions(t, a, "s1") }},
		{name: "reconnect within grace restores the presence", steps: []events.Event{login(1, "s1"), set(2, "busy"), expired(92, "s1", 91), login(91+150, "s2")},
			want: []want{{"busy", events.ReasonReconnect, true, 241}}},
		{name: "reconnect after grace signs in to the default", steps: []events.Event{login(1, "s1"), set(2, "busy"), expired(92, "s1", 91), login(91+151, "s2")},
			want: []want{{"available", events.ReasonLogin, true, 242}}},
		{name: "reconnect to a removed presence takes its base built-in",
			steps: []events.Event{training, login(1, "s1"), set(2, "training"), expired(92, "s1", 91), removed(100, "training"), login(120, "s2")},
			want:  []want{{"away", events.ReasonReconnect, true, 120}}},
		{name: "explicit logout is never restored", steps: []events.Event{login(1, "s1"), set(2, "busy"), logout(10, "s1"), login(20, "s2")},
			want: []want{{"available", events.ReasonLogin, true, 20}}},
		{name: "reconnect restores inactive too", steps: []events.Event{login(1, "s1"), missed(2), expired(92, "s1", 91), login(100, "s1")},
			want: []want{{"inactive", events.ReasonReconnect, true, 100}}},
		{name: "manual set", steps: []events.Event{training, login(1, "s1"), set(2, "training")},
			want: []want{{"training", events.ReasonManual, true, 2}}},
		{name: "manual set of the current presence changes nothing", steps: []events.Event{login(1, "s1"), set(2, "available")}},
		{name: "manual inactive is not selectable", steps: []events.Event{login(1, "s1"), set(2, "inactive")}, code: events.CodeNotSelectable},
		{name: "unknown presence", steps: []events.Event{login(1, "s1"), set(2, "nope")}, code: events.CodeUnknownPresence},
		{name: "set when signed out", steps: []events.Event{set(2, "busy")}, code: events.CodeNotSignedIn},
		{name: "set after logout", steps: []events.Event{login(1, "s1"), logout(2, "s1"), set(3, "busy")}, code: events.CodeNotSignedIn},
		{name: "non-selectable custom presence", steps: []events.Event{configured(0, "wrapup", "Wrap-up", events.Busy, false), login(1, "s1"), set(2, "wrapup")}, code: events.CodeNotSelectable},
		{name: "missed notification makes inactive", steps: []events.Event{login(1, "s1"), missed(5)},
			want: []want{{"inactive", events.ReasonMissedNotification, true, 5}}},
		{name: "missed when already inactive changes nothing", steps: []events.Event{login(1, "s1"), missed(5), missed(6)}},
		{name: "missed when signed out changes nothing", steps: []events.Event{missed(5)}},
		{name: "missed when offline by hand changes nothing", steps: []events.Event{login(1, "s1"), set(2, "offline"), missed(5)}},
		{name: "missed when handling is off changes nothing", steps: []events.Event{
			settings(0, events.SettingsConfiguredData{MissedNotification: events.Optional[bool]{Present: true, Value: false}}), login(1, "s1"), missed(5)}},
		{name: "missed handling back to default with null", steps: []events.Event{
			settings(0, events.SettingsConfiguredData{MissedNotification: events.Optional[bool]{Present: true, Value: false}}),
			settings(0, events.SettingsConfiguredData{MissedNotification: events.Optional[bool]{Present: true, Null: true}}), login(1, "s1"), missed(5)},
			want: []want{{"inactive", events.ReasonMissedNotification, true, 5}}},
		{name: "leaving inactive by choosing", steps: []events.Event{login(1, "s1"), missed(5), set(6, "available")},
			want: []want{{"available", events.ReasonManual, true, 6}}},
		{name: "rejected notification is off by default", steps: []events.Event{login(1, "s1"), rejected(5)}},
		{name: "rejected notification makes busy_dnd", steps: []events.Event{
			settings(0, events.SettingsConfiguredData{RejectedNotification: events.Optional[bool]{Present: true, Value: true}}), login(1, "s1"), rejected(5)},
			want: []want{{"busy_dnd", events.ReasonRejectedNotification, true, 5}}},
		{name: "rejected busy_dnd is sticky under capacity", steps: []events.Event{
			settings(0, events.SettingsConfiguredData{RejectedNotification: events.Optional[bool]{Present: true, Value: true}}), login(1, "s1"), rejected(5), capacity(6, 0, 2)}},
		{name: "rejected when signed out changes nothing", steps: []events.Event{
			settings(0, events.SettingsConfiguredData{RejectedNotification: events.Optional[bool]{Present: true, Value: true}}), rejected(5)}},
		{name: "capacity stored for a signed-out agent", steps: []events.Event{capacity(1, 2, 3)},
			check: func(t *testing.T, a Agent) {
				if a.Capacity == nil || *a.Capacity != (Capacity{2, 3}) || a.SignedIn {
					t.Fatalf("capacity = %+v", a.Capacity)
				}
			}},
		{name: "capacity partly used makes busy", steps: []events.Event{login(1, "s1"), capacity(2, 1, 3)},
			want: []want{{"busy", events.ReasonCapacity, true, 2}}},
		{name: "capacity full makes busy_dnd", steps: []events.Event{login(1, "s1"), capacity(2, 3, 3)},
			want: []want{{"busy_dnd", events.ReasonCapacity, true, 2}}},
		{name: "capacity freed brings capacity busy_dnd back to available", steps: []events.Event{login(1, "s1"), capacity(2, 3, 3), capacity(3, 0, 3)},
			want: []want{{"available", events.ReasonCapacity, true, 3}}},
		{name: "manual busy_dnd is sticky", steps: []events.Event{login(1, "s1"), set(2, "busy_dnd"), capacity(3, 0, 3)}},
		{name: "away is sticky", steps: []events.Event{login(1, "s1"), set(2, "away"), capacity(3, 2, 3)}},
		{name: "inactive is sticky", steps: []events.Event{login(1, "s1"), missed(2), capacity(3, 0, 3)}},
		{name: "custom available stays when capacity says available", steps: []events.Event{
			configured(0, "chat", "Available – chat", events.Available, true), login(1, "s1"), set(2, "chat"), capacity(3, 0, 3)}},
		{name: "custom available follows capacity to busy", steps: []events.Event{
			configured(0, "chat", "Available – chat", events.Available, true), login(1, "s1"), set(2, "chat"), capacity(3, 1, 3)},
			want: []want{{"busy", events.ReasonCapacity, true, 3}}},
		{name: "editing a presence an agent is in republishes, keeping since", steps: []events.Event{
			training, login(1, "s1"), set(2, "training"), configured(10, "training", "Away – training", events.Away, true)},
			want: []want{{"training", events.ReasonPresenceUpdated, true, 2}}},
		{name: "editing a presence's base status moves since", steps: []events.Event{
			training, login(1, "s1"), set(2, "training"), configured(10, "training", "Training", events.Busy, true)},
			want: []want{{"training", events.ReasonPresenceUpdated, true, 10}}},
		{name: "re-sending an identical presence changes nothing", steps: []events.Event{
			training, login(1, "s1"), set(2, "training"), training}},
		{name: "removing a presence an agent is in moves it to the built-in", steps: []events.Event{
			training, login(1, "s1"), set(2, "training"), removed(10, "training")},
			want: []want{{"away", events.ReasonPresenceRemoved, true, 10}}},
		{name: "removing an unknown presence", steps: []events.Event{removed(1, "nope")}, code: events.CodeUnknownPresence},
		{name: "removing a built-in", steps: []events.Event{removed(1, "away")}, code: events.CodeBuiltinImmutable},
		{name: "configuring a built-in", steps: []events.Event{configured(1, "busy", "x", events.Busy, true)}, code: events.CodeBuiltinImmutable},
		{name: "agent removal publishes a final offline and forgets", steps: []events.Event{
			login(1, "s1"), capacity(2, 1, 2), agentDefault(3, str("away")), ev(10, events.AgentRemoved, events.AgentRemovedData{AgentID: "a-1"})},
			want: []want{{"offline", events.ReasonAgentRemoved, false, 10}},
			check: func(t *testing.T, a Agent) {
				if a.HasStatus() || a.Capacity != nil || a.DefaultPresenceID != "" || len(a.Sessions) != 0 || a.Version != 3 {
					t.Fatalf("not forgotten: %+v", a)
				}
			}},
		{name: "agent removal of a signed-out agent still publishes", steps: []events.Event{
			login(1, "s1"), logout(2, "s1"), ev(10, events.AgentRemoved, events.AgentRemovedData{AgentID: "a-1"})},
			want: []want{{"offline", events.ReasonAgentRemoved, false, 2}}},
		{name: "a removed agent comes back with versions continuing", steps: []events.Event{
			login(1, "s1"), ev(10, events.AgentRemoved, events.AgentRemovedData{AgentID: "a-1"}), login(11, "s1")},
			want: []want{{"available", events.ReasonLogin, true, 11}},
			check: func(t *testing.T, a Agent) {
				if a.Version != 3 {
					t.Fatalf("version = %d, want 3", a.Version)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, a, out, err := run(t, tc.steps...)
			if tc.code != "" {
				var rej *events.Rejection
				if !errors.As(err, &rej) || rej.Code != tc.code {
					t.Fatalf("error = %v, want rejection %s", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatalf("last step: %v", err)
			}
			if len(out) != len(tc.want) {
				t.Fatalf("changes = %+v, want %d", out, len(tc.want))
			}
			for i, w := range tc.want {
				got := out[i]
				if got.PresenceID != w.presence || got.Reason != w.reason || got.SignedIn != w.signedIn ||
					!got.Since.Equal(t0.Add(time.Duration(w.sinceSec)*time.Second)) {
					t.Errorf("change %d = %s/%s signedIn=%v since=%s, want %+v", i, got.PresenceID, got.Reason, got.SignedIn, got.Since.Sub(t0), w)
				}
				if got.Version != a.Version-uint64(len(out)-1-i) {
					t.Errorf("change %d version %d, agent version %d", i, got.Version, a.Version)
				}
			}
			if tc.check != nil {
				tc.check(t, a)
			}
		})
	}
}

func expectSessions(t *testing.T, a Agent, ids ...string) {
	t.Helper()
	if len(a.Sessions) != len(ids) {
		t.Fatalf("sessions = %+v, want %v", a.Sessions, ids)
	}
	for i, id := range ids {
		if a.Sessions[i].ID != id {
			t.Fatalf("sessions = %+v, want %v", a.Sessions, ids)
		}
	}
}

func expectDeadline(t *testing.T, a Agent, session string, sec int) {
	t.Helper()
	i := a.session(session)
	if i < 0 || !a.Sessions[i].Deadline.Equal(t0.Add(time.Duration(sec)*time.Second)) {
		t.Fatalf("session %s = %+v, want deadline t0+%ds", session, a.Sessions, sec)
	}
}

func TestStatusChangeFields(t *testing.T) {
	_, a, out, err := run(t, login(1, "s1"), set(2, "busy"))
	if err != nil || len(out) != 1 {
		t.Fatalf("out=%v err=%v", out, err)
	}
	st := out[0]
	if st.Actor != "agent" || st.Cause.Type != events.AgentPresenceSet || st.Cause.Source != "test" || st.Version != 2 || a.AppliedSeq != 2 {
		t.Fatalf("status = %+v", st)
	}
	if st.Previous == nil || st.Previous.PresenceID != "available" || !st.Previous.Since.Equal(t0.Add(time.Second)) {
		t.Fatalf("previous = %+v", st.Previous)
	}
	_, _, first, _ := run(t, login(1, "s1"))
	if first[0].Previous != nil || first[0].Version != 1 {
		t.Fatalf("first status = %+v", first[0])
	}
}

func TestExpiryCauseIsSynthetic(t *testing.T) {
	_, _, out, _ := run(t, login(1, "s1"), expired(100, "s1", 91))
	c := out[0].Cause
	if c.Type != events.SessionExpired || c.Source != "presenced" || out[0].Actor != "system" {
		t.Fatalf("cause = %+v actor %s", c, out[0].Actor)
	}
	if c.ID != events.ExpiryCauseID("a-1", "s1", t0.Add(91*time.Second)) {
		t.Fatalf("cause id %s is not derived from agent, session and deadline", c.ID)
	}
}

func TestApplyDoesNotAliasInput(t *testing.T) {
	_, a, _, _ := run(t, login(1, "s1"))
	before := a.Sessions[0]
	_, _, _ = rules.Apply(NewConfig(), a, heartbeat(30, "s1"))
	if a.Sessions[0] != before {
		t.Fatal("Apply mutated its input")
	}
}
