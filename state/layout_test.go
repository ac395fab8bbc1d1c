package state

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
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
	for _, w := range []string{"x", "m|r|a|1/2|d|desk", "m|r|a|1/2|d|desk@x", "m|r|a||||busy/busy", "m|r|a||||busy/busy/q/1", "1|2|3|4|5|6|7|8", "m|Q|G", "m|L|Q"} {
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

func sampleOutbox() ([]Outgoing, []Seen) {
	at := time.Date(2026, 12, 2, 18, 30, 1, 123456789, time.UTC)
	tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	out := []Outgoing{{
		ID: "status-a-7", TraceParent: tp,
		Status: events.StatusChanged{AgentID: "a", PresenceID: "training", Name: "Away – in training", Text: "In training",
			BaseStatus: events.Away, SignedIn: true, Since: at, Reason: events.ReasonManual, Actor: "supervisor-1",
			Previous: &events.Previous{PresenceID: "available", BaseStatus: events.Available, Since: at.Add(-time.Hour)},
			Cause:    events.Cause{ID: "ev-9", Source: "https://desk.example/agents", Type: events.AgentPresenceSet},
			Version:  7, TraceParent: tp},
	}, {
		ID:     "status-a-8",
		Status: events.StatusChanged{AgentID: "a", PresenceID: "offline", BaseStatus: events.Offline, Since: time.Unix(-5, 7).UTC(), Version: 1 << 52},
	}}
	return out, []Seen{{Key: DedupeKey("desk", "ev-9"), At: at}}
}

// TestOutboxRoundTrip: the compact outbox gives back every field, and an
// outbox in the earlier JSON form is still read.
func TestOutboxRoundTrip(t *testing.T) {
	out, seen := sampleOutbox()
	b := encodeOutbox(out, seen)
	gotOut, gotSeen, err := decodeOutbox(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotOut, out) || !reflect.DeepEqual(gotSeen, seen) {
		t.Fatalf("round trip\n got %+v %+v\nwant %+v %+v", gotOut, gotSeen, out, seen)
	}
	if _, s, err := decodeOutbox(encodeOutbox(nil, seen)); err != nil || !reflect.DeepEqual(s, seen) {
		t.Fatalf("dedupe entries only: %v %v", s, err)
	}

	// The JSON form: 'o', the entries, then the changes as JSON.
	j, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	old := append([]byte{'o'}, binary.AppendUvarint(nil, 24)...)
	old = append(append(old, EncodeSeen(seen)...), j...)
	gotOut, gotSeen, err = decodeOutbox(old)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotOut, out) || !reflect.DeepEqual(gotSeen, seen) {
		t.Fatalf("JSON form\n got %+v\nwant %+v", gotOut, out)
	}
}

