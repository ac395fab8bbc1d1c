package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// fields is the data object by exact key. Going through a map rather than straight
// into the structs is what lets the codec tell an omitted field from a null or a
// zero one, and keeps encoding/json's case-insensitive key matching from accepting
// "SESSIONID" for "sessionId".
type fields map[string]json.RawMessage

func invalid(format string, args ...any) *Rejection {
	return Reject(CodeInvalidData, fmt.Sprintf(format, args...))
}

// parseFields reads raw, the data as sent. JSON that does not parse is malformed;
// JSON that is not an object is invalid data.
func parseFields(typ Type, raw []byte) (fields, *Rejection) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" || string(raw) == "{}" {
		return nil, nil
	}
	if raw[0] != '{' {
		if !json.Valid(raw) {
			return nil, errNotJSON
		}
		return nil, invalid("data of %s must be a JSON object, not %s", typ, jsonKind(raw[0]))
	}
	if f, ok := scanFlat(raw); ok {
		return f, nil
	}
	var f fields
	if err := json.Unmarshal(raw, &f); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return nil, errNotJSON
		}
		return nil, invalid("data of %s could not be read: %v", typ, err)
	}
	return f, nil
}

var errNotJSON = Reject(CodeMalformed, "data is not valid JSON; send the event data as a JSON object")

// scanFlat reads the common shape of event data, a flat object of plain strings,
// numbers, booleans and nulls, in one pass and without reflection. It reports
// false for anything else (nested values, escapes, non-ASCII keys, invalid
// JSON), which encoding/json then reads: what it accepts, encoding/json reads
// the same way (a fuzz test holds it to that).
func scanFlat(raw []byte) (fields, bool) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, false
	}
	f := fields{}
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return f, skipSpace(raw, i+1) == len(raw)
	}
	for {
		if i >= len(raw) || raw[i] != '"' {
			return nil, false
		}
		j := i + 1
		for j < len(raw) && raw[j] != '"' {
			if c := raw[j]; c < 0x20 || c == '\\' || c >= 0x80 {
				return nil, false
			}
			j++
		}
		if j >= len(raw) {
			return nil, false
		}
		key := string(raw[i+1 : j])
		i = skipSpace(raw, j+1)
		if i >= len(raw) || raw[i] != ':' {
			return nil, false
		}
		i = skipSpace(raw, i+1)
		end, ok := scanScalar(raw, i)
		if !ok {
			return nil, false
		}
		f[key] = json.RawMessage(raw[i:end])
		i = skipSpace(raw, end)
		if i >= len(raw) {
			return nil, false
		}
		switch raw[i] {
		case ',':
			i = skipSpace(raw, i+1)
		case '}':
			return f, skipSpace(raw, i+1) == len(raw)
		default:
			return nil, false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanScalar returns the end of the string without escapes, number, boolean or
// null at b[i:].
func scanScalar(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		for j := i + 1; j < len(b); j++ {
			switch c := b[j]; {
			case c == '"':
				return j + 1, true
			case c < 0x20 || c == '\\':
				return 0, false
			}
		}
		return 0, false
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	}
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
			return i + len(lit), true
		}
	}
	return 0, false
}

// scanNumber follows JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(b []byte, i int) (int, bool) {
	digits := func(i int) int {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(i)
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

func jsonKind(first byte) string {
	switch first {
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	}
	return "a number"
}

// given reports whether key is present with a non-null value; a null counts as
// omitted wherever the contract does not give null a meaning of its own.
func (f fields) given(key string) bool {
	raw, ok := f[key]
	return ok && string(raw) != "null"
}

// str reads an optional string field.
func (f fields) str(key string) (string, bool, *Rejection) {
	if !f.given(key) {
		return "", false, nil
	}
	raw := f[key]
	// A plain string (no escapes, valid UTF-8) reads as its bytes; anything else
	// goes through encoding/json, which also says what is wrong with it.
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' && bytes.IndexByte(raw[1:n-1], '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : n-1]), true, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, invalid("data.%s must be a string, got %s", key, raw)
	}
	return s, true, nil
}

// requiredStr reads a string field that must be present and non-empty; hint says
// what a good value looks like.
func (f fields) requiredStr(typ Type, key, hint string) (string, *Rejection) {
	s, ok, rej := f.str(key)
	if rej != nil {
		return "", rej
	}
	if !ok || s == "" {
		return "", invalid("data.%s is required for %s; set it to %s", key, typ, hint)
	}
	return s, nil
}

// requiredInt reads an integer field that must be present.
func (f fields) requiredInt(typ Type, key string) (int, *Rejection) {
	if !f.given(key) {
		return 0, invalid("data.%s is required for %s; set it to an integer", key, typ)
	}
	// The object parsed, so the value is a JSON token: one Atoi accepts is an
	// integer encoding/json would read into an int.
	n, err := strconv.Atoi(string(f[key]))
	if err != nil {
		return 0, invalid("data.%s must be an integer, got %s", key, f[key])
	}
	return n, nil
}

