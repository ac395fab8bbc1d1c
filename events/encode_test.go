package events

import (
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func sampleStatus() StatusChanged {
	since := time.Date(2026, 11, 23, 10, 15, 0, 123456789, time.UTC)
	return StatusChanged{
		AgentID: "a-17", PresenceID: "training", Name: "Away – in training", Text: "In training until 14:00",
		BaseStatus: Away, SignedIn: true, Since: since, Reason: ReasonManual, Actor: RoleAgent.Actor(),
		Previous: &Previous{PresenceID: "available", BaseStatus: Available, Since: since.Add(-time.Hour)},
		Cause:    Cause{ID: "e-1", Source: "urn:desk", Type: AgentPresenceSet},
		Version:  42,
	}
}

func TestEncodeStatus(t *testing.T) {
	st := sampleStatus()
	st.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	msg := Subjects{Prefix: "acme.presence"}.EncodeStatus("presenced", "sid-1", st)

	if msg.Subject != "acme.presence.status.a-17" {
		t.Errorf("subject = %q", msg.Subject)
	}
	want := nats.Header{
		"ce-specversion": {"1.0"},
		"ce-id":          {"sid-1"},
		"ce-source":      {"presenced"},
		"ce-type":        {"agent.status.changed"},
		"ce-subject":     {"a-17"},
		"ce-time":        {"2026-11-23T10:15:00.123456789Z"},
		"ce-traceparent": {st.TraceParent},
		"content-type":   {"application/json"},
		"Nats-Msg-Id":    {"sid-1"},
	}
	if !reflect.DeepEqual(msg.Header, want) {
		t.Errorf("headers = %v\nwant      %v", msg.Header, want)
	}
	ref, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data) != string(ref) {
		t.Errorf("data = %s\nwant   %s", msg.Data, ref)
	}

	got, err := DecodeStatus(msg)
	if err != nil {
		t.Fatalf("DecodeStatus: %v", err)
	}
	if !got.Since.Equal(st.Since) || !got.Previous.Since.Equal(st.Previous.Since) {
		t.Errorf("times = %v %v", got.Since, got.Previous.Since)
	}
	got.Since, got.Previous.Since = st.Since, st.Previous.Since
	if !reflect.DeepEqual(got, st) {
		t.Errorf("round trip = %+v\nwant         %+v", got, st)
	}
}

func TestEncodeStatusFirstStatus(t *testing.T) {
	st := sampleStatus()
	st.Previous = nil
	msg := Subjects{}.EncodeStatus("presenced", "sid-2", st)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(msg.Data, &raw); err != nil {
		t.Fatal(err)
	}
	if p, ok := raw["previous"]; !ok || string(p) != "null" {
		t.Errorf("previous = %s (present %v), want null", p, ok)
	}
	if _, ok := msg.Header[hdrTraceParent]; ok {
		t.Error("traceparent header without a traceparent")
	}
	st.TraceParent = "00-x\r\nInjected: yes"
	if _, ok := (Subjects{}).EncodeStatus("presenced", "sid-3", st).Header[hdrTraceParent]; ok {
		t.Error("malformed traceparent written into a header")
	}
	got, err := DecodeStatus(msg)
	if err != nil || got.Previous != nil || got.TraceParent != "" {
		t.Errorf("DecodeStatus = %+v, %v", got, err)
	}
}

// TestStatusJSONMatchesEncodingJSON holds the hand-written encoder to encoding/json's
// bytes, on awkward strings and on random ones.
func TestStatusJSONMatchesEncodingJSON(t *testing.T) {
	awkward := []string{
		"", "plain", `quote " backslash \ slash /`, "<script>&amp;</script>", "tab\tnl\ncr\rbs\bff\f",
		"\x00\x01\x1f\x7f", "é – ü 漢字 🙂", "\u2028\u2029", "bad \xff utf8 \xc3", "\xed\xa0\x80",
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		b := make([]byte, r.IntN(24))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		awkward = append(awkward, string(b))
	}
	for i, s := range awkward {
		st := sampleStatus()
		st.Name, st.Text, st.Cause.ID = s, s, s
		st.Version = r.Uint64()
		st.SignedIn = i%2 == 0
		if i%3 == 0 {
			st.Previous = nil
		}
		if i%4 == 0 {
			st.Since = st.Since.In(time.FixedZone("x", 5*3600+30*60))
		}
		want, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendStatusJSON(nil, &st); string(got) != string(want) {
			t.Fatalf("string %q:\n got %s\nwant %s", s, got, want)
		}
	}
}

