package events

import (
	"encoding/json"
	"strings"
	"testing"
)

// mode is one of the ways a producer may send the same event.
type mode int

const (
	binaryMode mode = iota
	structuredBare
	structuredCT
)

func (m mode) String() string {
	return [...]string{"binary", "structured", "structured+content-type"}[m]
}

var allModes = []mode{binaryMode, structuredBare, structuredCT}

// input is an event before it is put on the wire.
type input struct {
	id, source, typ, ceSubject string
	data                       string // raw JSON; "" sends no data
	traceparent                string
}

// encode puts in on the wire in mode m. Binary headers use mixed-case names on
// purpose: NATS keeps whatever case the producer chose.
func (in input) encode(t testing.TB, m mode) (map[string][]string, []byte) {
	t.Helper()
	if m == binaryMode {
		h := map[string][]string{
			"Ce-Specversion": {"1.0"},
			"Ce-Id":          {in.id},
			"CE-SOURCE":      {in.source},
			"ce-Type":        {in.typ},
			"Content-Type":   {"application/json"},
			"Nats-Msg-Id":    {in.id},
		}
		if in.ceSubject != "" {
			h["Ce-Subject"] = []string{in.ceSubject}
		}
		if in.traceparent != "" {
			h["Ce-Traceparent"] = []string{in.traceparent}
		}
		return h, []byte(in.data)
	}
	obj := map[string]any{"specversion": "1.0", "id": in.id, "source": in.source, "type": in.typ}
	if in.ceSubject != "" {
		obj["subject"] = in.ceSubject
	}
	if in.traceparent != "" {
		obj["traceparent"] = in.traceparent
	}
	if in.data != "" {
		obj["datacontenttype"] = "application/json"
		obj["data"] = json.RawMessage(in.data)
	}
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatalf("marshal structured event: %v", err)
	}
	var h map[string][]string
	if m == structuredCT {
		h = map[string][]string{"Content-Type": {"application/cloudevents+json"}}
	}
	return h, b
}

func agentEvent(typ Type, agent, data string) input {
	return input{id: "e-1", source: "urn:test", typ: string(typ), ceSubject: agent, data: data}
}

func configEvent(typ Type, data string) input {
	return input{id: "c-1", source: "urn:admin", typ: string(typ), data: data}
}

func strPtr(s string) *string { return &s }

func wantCode(t *testing.T, rej *Rejection, code Code) {
	t.Helper()
	if code == "" {
		if rej != nil {
			t.Fatalf("rejected, want accepted: %v", rej)
		}
		return
	}
	if rej == nil {
		t.Fatalf("accepted, want %s", code)
	}
	if rej.Code != code {
		t.Fatalf("code = %s (%s), want %s", rej.Code, rej.Message, code)
	}
	if strings.TrimSpace(rej.Message) == "" {
		t.Fatalf("rejection %s has no message", rej.Code)
	}
}
