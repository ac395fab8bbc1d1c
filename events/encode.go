package events

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

const (
	hdrID      = "ce-id"
	hdrSource  = "ce-source"
	hdrType    = "ce-type"
	hdrSubject = "ce-subject"
	hdrTime    = "ce-time"
)

// EncodeStatus builds the binary-mode agent.status.changed message for st. It is on
// the path of every status change, so headers and JSON are written by hand rather
// than through the SDK and reflection; writing by hand also means it cannot fail,
// where encoding/json refuses times outside years 0-9999.
func (s Subjects) EncodeStatus(source, id string, st StatusChanged) *nats.Msg {
	return s.StatusMsg(source, id, st, MarshalStatus(&st))
}

// MarshalStatus writes the data of an agent.status.changed event, exactly as
// encoding/json would (a test holds it to that).
func MarshalStatus(st *StatusChanged) []byte { return appendStatusJSON(make([]byte, 0, 512), st) }

// StatusMsg is EncodeStatus with the data already marshalled (MarshalStatus),
// for a caller that also stores it.
func (s Subjects) StatusMsg(source, id string, st StatusChanged, data []byte) *nats.Msg {
	// Only a well-formed traceparent goes out: it is caller data written into a
	// NATS header, where a line break would corrupt the protocol.
	withTrace := st.TraceParent != "" && validTraceParent(st.TraceParent)
	n := 8
	if withTrace {
		n++
	}
	// One backing array for all header values saves an allocation per header.
	vals := make([]string, 0, n)
	h := make(nats.Header, n)
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	set(hdrSpecVersion, specVersion)
	set(hdrID, id)
	set(hdrSource, source)
	set(hdrType, string(AgentStatusChanged))
	set(hdrSubject, st.AgentID)
	set(hdrTime, st.Since.Format(time.RFC3339Nano))
	set(hdrContentType, mediaTypeJSON)
	set(nats.MsgIdHdr, id)
	if withTrace {
		set(hdrTraceParent, st.TraceParent)
	}
	return &nats.Msg{Subject: s.Status(st.AgentID), Header: h, Data: data}
}