func TestEncodeStatusOutOfRangeYear(t *testing.T) {
	st := sampleStatus()
	st.Since = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	msg := Subjects{}.EncodeStatus("presenced", "sid", st)
	if !json.Valid(msg.Data) {
		t.Fatalf("invalid JSON: %s", msg.Data)
	}
}

func TestEncodeRejected(t *testing.T) {
	rej := Reject(CodeInvalidData, "data.total is 0")
	tests := []struct {
		name     string
		header   map[string][]string
		data     []byte
		wantData string
		wantHdr  map[string][]string
	}{
		{name: "JSON payload", header: map[string][]string{"Ce-Id": {"e-1"}}, data: []byte(`{"used": 1, "total": 0}`),
			wantData: `{"used":1,"total":0}`, wantHdr: map[string][]string{"Ce-Id": {"e-1"}}},
		{name: "binary payload", header: nats.Header{"ce-id": {"e-2"}}, data: []byte{0xff, 0x00, 'x'},
			wantData: `"` + base64.StdEncoding.EncodeToString([]byte{0xff, 0x00, 'x'}) + `"`, wantHdr: map[string][]string{"ce-id": {"e-2"}}},
		{name: "text payload", data: []byte("not json"),
			wantData: `"` + base64.StdEncoding.EncodeToString([]byte("not json")) + `"`, wantHdr: map[string][]string{}},
		{name: "empty payload", header: nil, data: nil, wantData: `null`, wantHdr: map[string][]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := Subjects{}.EncodeRejected("presenced", "PRESENCE_IN", 42, "presence.in.router.a-1", tt.header, tt.data, rej)
			if msg.Subject != "presence.rejected" {
				t.Errorf("subject = %q", msg.Subject)
			}
			wantH := nats.Header{
				"ce-specversion": {"1.0"}, "ce-id": {"PRESENCE_IN-42"}, "ce-source": {"presenced"},
				"ce-type": {"event.rejected"}, "content-type": {"application/json"}, "Nats-Msg-Id": {"PRESENCE_IN-42"},
			}
			if !reflect.DeepEqual(msg.Header, wantH) {
				t.Errorf("headers = %v", msg.Header)
			}
			var raw struct {
				Event struct {
					Headers json.RawMessage `json:"headers"`
					Data    json.RawMessage `json:"data"`
				} `json:"event"`
			}
			if err := json.Unmarshal(msg.Data, &raw); err != nil {
				t.Fatal(err)
			}
			if string(raw.Event.Data) != tt.wantData {
				t.Errorf("event.data = %s, want %s", raw.Event.Data, tt.wantData)
			}
			if string(raw.Event.Headers) == "null" {
				t.Error("event.headers is null")
			}
			got, err := DecodeRejected(msg)
			if err != nil {
				t.Fatalf("DecodeRejected: %v", err)
			}
			want := Rejected{Code: CodeInvalidData, Message: "data.total is 0", Subject: "presence.in.router.a-1",
				Event: RejectedInput{Headers: tt.wantHdr, Data: json.RawMessage(tt.wantData)}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("DecodeRejected = %+v\nwant            %+v", got, want)
			}
		})
	}
}

