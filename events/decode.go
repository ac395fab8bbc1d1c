package events

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/url"
	"strings"

	"github.com/cloudevents/sdk-go/protocol/nats_jetstream/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
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

	typ := Type(ce.typ)
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
		ID:      ce.id,
		Source:  ce.source,
		Type:    typ,
		Subject: ce.subject,
		Role:    role,
	}
	if role != RoleConfig {
		if !ValidAgentID(token) {
			return Event{}, Reject(CodeInvalidData, fmt.Sprintf(
				"agent id %q in subject %q is invalid; agent ids are 1 to 128 characters from A-Z a-z 0-9 _ -", token, subject))
		}
		if ce.subject == "" {
			return Event{}, Reject(CodeAgentMismatch, fmt.Sprintf(
				"the CloudEvents subject attribute is missing; set it to the agent id %q (the last token of %q)", token, subject))
		}
		if ce.subject != token {
			return Event{}, Reject(CodeAgentMismatch, fmt.Sprintf(
				"CloudEvents subject %q differs from the agent id %q in the NATS subject %q; publish on the subject of the agent the event is about",
				ce.subject, token, subject))
		}
		ev.AgentID = token
	}

	if ct := ce.contentType; ct != nil && !isJSONMediaType(*ct) {
		return Event{}, Reject(CodeMalformed, fmt.Sprintf(
			"datacontenttype %q is not JSON; send JSON data with datacontenttype %s", *ct, mediaTypeJSON))
	}
	d, agentID, rej := decodeData(typ, ce.data)
	if rej != nil {
		return Event{}, rej
	}
	ev.Data = d
	if agentID != "" {
		ev.AgentID = agentID
	}
	if validTraceParent(ce.traceParent) {
		ev.TraceParent = ce.traceParent
	}
	return ev, nil
}

// envelope is what presenced reads of a CloudEvent's context, and its data.
type envelope struct {
	specVersion, id, source, typ, subject string
	contentType, dataSchema               *string
	time                                  string
	hasSubject                            bool
	traceParent                           string
	data                                  []byte
}

// binaryReader receives a binary-mode event from the SDK's NATS binding
// (nats_jetstream.Message.ReadBinary), which maps the ce-* headers to the
// CloudEvents attributes and extensions. Building the SDK's event.Event for
// every input would cost more than all the presence rules together, so the
// attributes are kept as the strings they are and checked the way the SDK's
// setters and Validate check them.
type binaryReader struct{ env *envelope }

var _ binding.BinaryWriter = binaryReader{}

func (binaryReader) Start(context.Context) error { return nil }
func (binaryReader) End(context.Context) error   { return nil }

func (r binaryReader) SetAttribute(attr spec.Attribute, value interface{}) error {
	v, ok := value.(string) // header values always are
	if !ok {
		var err error
		if v, err = types.ToString(value); err != nil {
			return fmt.Errorf("%s: %w", attr.Name(), err)
		}
	}
	e := r.env
	switch attr.Kind() {
	case spec.SpecVersion:
		e.specVersion = v
	case spec.ID:
		e.id = v
	case spec.Source:
		if err := checkURIRef(v); err != nil {
			return fmt.Errorf("source: %w", err)
		}
		e.source = v
	case spec.Type:
		e.typ = v
	case spec.Subject:
		e.subject, e.hasSubject = v, true
	case spec.Time:
		if _, err := types.ToTime(v); err != nil {
			return fmt.Errorf("time: %w", err)
		}
		e.time = v
	case spec.DataSchema:
		if _, err := url.Parse(v); err != nil {
			return fmt.Errorf("dataschema: %w", err)
		}
		// Copied before its address is taken: taking v's own would move v to
		// the heap on every call, for every attribute.
		ds := v
		e.dataSchema = &ds
	case spec.DataContentType:
		ct := v
		e.contentType = &ct
	}
	return nil
}

func (r binaryReader) SetExtension(name string, value interface{}) error {
	if !event.IsExtensionNameValid(name) {
		return fmt.Errorf("bad key %q: CloudEvents attribute names MUST consist of lower-case letters, upper-case letters or digits", name)
	}
	if spec.V1.Attribute(name) != nil {
		return fmt.Errorf("bad key %q: CloudEvents spec attribute MUST NOT be overwritten by extension", name)
	}
	v, ok := value.(string) // header values always are
	if !ok {
		if _, err := types.Validate(value); err != nil {
			return err
		}
	}
	if name == extTraceParent {
		r.env.traceParent = v
	}
	return nil
}

func (r binaryReader) SetData(data io.Reader) error {
	if b, ok := data.(*bytes.Buffer); ok {
		r.env.data = b.Bytes()
		return nil
	}
	b, err := io.ReadAll(data)
	r.env.data = b
	return err
}

