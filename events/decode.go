package events

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cloudevents/sdk-go/protocol/nats_jetstream/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
)

// MaxPayload is the largest input payload accepted (64 KiB); anything bigger is
// rejected as too_large before any parsing, so a flood of huge messages costs little.
const MaxPayload = 64 << 10

const (
	specVersion     = "1.0"
	hdrSpecVersion  = "ce-specversion"
	hdrContentType  = "content-type"
	ceHeaderPrefix  = "ce-"
	extTraceParent  = "traceparent"
	hdrTraceParent  = ceHeaderPrefix + extTraceParent
	mediaTypeJSON   = "application/json"
	maxTextRunes    = 256
	maxSettingValue = 86400 * 7
)

// Decode turns one input message into a validated Event, or says why it must be
// rejected. subject is the logical input subject the message was published on. All
// fields but Seq and Stored are filled; those come from JetStream metadata, which
// this pure function does not see.
func (s Subjects) Decode(subject string, header map[string][]string, data []byte) (Event, *Rejection) {
	if len(data) > MaxPayload {
		return Event{}, Reject(CodeTooLarge, fmt.Sprintf(
			"payload is %d bytes, over the %d-byte (64 KiB) limit; send smaller event data", len(data), MaxPayload))
	}
	ce, rej := parseCloudEvent(header, data)
	if rej != nil {
		return Event{}, rej
	}

	role, token, err := s.ParseInput(subject)
	if err != nil {
		return Event{}, Reject(CodeWrongSubject, fmt.Sprintf(
			"%v; publish on %s, %s, or %s", err, s.AgentIn("<agentId>"), s.RouterIn("<agentId>"), s.Config()))
	}

	typ := Type(ce.Type())
	want, known := RoleOf(typ)
	if !known {
		return Event{}, Reject(CodeUnsupportedType, fmt.Sprintf(
			"type %q is not consumed by presenced; use one of %s", typ, typeList()))
	}
	if want != role {
		return Event{}, Reject(CodeWrongSubject, fmt.Sprintf(
			"type %q is not accepted on the %s subject %q; publish it on %s", typ, role, subject, s.subjectFor(want, token)))
	}

	ev := Event{
		ID:      ce.ID(),
		Source:  ce.Source(),
		Type:    typ,
		Subject: ce.Subject(),
		Role:    role,
	}
	if role != RoleConfig {
		if !ValidAgentID(token) {
			return Event{}, Reject(CodeInvalidData, fmt.Sprintf(
				"agent id %q in subject %q is invalid; agent ids are 1 to 128 characters from A-Z a-z 0-9 _ -", token, subject))
		}
		if ce.Subject() == "" {
			return Event{}, Reject(CodeAgentMismatch, fmt.Sprintf(
				"the CloudEvents subject attribute is missing; set it to the agent id %q (the last token of %q)", token, subject))
		}
		if ce.Subject() != token {
			return Event{}, Reject(CodeAgentMismatch, fmt.Sprintf(
				"CloudEvents subject %q differs from the agent id %q in the NATS subject %q; publish on the subject of the agent the event is about",
				ce.Subject(), token, subject))
		}
		ev.AgentID = token
	}

	if ct := ce.DataContentType(); ct != "" && !isJSONMediaType(ct) {
		return Event{}, Reject(CodeMalformed, fmt.Sprintf(
			"datacontenttype %q is not JSON; send JSON data with datacontenttype %s", ct, mediaTypeJSON))
	}
	raw := ce.Data()
	if len(raw) > 0 && !json.Valid(raw) {
		return Event{}, Reject(CodeMalformed, "data is not valid JSON; send the event data as a JSON object")
	}

	d, agentID, rej := decodeData(typ, raw)
	if rej != nil {
		return Event{}, rej
	}
	ev.Data = d
	if agentID != "" {
		ev.AgentID = agentID
	}
	if v, ok := ce.Extensions()[extTraceParent].(string); ok && validTraceParent(v) {
		ev.TraceParent = v
	}
	return ev, nil
}