// appendStatusJSON writes st exactly as encoding/json would (a test holds it to that).
func appendStatusJSON(b []byte, st *StatusChanged) []byte {
	b = append(b, `{"agentId":`...)
	b = appendJSONString(b, st.AgentID)
	b = append(b, `,"presenceId":`...)
	b = appendJSONString(b, st.PresenceID)
	b = append(b, `,"name":`...)
	b = appendJSONString(b, st.Name)
	b = append(b, `,"text":`...)
	b = appendJSONString(b, st.Text)
	b = append(b, `,"baseStatus":`...)
	b = appendJSONString(b, string(st.BaseStatus))
	b = append(b, `,"signedIn":`...)
	b = strconv.AppendBool(b, st.SignedIn)
	b = append(b, `,"since":`...)
	b = appendJSONTime(b, st.Since)
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, string(st.Reason))
	b = append(b, `,"actor":`...)
	b = appendJSONString(b, st.Actor)
	b = append(b, `,"previous":`...)
	if p := st.Previous; p == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"presenceId":`...)
		b = appendJSONString(b, p.PresenceID)
		b = append(b, `,"baseStatus":`...)
		b = appendJSONString(b, string(p.BaseStatus))
		b = append(b, `,"since":`...)
		b = appendJSONTime(b, p.Since)
		b = append(b, '}')
	}
	b = append(b, `,"cause":{"id":`...)
	b = appendJSONString(b, st.Cause.ID)
	b = append(b, `,"source":`...)
	b = appendJSONString(b, st.Cause.Source)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, string(st.Cause.Type))
	b = append(b, `},"version":`...)
	b = strconv.AppendUint(b, st.Version, 10)
	return append(b, '}')
}

func appendJSONTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s the way encoding/json does by default (HTML-safe,
// invalid UTF-8 as U+FFFD, U+2028/2029 escaped) so consumers see identical bytes
// whichever encoder produced them.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// EncodeRejected builds the event.rejected dead letter for the input message at seq
// in stream. The original headers and payload travel along so the event can be
// inspected, fixed and replayed.
func (s Subjects) EncodeRejected(source, stream string, seq uint64, inputSubject string, header map[string][]string, data []byte, rej *Rejection) *nats.Msg {
	id := RejectedID(stream, seq)
	if rej == nil {
		rej = Reject(CodeMalformed, "rejected without a reason")
	}
	if header == nil {
		header = map[string][]string{}
	}
	r := Rejected{
		Code:    rej.Code,
		Message: rej.Message,
		Subject: inputSubject,
		Event:   RejectedInput{Headers: header, Data: rejectedData(data)},
	}
	body, err := json.Marshal(r)
	if err != nil {
		// Unreachable: every part is a string or JSON checked by json.Valid. Keeping
		// the dead letter, without its payload, beats losing it.
		r.Event.Data = nil
		body, _ = json.Marshal(r)
	}
	h := nats.Header{
		hdrSpecVersion: {specVersion},
		hdrID:          {id},
		hdrSource:      {source},
		hdrType:        {string(EventRejected)},
		hdrContentType: {mediaTypeJSON},
		nats.MsgIdHdr:  {id},
	}
	return &nats.Msg{Subject: s.Rejected(), Header: h, Data: body}
}

// rejectedData keeps a JSON payload readable in the dead letter and carries anything
// else losslessly as base64.
func rejectedData(data []byte) json.RawMessage {
	switch {
	case len(data) == 0:
		return json.RawMessage("null")
	case json.Valid(data):
		return json.RawMessage(data)
	}
	b := make([]byte, 0, base64.StdEncoding.EncodedLen(len(data))+2)
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, data)
	return append(b, '"')
}

// DecodeStatus reads an agent.status.changed message or a status query reply.
func DecodeStatus(msg *nats.Msg) (StatusChanged, error) {
	if err := checkType(msg, AgentStatusChanged); err != nil {
		return StatusChanged{}, err
	}
	var st StatusChanged
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		return StatusChanged{}, fmt.Errorf("decode %s data: %w", AgentStatusChanged, err)
	}
	if st.AgentID == "" {
		return StatusChanged{}, fmt.Errorf("decode %s data: agentId is missing", AgentStatusChanged)
	}
	st.TraceParent = headerValue(msg.Header, hdrTraceParent)
	return st, nil
}

// DecodeRejected reads an event.rejected message.
func DecodeRejected(msg *nats.Msg) (Rejected, error) {
	if err := checkType(msg, EventRejected); err != nil {
		return Rejected{}, err
	}
	var r Rejected
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return Rejected{}, fmt.Errorf("decode %s data: %w", EventRejected, err)
	}
	if r.Code == "" {
		return Rejected{}, fmt.Errorf("decode %s data: code is missing", EventRejected)
	}
	return r, nil
}

// checkType lets a message without CloudEvents headers through, because query
// replies carry the same data bare.
func checkType(msg *nats.Msg, want Type) error {
	if msg == nil {
		return fmt.Errorf("decode %s: nil message", want)
	}
	if got := headerValue(msg.Header, hdrType); got != "" && got != string(want) {
		return fmt.Errorf("decode %s: message has type %q", want, got)
	}
	return nil
}

// headerValue looks key up case-insensitively, since producers other than this
// package may spell header names in any case.
func headerValue(h nats.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range h {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// NewInput builds a binary-mode input message of type typ, on the subject that
// carries typ, the way the contract asks producers to publish. data may be nil (no
// payload), raw JSON as []byte or json.RawMessage, or a value to marshal.
func NewInput(subjects Subjects, typ Type, agentID, id, source string, data any) (*nats.Msg, error) {
	role, ok := RoleOf(typ)
	if !ok {
		return nil, fmt.Errorf("new input: type %q is not an input type", typ)
	}
	if id == "" || source == "" {
		return nil, fmt.Errorf("new input %s: id and source are required", typ)
	}
	if role != RoleConfig && !ValidAgentID(agentID) {
		return nil, fmt.Errorf("new input %s: invalid agent id %q", typ, agentID)
	}
	var body []byte
	switch d := data.(type) {
	case nil:
	case json.RawMessage:
		body = d
	case []byte:
		body = d
	default:
		b, err := json.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("new input %s: marshal data: %w", typ, err)
		}
		body = b
	}
	if len(body) > 0 && !json.Valid(body) {
		return nil, fmt.Errorf("new input %s: data is not valid JSON", typ)
	}
	h := nats.Header{
		hdrSpecVersion: {specVersion},
		hdrID:          {id},
		hdrSource:      {source},
		hdrType:        {string(typ)},
		hdrContentType: {mediaTypeJSON},
		nats.MsgIdHdr:  {id},
	}
	if role != RoleConfig {
		h[hdrSubject] = []string{agentID}
	}
	return &nats.Msg{Subject: subjects.subjectFor(role, agentID), Header: h, Data: body}, nil
}
