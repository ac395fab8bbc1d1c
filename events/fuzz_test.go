package events

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// fuzzHeader reads headers written one per line as "name:value". A line without a
// colon is a name with no values, which nats.Header can hold but the wire cannot;
// Decode must survive it all the same.
func fuzzHeader(s string) map[string][]string {
	if s == "" {
		return nil
	}
	h := map[string][]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			if _, seen := h[k]; !seen {
				h[k] = []string{}
			}
			continue
		}
		h[k] = append(h[k], v)
	}
	return h
}

const fuzzBinaryLogin = "Ce-Specversion:1.0\nCe-Id:e-1\nCe-Source:urn:desk\nCe-Type:agent.login\nCe-Subject:a-1\nContent-Type:application/json"

// fuzzSeeds are also written to testdata/fuzz/FuzzDecode, so plain `go test` runs
// them as well.
var fuzzSeeds = []struct {
	subject, header string
	data            []byte
}{
	{"presence.in.agent.a-1", fuzzBinaryLogin, []byte(`{"sessionId":"s1"}`)},
	{"presence.in.router.a-1", "ce-specversion:1.0\nce-id:r-1\nce-source:urn:router\nce-type:agent.capacity.changed\nce-subject:a-1",
		[]byte(`{"used":1,"total":3}`)},
	{"presence.in.config", "Content-Type:application/cloudevents+json",
		[]byte(`{"specversion":"1.0","id":"c-1","source":"urn:admin","type":"presence.configured","data":{"id":"training","name":"Training","text":"In training","baseStatus":"away"}}`)},
	{"presence.in.config", "",
		[]byte(`{"specversion":"1.0","id":"c-2","source":"urn:admin","type":"settings.configured","data":{"defaultPresenceId":null,"sessionTtlSeconds":0}}`)},
	{"presence.in.system.a-1", "",
		[]byte(`{"specversion":"1.0","id":"x","source":"presenced","type":"session.expired","subject":"a-1","data":{"sessionId":"s1","deadline":"2026-11-23T10:00:00Z"}}`)},
	{"presence.in.agent.a-1", "", []byte(`{"specversion":"1.0","id":"e","source":"s","type":"agent.login","subject":"a-1","data_base64":5}`)},
	{"presence.in.agent.a-1", "Ce-Specversion:0.3\nce-id:e", []byte("not json")},
	{"presence.in.agent.a-1", fuzzBinaryLogin + "\nce-id:other\nCe-Extra", nil},
	{"presence.in.agent.a.1", fuzzBinaryLogin, []byte(`[1,2]`)},
}

// FuzzDecode checks that no input makes Decode panic, and that it always either
// accepts an event of a known type with data of that type, or names a rejection.
func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s.subject, s.header, s.data)
	}
	codes := map[Code]bool{
		CodeMalformed: true, CodeUnsupportedType: true, CodeWrongSubject: true, CodeInvalidData: true,
		CodeAgentMismatch: true, CodeBuiltinImmutable: true, CodeTooLarge: true,
	}
	f.Fuzz(func(t *testing.T, subject, header string, data []byte) {
		orig := bytes.Clone(data)
		ev, rej := Subjects{}.Decode(subject, fuzzHeader(header), data)
		if !bytes.Equal(orig, data) {
			t.Fatal("Decode changed the payload")
		}
		if rej != nil {
			if !codes[rej.Code] || rej.Message == "" {
				t.Fatalf("rejection %q with message %q", rej.Code, rej.Message)
			}
			return
		}
		role, ok := RoleOf(ev.Type)
		if !ok || role != ev.Role {
			t.Fatalf("accepted type %q on role %q", ev.Type, ev.Role)
		}
		if !dataMatchesType(ev) {
			t.Fatalf("type %s with data %T", ev.Type, ev.Data)
		}
		if role != RoleConfig && (!ValidAgentID(ev.AgentID) || ev.Subject != ev.AgentID) {
			t.Fatalf("agent %q, CloudEvents subject %q", ev.AgentID, ev.Subject)
		}
		if ev.TraceParent != "" && !validTraceParent(ev.TraceParent) {
			t.Fatalf("traceparent %q", ev.TraceParent)
		}
	})
}

func dataMatchesType(ev Event) bool {
	switch ev.Data.(type) {
	case SessionData:
		return ev.Type == AgentLogin || ev.Type == AgentLogout || ev.Type == AgentHeartbeat
	case PresenceSetData:
		return ev.Type == AgentPresenceSet
	case NotificationData:
		return ev.Type == NotificationMissed || ev.Type == NotificationRejected
	case CapacityData:
		return ev.Type == AgentCapacityChanged
	case PresenceConfiguredData:
		return ev.Type == PresenceConfigured
	case PresenceRemovedData:
		return ev.Type == PresenceRemoved
	case AgentConfiguredData:
		return ev.Type == AgentConfigured
	case AgentRemovedData:
		return ev.Type == AgentRemoved
	case SettingsConfiguredData:
		return ev.Type == SettingsConfigured
	case SessionExpiredData:
		return ev.Type == SessionExpired
	}
	return false
}

// FuzzScanFlat holds the fast reader of event data to encoding/json: whatever
// it accepts must be valid JSON that encoding/json reads into the same fields.
func FuzzScanFlat(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":"b"}`, ` { "used" : 1 , "total":2 } `, `{"a":true,"b":null,"c":-0.5e+3}`,
		`{"a":"é"}`, `{"a":"x\"y"}`, `{"a":{"b":1}}`, `{"a":1,}`, `{"a":01}`, `{"a":1}x`, `{"a":1,"a":2}`, `{"a" 1}`, `{"a":"\u00e9"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, ok := scanFlat(raw)
		if !ok {
			return
		}
		var want fields
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatalf("scanFlat accepted %q, encoding/json refuses it: %v", raw, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: %d fields, encoding/json reads %d", raw, len(got), len(want))
		}
		for k, v := range want {
			if string(got[k]) != string(v) {
				t.Fatalf("%q: field %q is %s, encoding/json reads %s", raw, k, got[k], v)
			}
		}
	})
}