// parseCloudEvent reads the envelope through the CloudEvents SDK so both modes follow
// the spec's own reading, and then holds it to the parts of the spec the SDK lets slide.
func parseCloudEvent(header map[string][]string, data []byte) (env envelope, rej *Rejection) {
	h, rej := cloudEventHeaders(header)
	if rej != nil {
		return envelope{}, rej
	}
	// The SDK indexes slices without bounds checks on some malformed input (e.g. a
	// non-string data_base64); a hostile producer must not be able to crash the worker.
	defer func() {
		if r := recover(); r != nil {
			env, rej = envelope{}, Reject(CodeMalformed, fmt.Sprintf("not a readable CloudEvent (%v); send a CloudEvents 1.0 event", r))
		}
	}()

	if sv, binary := h[hdrSpecVersion]; binary {
		if sv[0] != specVersion {
			return envelope{}, Reject(CodeMalformed, fmt.Sprintf(
				"ce-specversion is %q; only CloudEvents %s is supported, send ce-specversion: %s", sv[0], specVersion, specVersion))
		}
		m := nats_jetstream.NewMessage(&nats.Msg{Header: h, Data: data})
		if err := m.ReadBinary(context.Background(), binaryReader{&env}); err != nil {
			return envelope{}, Reject(CodeMalformed, fmt.Sprintf(
				"binary-mode CloudEvent could not be read: %s; check the ce-* headers", oneLine(err)))
		}
	} else {
		// The SDK's JSON reader is lenient about what follows the object and about
		// broken nesting, so whole-payload validity is checked here first.
		if !json.Valid(data) {
			return envelope{}, Reject(CodeMalformed,
				"payload is not JSON and there is no ce-specversion header; send a structured CloudEvent as JSON, or binary mode with ce-* headers")
		}
		e := event.New()
		if err := e.UnmarshalJSON(data); err != nil {
			return envelope{}, Reject(CodeMalformed, fmt.Sprintf(
				"structured-mode CloudEvent could not be read: %s; send a CloudEvents %s JSON object", oneLine(err), specVersion))
		}
		env = envelope{specVersion: e.SpecVersion(), id: e.ID(), source: e.Source(), typ: e.Type(), data: e.Data()}
		if c := e.Context.GetDataContentType(); c != "" {
			env.contentType = &c
		}
		if sub, ok := e.Context.(*event.EventContextV1); ok && sub.Subject != nil {
			env.subject, env.hasSubject = *sub.Subject, true
		}
		if sub, ok := e.Context.(*event.EventContextV1); ok && sub.DataSchema != nil {
			ds := sub.DataSchema.String()
			env.dataSchema = &ds
		}
		env.traceParent, _ = e.Extensions()[extTraceParent].(string)
	}

	if v := env.specVersion; v != specVersion {
		return envelope{}, Reject(CodeMalformed, fmt.Sprintf(
			"specversion is %q; only CloudEvents %s is supported", v, specVersion))
	}
	for _, a := range [...]struct{ name, val string }{{"id", env.id}, {"source", env.source}, {"type", env.typ}} {
		if strings.TrimSpace(a.val) == "" {
			return envelope{}, Reject(CodeMalformed, fmt.Sprintf(
				"CloudEvents attribute %q is missing or empty; every event needs id, source and type", a.name))
		}
	}
	if err := env.validate(); err != "" {
		return envelope{}, Reject(CodeMalformed, "invalid CloudEvent: "+err)
	}
	// CloudEvents strings must not hold control characters; holding to that also keeps
	// the 0-byte separators of the derived ids unambiguous.
	for _, a := range [...]struct{ name, val string }{
		{"id", env.id}, {"source", env.source}, {"type", env.typ}, {"subject", env.subject},
	} {
		if hasControl(a.val) {
			return envelope{}, Reject(CodeMalformed, fmt.Sprintf(
				"CloudEvents attribute %q contains control characters, which CloudEvents strings must not", a.name))
		}
	}
	return env, nil
}

// validate holds the optional attributes to what the SDK's Validate requires of
// a 1.0 context; the required ones are checked by the caller.
func (e envelope) validate() string {
	if ct := e.contentType; ct != nil {
		v := strings.TrimSpace(*ct)
		if v == "" {
			return "datacontenttype: if present, MUST adhere to the format specified in RFC 2046"
		}
		if v != mediaTypeJSON { // the common case needs no parsing
			if _, _, err := mime.ParseMediaType(v); err != nil {
				return "datacontenttype: failed to parse RFC 2046 media type " + err.Error()
			}
		}
	}
	if ds := e.dataSchema; ds != nil {
		if u, err := url.Parse(*ds); err != nil || !u.IsAbs() {
			return "dataschema: if present, MUST adhere to the format specified in RFC 3986, Section 4.3. Absolute URI"
		}
	}
	if e.hasSubject && strings.TrimSpace(e.subject) == "" {
		return "subject: if present, MUST be a non-empty string"
	}
	return ""
}

// cloudEventHeaders keeps the headers the SDK reads, with lower-cased names: NATS
// header names are case-sensitive but the contract matches ce-* case-insensitively,
// and the SDK only knows the lower-case forms. Headers already spelt that way (as
// producers normally send them) are passed on as they are.
func cloudEventHeaders(header map[string][]string) (nats.Header, *Rejection) {
	lower := true
	for k, vs := range header {
		if !isCEHeader(k) {
			continue
		}
		if len(vs) == 0 || hasUpper(k) {
			lower = false
			break
		}
		for _, v := range vs[1:] {
			if v != vs[0] {
				return nil, Reject(CodeMalformed, fmt.Sprintf(
					"header %s is given more than once with different values (%q, %q); send each CloudEvents attribute once", k, vs[0], v))
			}
		}
	}
	if lower {
		return header, nil
	}
	var h nats.Header
	for k, vs := range header {
		if len(vs) == 0 {
			// The SDK and nats.Header.Get read vs[0] unchecked.
			continue
		}
		if !isCEHeader(k) {
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

func isCEHeader(k string) bool {
	return (len(k) > len(ceHeaderPrefix) && strings.EqualFold(k[:len(ceHeaderPrefix)], ceHeaderPrefix)) || strings.EqualFold(k, hdrContentType)
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return true
		}
	}
	return false
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

// checkURIRef reports whether url.Parse accepts s, without parsing the common
// case: a source made only of letters, digits and - . _ ~ / has no scheme,
// escape, port or host character url.Parse could refuse, and sources repeat on
// every event.
func checkURIRef(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
			_, err := url.Parse(s)
			return err
		}
	}
	return nil
}