// parseCloudEvent reads the envelope through the CloudEvents SDK so both modes follow
// the spec's own reading, and then holds it to the parts of the spec the SDK lets slide.
func parseCloudEvent(header map[string][]string, data []byte) (ce *event.Event, rej *Rejection) {
	h, rej := cloudEventHeaders(header)
	if rej != nil {
		return nil, rej
	}
	// The SDK indexes slices without bounds checks on some malformed input (e.g. a
	// non-string data_base64); a hostile producer must not be able to crash the worker.
	defer func() {
		if r := recover(); r != nil {
			ce, rej = nil, Reject(CodeMalformed, fmt.Sprintf("not a readable CloudEvent (%v); send a CloudEvents 1.0 event", r))
		}
	}()

	if sv, binary := h[hdrSpecVersion]; binary {
		if sv[0] != specVersion {
			return nil, Reject(CodeMalformed, fmt.Sprintf(
				"ce-specversion is %q; only CloudEvents %s is supported, send ce-specversion: %s", sv[0], specVersion, specVersion))
		}
		e, err := binding.ToEvent(context.Background(), nats_jetstream.NewMessage(&nats.Msg{Header: h, Data: data}))
		if err != nil {
			return nil, Reject(CodeMalformed, fmt.Sprintf(
				"binary-mode CloudEvent could not be read: %s; check the ce-* headers", oneLine(err)))
		}
		ce = e
	} else {
		// The SDK's JSON reader is lenient about what follows the object and about
		// broken nesting, so whole-payload validity is checked here first.
		if !json.Valid(data) {
			return nil, Reject(CodeMalformed,
				"payload is not JSON and there is no ce-specversion header; send a structured CloudEvent as JSON, or binary mode with ce-* headers")
		}
		e := event.New()
		if err := e.UnmarshalJSON(data); err != nil {
			return nil, Reject(CodeMalformed, fmt.Sprintf(
				"structured-mode CloudEvent could not be read: %s; send a CloudEvents %s JSON object", oneLine(err), specVersion))
		}
		ce = &e
	}

	if v := ce.SpecVersion(); v != specVersion {
		return nil, Reject(CodeMalformed, fmt.Sprintf(
			"specversion is %q; only CloudEvents %s is supported", v, specVersion))
	}
	for _, a := range [...]struct{ name, val string }{{"id", ce.ID()}, {"source", ce.Source()}, {"type", ce.Type()}} {
		if strings.TrimSpace(a.val) == "" {
			return nil, Reject(CodeMalformed, fmt.Sprintf(
				"CloudEvents attribute %q is missing or empty; every event needs id, source and type", a.name))
		}
	}
	if err := ce.Validate(); err != nil {
		return nil, Reject(CodeMalformed, fmt.Sprintf("invalid CloudEvent: %s", oneLine(err)))
	}
	// CloudEvents strings must not hold control characters; holding to that also keeps
	// the 0-byte separators of the derived ids unambiguous.
	for _, a := range [...]struct{ name, val string }{
		{"id", ce.ID()}, {"source", ce.Source()}, {"type", ce.Type()}, {"subject", ce.Subject()},
	} {
		if hasControl(a.val) {
			return nil, Reject(CodeMalformed, fmt.Sprintf(
				"CloudEvents attribute %q contains control characters, which CloudEvents strings must not", a.name))
		}
	}
	return ce, nil
}

// cloudEventHeaders keeps the headers the SDK reads, with lower-cased names: NATS
// header names are case-sensitive but the contract matches ce-* case-insensitively,
// and the SDK only knows the lower-case forms.
func cloudEventHeaders(header map[string][]string) (nats.Header, *Rejection) {
	var h nats.Header
	for k, vs := range header {
		if len(vs) == 0 {
			// The SDK and nats.Header.Get read vs[0] unchecked.
			continue
		}
		isCE := len(k) > len(ceHeaderPrefix) && strings.EqualFold(k[:len(ceHeaderPrefix)], ceHeaderPrefix)
		if !isCE && !strings.EqualFold(k, hdrContentType) {
			continue
		}
		key := strings.ToLower(k)
		if h == nil {
			h = make(nats.Header, len(header))
		}
		// Two values for one attribute (repeated, or spelt in two cases) would leave
		// it to map order which one counts, so they must agree.
		first := vs[0]
		if prev, ok := h[key]; ok {
			first = prev[0]
		}
		for _, v := range vs {
			if v != first {
				return nil, Reject(CodeMalformed, fmt.Sprintf(
					"header %s is given more than once with different values (%q, %q); send each CloudEvents attribute once", key, first, v))
			}
		}
		h[key] = []string{first}
	}
	return h, nil
}

// oneLine flattens the SDK's multi-line validation errors so a rejection message
// stays one readable line in logs and dead letters.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func (s Subjects) subjectFor(r Role, agentID string) string {
	if agentID == "" {
		agentID = "<agentId>"
	}
	switch r {
	case RoleAgent:
		return s.AgentIn(agentID)
	case RoleRouter:
		return s.RouterIn(agentID)
	case RoleSystem:
		return s.SystemIn(agentID)
	}
	return s.Config()
}

func typeList() string {
	ts := InputTypes()
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// isJSONMediaType accepts application/json and every structured +json type, with
// or without parameters such as charset.
func isJSONMediaType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.TrimSpace(mt)
	const suffix = "+json"
	return strings.EqualFold(mt, mediaTypeJSON) ||
		(len(mt) > len(suffix) && strings.EqualFold(mt[len(mt)-len(suffix):], suffix))
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return true
		}
	}
	return false
}

// validTraceParent checks the W3C trace-context shape. A traceparent that fails is
// dropped rather than rejected: W3C says to restart the trace, and the value is
// later written into a NATS header, where it must not smuggle in line breaks.
func validTraceParent(s string) bool {
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	if !isLowerHex(s[0:2]) || !isLowerHex(s[3:35]) || !isLowerHex(s[36:52]) || !isLowerHex(s[53:55]) {
		return false
	}
	if s[0:2] == "ff" || allZero(s[3:35]) || allZero(s[36:52]) {
		return false
	}
	if len(s) == 55 {
		return true
	}
	// Later versions may append fields; version 00 may not.
	if s[0:2] == "00" || s[55] != '-' || len(s) > 512 {
		return false
	}
	for i := 56; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func allZero(s string) bool {
	return strings.Trim(s, "0") == ""
}