func TestDecodeOutErrors(t *testing.T) {
	st := Subjects{}.EncodeStatus("presenced", "sid", sampleStatus())
	rj := Subjects{}.EncodeRejected("presenced", "IN", 1, "x", nil, nil, Reject(CodeMalformed, "m"))
	if _, err := DecodeStatus(nil); err == nil {
		t.Error("DecodeStatus(nil) succeeded")
	}
	if _, err := DecodeStatus(rj); err == nil {
		t.Error("DecodeStatus of a rejection succeeded")
	}
	if _, err := DecodeRejected(st); err == nil {
		t.Error("DecodeRejected of a status succeeded")
	}
	if _, err := DecodeStatus(&nats.Msg{Data: []byte("{")}); err == nil {
		t.Error("DecodeStatus of broken JSON succeeded")
	}
	// A query reply carries the data without CloudEvents headers.
	bare := &nats.Msg{Data: st.Data, Header: nats.Header{"CE-TRACEPARENT": {"tp"}}}
	if got, err := DecodeStatus(bare); err != nil || got.AgentID != "a-17" || got.TraceParent != "tp" {
		t.Errorf("DecodeStatus(bare) = %+v, %v", got, err)
	}
}

// TestNewInputRoundTrip publishes every input type with NewInput and decodes it back.
func TestNewInputRoundTrip(t *testing.T) {
	data := map[Type]any{
		AgentLogin:           SessionData{SessionID: "s1"},
		AgentLogout:          nil,
		AgentHeartbeat:       json.RawMessage(`{"sessionId":"s1"}`),
		AgentPresenceSet:     PresenceSetData{PresenceID: "busy"},
		NotificationMissed:   NotificationData{WorkItemID: "w"},
		NotificationRejected: []byte(`{}`),
		AgentCapacityChanged: CapacityData{Used: 1, Total: 2},
		PresenceConfigured:   map[string]any{"id": "p", "name": "P", "text": "P", "baseStatus": "busy"},
		PresenceRemoved:      PresenceRemovedData{ID: "p"},
		AgentConfigured:      AgentConfiguredData{AgentID: "a-1"},
		AgentRemoved:         AgentRemovedData{AgentID: "a-1"},
		SettingsConfigured:   map[string]any{"sessionTtlSeconds": 30},
		SessionExpired:       SessionExpiredData{SessionID: "s1", Deadline: time.Unix(1e9, 0).UTC()},
	}
	subs := Subjects{Prefix: "acme.presence"}
	for _, typ := range InputTypes() {
		t.Run(string(typ), func(t *testing.T) {
			msg, err := NewInput(subs, typ, "a-1", "id-"+string(typ), "urn:test", data[typ])
			if err != nil {
				t.Fatal(err)
			}
			role, _ := RoleOf(typ)
			if role == RoleConfig && msg.Subject != subs.Config() || role != RoleConfig && !strings.HasSuffix(msg.Subject, "."+string(role)+".a-1") {
				t.Errorf("subject = %q for role %s", msg.Subject, role)
			}
			if msg.Header.Get(nats.MsgIdHdr) != "id-"+string(typ) || msg.Header.Get("content-type") != "application/json" {
				t.Errorf("headers = %v", msg.Header)
			}
			ev, rej := subs.Decode(msg.Subject, msg.Header, msg.Data)
			if rej != nil {
				t.Fatalf("Decode: %v", rej)
			}
			if ev.Type != typ || ev.Role != role || ev.ID != "id-"+string(typ) || ev.Source != "urn:test" {
				t.Errorf("event = %+v", ev)
			}
		})
	}
}

func TestNewInputErrors(t *testing.T) {
	for name, f := range map[string]func() (*nats.Msg, error){
		"output type":      func() (*nats.Msg, error) { return NewInput(Subjects{}, AgentStatusChanged, "a-1", "i", "s", nil) },
		"bad agent":        func() (*nats.Msg, error) { return NewInput(Subjects{}, AgentLogin, "a.1", "i", "s", nil) },
		"no id":            func() (*nats.Msg, error) { return NewInput(Subjects{}, AgentLogin, "a-1", "", "s", nil) },
		"raw not JSON":     func() (*nats.Msg, error) { return NewInput(Subjects{}, AgentLogin, "a-1", "i", "s", []byte("x")) },
		"unmarshalable":    func() (*nats.Msg, error) { return NewInput(Subjects{}, AgentLogin, "a-1", "i", "s", func() {}) },
		"config ok w/o id": nil,
	} {
		if f == nil {
			if _, err := NewInput(Subjects{}, SettingsConfigured, "", "i", "s", nil); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if _, err := f(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