// TestOutboxBroken: every truncation and a trailing byte are errors, not
// panics or short outboxes.
func TestOutboxBroken(t *testing.T) {
	out, seen := sampleOutbox()
	b := encodeOutbox(out, seen)
	for n := 1; n < len(b); n++ {
		if _, _, err := decodeOutbox(b[:n]); err == nil {
			t.Fatalf("outbox cut to %d of %d bytes accepted", n, len(b))
		}
	}
	if _, _, err := decodeOutbox(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	if _, _, err := decodeOutbox([]byte("x")); err == nil {
		t.Fatal("unknown format accepted")
	}
}

// TestOutboxCoversStatus: appendOutgoing writes every field of a status
// change; one added to events.StatusChanged must be added there too.
func TestOutboxCoversStatus(t *testing.T) {
	if n := reflect.TypeOf(events.StatusChanged{}).NumField(); n != 13 {
		t.Fatalf("events.StatusChanged has %d fields; appendOutgoing and outboxReader.outgoing write 13", n)
	}
	if n := reflect.TypeOf(events.Previous{}).NumField(); n != 3 {
		t.Fatalf("events.Previous has %d fields; the outbox writes 3", n)
	}
	if n := reflect.TypeOf(events.Cause{}).NumField(); n != 3 {
		t.Fatalf("events.Cause has %d fields; the outbox writes 3", n)
	}
}

// TestPackWorker: the worker field keeps the stored format, inner empty parts
// included and trailing ones left out.
func TestPackWorker(t *testing.T) {
	at := time.Unix(0, 42).UTC()
	for _, c := range []struct {
		a    handlers.Agent
		want string
	}{
		{handlers.Agent{}, ""},
		{handlers.Agent{Origin: handlers.OriginManual}, "m"},
		{handlers.Agent{Actor: "agent"}, "||G"},
		{handlers.Agent{Actor: "someone-else"}, "||someone-else"},
		{handlers.Agent{Origin: handlers.OriginSystem, Sessions: []handlers.Session{{ID: "desk", Deadline: at}, {ID: "phone"}}}, "s|||||desk@42,phone@0"},
		{handlers.Agent{Reason: events.ReasonLogin, Capacity: &handlers.Capacity{Used: 1, Total: 2}, DefaultPresenceID: "busy",
			Held: &handlers.Held{PresenceID: "away", BaseStatus: events.Away, Origin: handlers.OriginCapacity, ExpiredAt: at}},
			"|L||1/2|busy||away/away/c/42"},
	} {
		if got := packWorker(c.a); got != c.want {
			t.Errorf("packWorker(%+v) = %q, want %q", c.a, got, c.want)
		}
		a := handlers.Agent{}
		if err := unpackWorker(&a, c.want); err != nil {
			t.Errorf("unpack %q: %v", c.want, err)
		}
		if !reflect.DeepEqual(a, c.a) {
			t.Errorf("unpack %q = %+v, want %+v", c.want, a, c.a)
		}
	}
}

// TestUnpackWorkerBeforeCodes: a field written before the reason and actor
// codes still reads.
func TestUnpackWorkerBeforeCodes(t *testing.T) {
	var a handlers.Agent
	if err := unpackWorker(&a, "c|missed_notification|agent|0/2||desk@42,phone@0"); err != nil {
		t.Fatal(err)
	}
	want := handlers.Agent{Origin: handlers.OriginCapacity, Reason: events.ReasonMissedNotification, Actor: "agent",
		Capacity: &handlers.Capacity{Used: 0, Total: 2}, Sessions: []handlers.Session{{ID: "desk", Deadline: time.Unix(0, 42).UTC()}, {ID: "phone"}}}
	if !reflect.DeepEqual(a, want) {
		t.Fatalf("got %+v\nwant %+v", a, want)
	}
}

// TestWorkerCodes: every code is one upper-case letter of its own, which is
// what tells a code from a value spelt out (reasons and actors are lower case).
func TestWorkerCodes(t *testing.T) {
	reasons := map[string]string{}
	for r, c := range reasonCodes {
		reasons[string(r)] = c
	}
	for name, codes := range map[string]map[string]string{"reason": reasons, "actor": actorCodes} {
		seen := map[string]bool{}
		for v, c := range codes {
			if seen[c] || len(c) != 1 || c[0] < 'A' || c[0] > 'Z' || strings.ToLower(v) != v {
				t.Errorf("%s %q: code %q", name, v, c)
			}
			seen[c] = true
		}
	}
}

// TestDedupeKeyStable: dedupe keys are stored, so a key must come out the same
// in every version, also for a source and id longer than the stack buffer.
func TestDedupeKeyStable(t *testing.T) {
	for _, c := range []struct{ source, id, want string }{
		{"src", "e1", "94d167cc971feffcbe3d489a587a218a"},
		{"", "", "6e340b9cffb37a989ca544e6bb780a2c"},
		{strings.Repeat("s", 300), "id", "ae21b42e2ed6a288708f4db35aef3576"},
	} {
		k := DedupeKey(c.source, c.id)
		if got := hex.EncodeToString(k[:]); got != c.want {
			t.Errorf("DedupeKey(%.10q…, %q) = %s, want %s", c.source, c.id, got, c.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { DedupeKey("presence-sim", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b") }); n != 0 {
		t.Errorf("DedupeKey allocates %v times per call", n)
	}
}