func (f fields) agentID(typ Type) (string, *Rejection) {
	id, rej := f.requiredStr(typ, "agentId", "the id of the agent to configure")
	if rej != nil {
		return "", rej
	}
	if !ValidAgentID(id) {
		return "", invalid("data.agentId %q is invalid; agent ids are 1 to 128 characters from A-Z a-z 0-9 _ -", id)
	}
	return id, nil
}

func (f fields) text(typ Type, key string) (string, *Rejection) {
	s, rej := f.requiredStr(typ, key, "a non-empty text of at most 256 characters")
	if rej != nil {
		return "", rej
	}
	if n := utf8.RuneCountInString(s); n > maxTextRunes {
		return "", invalid("data.%s is %d characters long; shorten it to at most %d", key, n, maxTextRunes)
	}
	return s, nil
}

// decodeData validates raw for typ and returns the data value (never a pointer) and,
// for configuration events that name an agent, that agent's id.
func decodeData(typ Type, raw []byte) (any, string, *Rejection) {
	f, rej := parseFields(typ, raw)
	if rej != nil {
		return nil, "", rej
	}
	switch typ {
	case AgentLogin, AgentLogout, AgentHeartbeat:
		d, rej := sessionData(f)
		return d, "", rej
	case AgentPresenceSet:
		id, rej := f.requiredStr(typ, "presenceId", "the id of the presence to show")
		return PresenceSetData{PresenceID: id}, "", rej
	case NotificationMissed, NotificationRejected:
		d, rej := notificationData(f)
		return d, "", rej
	case AgentCapacityChanged:
		d, rej := capacityData(f)
		return d, "", rej
	case PresenceConfigured:
		d, rej := presenceConfiguredData(f)
		return d, "", rej
	case PresenceRemoved:
		d, rej := presenceRemovedData(f)
		return d, "", rej
	case AgentConfigured:
		d, rej := agentConfiguredData(f)
		return d, d.AgentID, rej
	case AgentRemoved:
		id, rej := f.agentID(typ)
		return AgentRemovedData{AgentID: id}, id, rej
	case SettingsConfigured:
		d, rej := settingsData(f)
		return d, "", rej
	case SessionExpired:
		d, rej := sessionExpiredData(f)
		return d, "", rej
	}
	return nil, "", Reject(CodeUnsupportedType, fmt.Sprintf("type %q has no data rules; use one of %s", typ, typeList()))
}

func sessionData(f fields) (SessionData, *Rejection) {
	id, ok, rej := f.str("sessionId")
	if rej != nil {
		return SessionData{}, rej
	}
	if !ok {
		return SessionData{SessionID: DefaultSessionID}, nil
	}
	if !ValidSessionID(id) {
		return SessionData{}, invalid(
			"data.sessionId %q is invalid; use 1 to 128 characters from A-Z a-z 0-9 _ - . : or omit it for the %q session", id, DefaultSessionID)
	}
	return SessionData{SessionID: id}, nil
}

func notificationData(f fields) (NotificationData, *Rejection) {
	item, _, rej := f.str("workItemId")
	if rej != nil {
		return NotificationData{}, rej
	}
	stream, _, rej := f.str("workstreamId")
	if rej != nil {
		return NotificationData{}, rej
	}
	return NotificationData{WorkItemID: item, WorkstreamID: stream}, nil
}

func capacityData(f fields) (CapacityData, *Rejection) {
	used, rej := f.requiredInt(AgentCapacityChanged, "used")
	if rej != nil {
		return CapacityData{}, rej
	}
	total, rej := f.requiredInt(AgentCapacityChanged, "total")
	if rej != nil {
		return CapacityData{}, rej
	}
	if total < 1 {
		return CapacityData{}, invalid("data.total is %d; it must be at least 1 (the capacity units the agent can take)", total)
	}
	if used < 0 {
		return CapacityData{}, invalid("data.used is %d; it must be 0 or more (the capacity units in use)", used)
	}
	return CapacityData{Used: used, Total: total}, nil
}

func presenceID(typ Type, f fields) (string, *Rejection) {
	id, rej := f.requiredStr(typ, "id", "the presence id (1 to 64 characters from a-z 0-9 _ -)")
	if rej != nil {
		return "", rej
	}
	if !ValidPresenceID(id) {
		return "", invalid("data.id %q is invalid; presence ids are 1 to 64 characters from a-z 0-9 _ -", id)
	}
	if _, builtin := Builtin(id); builtin {
		return "", Reject(CodeBuiltinImmutable, fmt.Sprintf(
			"presence %q is built in and cannot be changed or removed; configure a custom presence with another id", id))
	}
	return id, nil
}

