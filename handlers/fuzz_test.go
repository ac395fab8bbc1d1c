package handlers

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/presenced/presenced/events"
)

// payloads are well-formed data for each type, so fuzzed sequences reach deep
// states; a step picks one of them or the fuzzed data itself.
var payloads = map[events.Type][]string{
	events.AgentLogin:           {`{}`, `{"sessionId":"phone"}`},
	events.AgentLogout:          {`{}`, `{"sessionId":"phone"}`},
	events.AgentHeartbeat:       {`{}`, `{"sessionId":"phone"}`},
	events.AgentPresenceSet:     {`{"presenceId":"available"}`, `{"presenceId":"away"}`, `{"presenceId":"busy_dnd"}`, `{"presenceId":"training"}`, `{"presenceId":"inactive"}`},
	events.NotificationMissed:   {`{}`},
	events.NotificationRejected: {`{}`},
	events.AgentCapacityChanged: {`{"used":0,"total":2}`, `{"used":1,"total":2}`, `{"used":2,"total":2}`},
	events.PresenceConfigured:   {`{"id":"training","name":"Training","text":"t","baseStatus":"away"}`, `{"id":"training","name":"Chat","text":"c","baseStatus":"available"}`},
	events.PresenceRemoved:      {`{"id":"training"}`},
	events.AgentConfigured:      {`{"agentId":"a-1","defaultPresenceId":"training"}`, `{"agentId":"a-1","defaultPresenceId":null}`},
	events.AgentRemoved:         {`{"agentId":"a-1"}`},
	events.SettingsConfigured:   {`{"rejectedNotification":true}`, `{"sessionTtlSeconds":5,"reconnectGraceSeconds":10}`, `{"defaultPresenceId":"training"}`, `{"missedNotification":false}`},
	events.SessionExpired:       {`{"sessionId":"default","deadline":"2026-01-01T00:00:30Z"}`},
}

// FuzzRules drives one agent through fuzzed sequences of events and checks the
// rules' invariants: no panic; an invalid event is a *events.Rejection and changes
// nothing; every status change carries the next version, a known presence, and
// offline exactly when signed out.
func FuzzRules(f *testing.F) {
	f.Add([]byte{0, 3, 4, 6, 1}, `{}`, uint16(4))
	f.Add([]byte{7, 11, 0, 3, 8, 9, 12, 0}, `{"presenceId":"training"}`, uint16(60))
	f.Add([]byte{0, 0x80, 6, 0x86, 0x46, 5, 12, 0}, `{"used":3,"total":1}`, uint16(200))
	f.Add([]byte{11, 0, 13, 0, 2, 1}, `not json`, uint16(1000))
	f.Fuzz(func(t *testing.T, steps []byte, data string, gap uint16) {
		if len(steps) > 64 {
			steps = steps[:64]
		}
		rules := Rules{Source: "fuzz"}
		cfg := NewConfig()
		var a Agent
		subj := events.Subjects{}
		types := events.InputTypes()
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		for i, b := range steps {
			typ := types[int(b&0x0f)%len(types)]
			payload := data
			if p := payloads[typ]; b&0x80 == 0 && len(p) > 0 {
				payload = p[int(b>>4)%len(p)]
			}
			role, _ := events.RoleOf(typ)
			subject := map[events.Role]string{events.RoleAgent: subj.AgentIn("a-1"), events.RoleRouter: subj.RouterIn("a-1"),
				events.RoleSystem: subj.SystemIn("a-1"), events.RoleConfig: subj.Config()}[role]
			h := map[string][]string{"ce-specversion": {"1.0"}, "ce-id": {fmt.Sprint(i)}, "ce-source": {"fuzz"},
				"ce-type": {string(typ)}, "ce-subject": {"a-1"}, "content-type": {"application/json"}}
			ev, rej := subj.Decode(subject, h, []byte(payload))
			if rej != nil {
				continue // decoding is FuzzDecode's
			}
			now = now.Add(time.Duration(gap) * 250 * time.Millisecond)
			ev.Seq, ev.Stored = uint64(i+1), now
			var next Agent
			var changes []events.StatusChanged
			if role == events.RoleConfig {
				after, err := rules.Configure(cfg, ev)
				if err != nil {
					if !isRejection(err) {
						t.Fatalf("step %d %s: error %v is not a rejection", i, typ, err)
					}
					continue
				}
				next, changes = rules.Reconfigure(cfg, after, a, ev)
				cfg = after
			} else {
				var err error
				before := a.clone()
				next, changes, err = rules.Apply(cfg, a, ev)
				if err != nil {
					if !isRejection(err) {
						t.Fatalf("step %d %s: error %v is not a rejection", i, typ, err)
					}
					// Compared as stored (JSON), where a nil and an empty list are one.
					if j1, j2 := mustJSON(a), mustJSON(before); j1 != j2 {
						t.Logf("%s\n%s", j1, j2)
						t.Fatalf("step %d %s: a rejected event changed the agent", i, typ)
					}
					continue
				}
			}
			v := a.Version
			for _, st := range changes {
				v++
				if st.Version != v {
					t.Fatalf("step %d %s: version %d after %d", i, typ, st.Version, v-1)
				}
				if !st.BaseStatus.Valid() || st.PresenceID == "" {
					t.Fatalf("step %d %s: status %+v", i, typ, st)
				}
				if st.SignedIn == (st.BaseStatus == events.Offline) {
					t.Fatalf("step %d %s: signed in %v with base status %s", i, typ, st.SignedIn, st.BaseStatus)
				}
				if _, known := cfg.Presence(st.PresenceID); !known && ev.Type != events.PresenceRemoved {
					t.Fatalf("step %d %s: unknown presence %s", i, typ, st.PresenceID)
				}
			}
			if next.Version != v {
				t.Fatalf("step %d %s: agent at version %d, last change %d", i, typ, next.Version, v)
			}
			a = next
		}
	})
}

func isRejection(err error) bool {
	var rej *events.Rejection
	return errors.As(err, &rej)
}

func mustJSON(a Agent) string {
	b, _ := json.Marshal(a)
	return string(b)
}
