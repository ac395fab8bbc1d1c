package state

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
)

func TestAgentFieldsRoundTrip(t *testing.T) {
	since := time.Date(2026, 11, 24, 9, 38, 32, 123456789, time.UTC)
	for _, a := range []handlers.Agent{
		{ID: "minimal", Version: 1, AppliedSeq: 1, PresenceID: "offline", Name: "Offline", Text: "Offline", BaseStatus: events.Offline, Since: since},
		{ID: "full", Version: 9, AppliedSeq: 1 << 52, PresenceID: "training", Name: "Away – in training", Text: "In training",
			BaseStatus: events.Away, SignedIn: true, Since: since, Origin: handlers.OriginCapacity, Reason: events.ReasonManual, Actor: "agent",
			Sessions:          []handlers.Session{{ID: "desk", Deadline: since.Add(time.Minute)}, {ID: "phone"}},
			DefaultPresenceID: "busy", Capacity: &handlers.Capacity{Used: 0, Total: 2},
			Held: &handlers.Held{PresenceID: "busy", BaseStatus: events.Busy, Origin: handlers.OriginManual, ExpiredAt: since}},
	} {
		f := agentFields(a)
		h := map[string]string{}
		for i := 0; i < len(f); i += 2 {
			h[f[i]] = f[i+1]
		}
		got, err := agentFromFields(a.ID, h)
		if err != nil {
			t.Fatalf("%s: %v", a.ID, err)
		}
		if !reflect.DeepEqual(got, a) {
			t.Fatalf("%s: round trip\n got %+v\nwant %+v", a.ID, got, a)
		}
	}
}

func TestAgentFromBrokenFields(t *testing.T) {
	good := map[string]string{"presenceId": "available", "baseStatus": "available", "signedIn": "true",
		"since": "2026-11-24T09:38:32Z", "version": "3", "seq": "7"}
	for field, bad := range map[string]string{
		"signedIn": "yes", "since": "yesterday", "version": "-1", "seq": "x",
		"w": "m|manual|agent|2",
	} {
		h := map[string]string{}
		for k, v := range good {
			h[k] = v
		}
		h[field] = bad
		if _, err := agentFromFields("a", h); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s=%q: error %v, want one naming the field", field, bad, err)
		}
	}
	if _, err := agentFromFields("a", good); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"x", "m|r|a|1/2|d|desk", "m|r|a|1/2|d|desk@x", "m|r|a||||busy/busy", "m|r|a||||busy/busy/q/1", "1|2|3|4|5|6|7|8"} {
		h := map[string]string{}
		for k, v := range good {
			h[k] = v
		}
		h["w"] = w
		if _, err := agentFromFields("a", h); err == nil {
			t.Errorf("w=%q accepted", w)
		}
	}
}

// TestChangedFields: a commit writes only the fields that changed.
func TestChangedFields(t *testing.T) {
	since := time.Date(2026, 11, 24, 9, 38, 32, 0, time.UTC)
	a := handlers.Agent{ID: "a", Version: 1, AppliedSeq: 4, PresenceID: "available", Name: "Available", Text: "Available",
		BaseStatus: events.Available, SignedIn: true, Since: since, Origin: handlers.OriginManual}
	b := a
	b.AppliedSeq, b.Version, b.PresenceID, b.Name, b.Text, b.BaseStatus = 5, 2, "busy", "Busy", "Busy", events.Busy
	if got := changedFields(t, a, b); !reflect.DeepEqual(got, []string{"seq", "5", "presenceId", "busy", "name", "Busy", "text", "Busy",
		"baseStatus", "busy", "version", "2"}) {
		t.Fatalf("changed fields %q", got)
	}
	if got := changedFields(t, a, a); len(got) != 0 {
		t.Fatalf("no change wrote %q", got)
	}
}