func presenceConfiguredData(f fields) (PresenceConfiguredData, *Rejection) {
	const typ = PresenceConfigured
	var d PresenceConfiguredData
	var rej *Rejection
	if d.ID, rej = presenceID(typ, f); rej != nil {
		return PresenceConfiguredData{}, rej
	}
	if d.Name, rej = f.text(typ, "name"); rej != nil {
		return PresenceConfiguredData{}, rej
	}
	if d.Text, rej = f.text(typ, "text"); rej != nil {
		return PresenceConfiguredData{}, rej
	}
	b, rej := f.requiredStr(typ, "baseStatus", "one of available, busy, busy_dnd, away, offline")
	if rej != nil {
		return PresenceConfiguredData{}, rej
	}
	if d.BaseStatus = BaseStatus(b); !d.BaseStatus.Valid() {
		return PresenceConfiguredData{}, invalid(
			"data.baseStatus %q is not a base status; use one of available, busy, busy_dnd, away, offline", b)
	}
	if d.Description, _, rej = f.str("description"); rej != nil {
		return PresenceConfiguredData{}, rej
	}
	d.Selectable = true
	if f.given("selectable") {
		if err := json.Unmarshal(f["selectable"], &d.Selectable); err != nil {
			return PresenceConfiguredData{}, invalid("data.selectable must be true or false, got %s", f["selectable"])
		}
	}
	return d, nil
}

func presenceRemovedData(f fields) (PresenceRemovedData, *Rejection) {
	id, rej := presenceID(PresenceRemoved, f)
	return PresenceRemovedData{ID: id}, rej
}

func agentConfiguredData(f fields) (AgentConfiguredData, *Rejection) {
	id, rej := f.agentID(AgentConfigured)
	if rej != nil {
		return AgentConfiguredData{}, rej
	}
	// The key is required, not just its value, so that a typo in its name cannot
	// silently clear an agent's default.
	if _, ok := f["defaultPresenceId"]; !ok {
		return AgentConfiguredData{}, invalid(
			"data.defaultPresenceId is required for %s; set a presence id, or null to clear the agent's default", AgentConfigured)
	}
	def, given, rej := f.str("defaultPresenceId")
	if rej != nil {
		return AgentConfiguredData{}, rej
	}
	d := AgentConfiguredData{AgentID: id}
	if given {
		if def == "" {
			return AgentConfiguredData{}, invalid("data.defaultPresenceId is empty; set a presence id, or null to clear the agent's default")
		}
		d.DefaultPresenceID = &def
	}
	return d, nil
}

func settingsData(f fields) (SettingsConfiguredData, *Rejection) {
	var d SettingsConfiguredData
	for _, o := range [...]struct {
		key string
		dst json.Unmarshaler
		typ string
	}{
		{"defaultPresenceId", &d.DefaultPresenceID, "a string"},
		{"missedNotification", &d.MissedNotification, "true or false"},
		{"rejectedNotification", &d.RejectedNotification, "true or false"},
		{"sessionTtlSeconds", &d.SessionTTLSeconds, "an integer"},
		{"reconnectGraceSeconds", &d.ReconnectGraceSeconds, "an integer"},
	} {
		raw, ok := f[o.key]
		if !ok {
			continue
		}
		if err := o.dst.UnmarshalJSON(raw); err != nil {
			return SettingsConfiguredData{}, invalid("data.%s must be %s or null, got %s", o.key, o.typ, raw)
		}
	}
	if p := d.DefaultPresenceID; p.Present && !p.Null && p.Value == "" {
		return SettingsConfiguredData{}, invalid("data.defaultPresenceId is empty; set a presence id, or null for the built-in default (available)")
	}
	for _, o := range [...]struct {
		key string
		v   Optional[int]
	}{{"sessionTtlSeconds", d.SessionTTLSeconds}, {"reconnectGraceSeconds", d.ReconnectGraceSeconds}} {
		if o.v.Present && !o.v.Null && (o.v.Value < 0 || o.v.Value > maxSettingValue) {
			return SettingsConfiguredData{}, invalid("data.%s is %d; use 0 to %d seconds, or null for the default", o.key, o.v.Value, maxSettingValue)
		}
	}
	return d, nil
}

func sessionExpiredData(f fields) (SessionExpiredData, *Rejection) {
	id, rej := f.requiredStr(SessionExpired, "sessionId", "the id of the expired session")
	if rej != nil {
		return SessionExpiredData{}, rej
	}
	if !ValidSessionID(id) {
		return SessionExpiredData{}, invalid("data.sessionId %q is invalid; session ids are 1 to 128 characters from A-Z a-z 0-9 _ - . :", id)
	}
	if !f.given("deadline") {
		return SessionExpiredData{}, invalid("data.deadline is required for %s; set it to the lease deadline (RFC 3339)", SessionExpired)
	}
	var deadline time.Time
	if err := json.Unmarshal(f["deadline"], &deadline); err != nil || deadline.IsZero() {
		return SessionExpiredData{}, invalid("data.deadline must be an RFC 3339 time, got %s", f["deadline"])
	}
	return SessionExpiredData{SessionID: id, Deadline: deadline}, nil
}
