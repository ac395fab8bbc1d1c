package state

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
)

// The Redis layout of an agent that has a status is one hash: the public read
// model of contract §5, then the input sequence it holds ("seq", read by the
// commit script's compare-and-set) and the worker's own fields packed into one
// short text ("w"). Few, short fields keep the hash in Redis's compact listpack
// encoding (values up to 64 bytes) and an idle agent's memory small. An agent
// without a status (a removal's tombstone, an agent only configured so far) has
// no read model; its state is JSON at the state key.
const (
	fieldPresenceID = "presenceId"
	fieldName       = "name"
	fieldText       = "text"
	fieldBaseStatus = "baseStatus"
	fieldSignedIn   = "signedIn"
	fieldSince      = "since"
	fieldVersion    = "version"
	fieldSeq        = "seq"
	fieldWorker     = "w"
)

// agentFields returns the hash of an agent with a status as field, value pairs,
// in the order a full write stores them: seq first, as the commit script's
// compare-and-set reads it on every commit and a small hash is searched from
// the front.
func agentFields(a handlers.Agent) []string {
	return []string{
		fieldSeq, strconv.FormatUint(a.AppliedSeq, 10),
		fieldPresenceID, a.PresenceID,
		fieldName, a.Name,
		fieldText, a.Text,
		fieldBaseStatus, string(a.BaseStatus),
		fieldSignedIn, strconv.FormatBool(a.SignedIn),
		fieldSince, a.Since.UTC().Format(time.RFC3339Nano),
		fieldVersion, strconv.FormatUint(a.Version, 10),
		fieldWorker, packWorker(a),
	}
}

// appendFields appends the hash pairs of a that differ from before (all of them,
// in agentFields order, when before is nil) as MessagePack strings and returns
// how many pairs. It compares the fields themselves and formats the values in
// place, since this runs for every change.
func appendFields(b []byte, before *handlers.Agent, a handlers.Agent) ([]byte, int) {
	n := 0
	all := before == nil
	var p handlers.Agent
	if !all {
		p = *before
	}
	if all || a.AppliedSeq != p.AppliedSeq {
		b = mpAppendString(mpString(b, fieldSeq), func(b []byte) []byte { return strconv.AppendUint(b, a.AppliedSeq, 10) })
		n++
	}
	if all || a.PresenceID != p.PresenceID {
		b, n = mpString(mpString(b, fieldPresenceID), a.PresenceID), n+1
	}
	if all || a.Name != p.Name {
		b, n = mpString(mpString(b, fieldName), a.Name), n+1
	}
	if all || a.Text != p.Text {
		b, n = mpString(mpString(b, fieldText), a.Text), n+1
	}
	if all || a.BaseStatus != p.BaseStatus {
		b, n = mpString(mpString(b, fieldBaseStatus), string(a.BaseStatus)), n+1
	}
	if all || a.SignedIn != p.SignedIn {
		b, n = mpString(mpString(b, fieldSignedIn), strconv.FormatBool(a.SignedIn)), n+1
	}
	if all || !a.Since.Equal(p.Since) {
		b = mpAppendString(mpString(b, fieldSince), func(b []byte) []byte { return a.Since.UTC().AppendFormat(b, time.RFC3339Nano) })
		n++
	}
	if all || a.Version != p.Version {
		b = mpAppendString(mpString(b, fieldVersion), func(b []byte) []byte { return strconv.AppendUint(b, a.Version, 10) })
		n++
	}
	if all || !sameWorker(p, a) {
		b = mpAppendString(mpString(b, fieldWorker), func(b []byte) []byte { return appendWorker(b, a) })
		n++
	}
	return b, n
}

// sameWorker reports whether two states pack to the same worker field.
func sameWorker(a, b handlers.Agent) bool {
	if a.Origin != b.Origin || a.Reason != b.Reason || a.Actor != b.Actor || a.DefaultPresenceID != b.DefaultPresenceID ||
		len(a.Sessions) != len(b.Sessions) || (a.Capacity == nil) != (b.Capacity == nil) || (a.Held == nil) != (b.Held == nil) {
		return false
	}
	if a.Capacity != nil && *a.Capacity != *b.Capacity {
		return false
	}
	if a.Held != nil && (a.Held.PresenceID != b.Held.PresenceID || a.Held.BaseStatus != b.Held.BaseStatus ||
		a.Held.Origin != b.Held.Origin || nanos(a.Held.ExpiredAt) != nanos(b.Held.ExpiredAt)) {
		return false
	}
	for i, s := range a.Sessions {
		if s.ID != b.Sessions[i].ID || nanos(s.Deadline) != nanos(b.Sessions[i].Deadline) {
			return false
		}
	}
	return true
}

// The worker field is "origin|reason|actor|capacity|default|sessions|held" with
// trailing empty parts left out:
//
//	origin   m (manual), c (capacity), r (rejected), s (system)
//	reason   one upper-case letter for each reason presenced gives (reasonCodes)
//	actor    one upper-case letter for each actor (actorCodes)
//	capacity used/total
//	sessions id@deadline,... (deadline in unix nanoseconds, 0: none)
//	held     presenceId/baseStatus/origin/expiredAt (unix nanoseconds)
//
// The codes keep the hash in a smaller allocation: an idle agent's listpack sat
// just past 224 bytes. Fields with the reason and actor spelt out (written before
// the codes) still read, and a version from before reads the codes as text,
// which a rolling upgrade can live with. None of the separators can
// occur in what they separate: reasons, actors and presence ids are fixed or
// [a-z0-9_-], session ids [A-Za-z0-9_.:-].
var originCodes = map[handlers.Origin]string{
	handlers.OriginManual: "m", handlers.OriginCapacity: "c", handlers.OriginRejected: "r", handlers.OriginSystem: "s",
}

var codeOrigins = map[string]handlers.Origin{"m": handlers.OriginManual, "c": handlers.OriginCapacity, "r": handlers.OriginRejected, "s": handlers.OriginSystem}

var reasonCodes = map[events.Reason]string{
	events.ReasonLogin: "L", events.ReasonReconnect: "C", events.ReasonLogout: "O", events.ReasonSessionExpired: "E",
	events.ReasonManual: "M", events.ReasonMissedNotification: "N", events.ReasonRejectedNotification: "J",
	events.ReasonCapacity: "K", events.ReasonPresenceUpdated: "U", events.ReasonPresenceRemoved: "R",
	events.ReasonAgentRemoved: "A",
}

var actorCodes = map[string]string{"agent": "G", "router": "R", "admin": "A", "system": "S"}

var codeReasons, codeActors = invert(reasonCodes), invert(actorCodes)

func invert[K ~string](m map[K]string) map[string]K {
	out := make(map[string]K, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

// code returns the code of v, or v itself when it has none.
func code[K ~string](codes map[K]string, v K) string {
	if c, ok := codes[v]; ok {
		return c
	}
	return string(v)
}

// decode reads what code wrote: an upper-case part is a code, anything else is
// the value spelt out.
func decode[K ~string](codes map[string]K, what, part string) (K, error) {
	if part == "" || part[0] < 'A' || part[0] > 'Z' {
		return K(part), nil
	}
	v, ok := codes[part]
	if !ok {
		return "", fmt.Errorf("%s code %q", what, part)
	}
	return v, nil
}

func packWorker(a handlers.Agent) string { return string(appendWorker(nil, a)) }

// appendWorker appends the worker field of a to b.
func appendWorker(b []byte, a handlers.Agent) []byte {
	head := len(b)
	b = append(b, originCodes[a.Origin]...)
	b = append(append(b, '|'), code(reasonCodes, a.Reason)...)
	b = append(append(b, '|'), code(actorCodes, a.Actor)...)
	b = append(b, '|')
	if c := a.Capacity; c != nil {
		b = strconv.AppendInt(b, int64(c.Used), 10)
		b = strconv.AppendInt(append(b, '/'), int64(c.Total), 10)
	}
	b = append(append(b, '|'), a.DefaultPresenceID...)
	b = append(b, '|')
	for i, s := range a.Sessions {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(append(append(b, s.ID...), '@'), nanos(s.Deadline), 10)
	}
	b = append(b, '|')
	if h := a.Held; h != nil {
		b = append(append(b, h.PresenceID...), '/')
		b = append(append(b, h.BaseStatus...), '/')
		b = append(append(b, originCodes[h.Origin]...), '/')
		b = strconv.AppendInt(b, nanos(h.ExpiredAt), 10)
	}
	// No part holds a separator, so cutting the trailing ones leaves out
	// exactly the trailing empty parts.
	for len(b) > head && b[len(b)-1] == '|' {
		b = b[:len(b)-1]
	}
	return b
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(s string) (time.Time, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n == 0 {
		return time.Time{}, err
	}
	return time.Unix(0, n).UTC(), nil
}

func unpackWorker(a *handlers.Agent, w string) error {
	parts := strings.Split(w, "|")
	if len(parts) > 7 {
		return fmt.Errorf("%d parts, at most 7", len(parts))
	}
	parts = append(parts, make([]string, 7-len(parts))...)
	if parts[0] != "" {
		o, ok := codeOrigins[parts[0]]
		if !ok {
			return fmt.Errorf("origin %q", parts[0])
		}
		a.Origin = o
	}
	var err error
	if a.Reason, err = decode(codeReasons, "reason", parts[1]); err != nil {
		return err
	}
	if a.Actor, err = decode(codeActors, "actor", parts[2]); err != nil {
		return err
	}
	if parts[3] != "" {
		used, total, ok := strings.Cut(parts[3], "/")
		u, err1 := strconv.Atoi(used)
		t, err2 := strconv.Atoi(total)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("capacity %q, not used/total", parts[3])
		}
		a.Capacity = &handlers.Capacity{Used: u, Total: t}
	}
	a.DefaultPresenceID = parts[4]
	if parts[5] != "" {
		for _, s := range strings.Split(parts[5], ",") {
			id, d, ok := strings.Cut(s, "@")
			deadline, err := fromNanos(d)
			if !ok || id == "" || err != nil {
				return fmt.Errorf("session %q, not id@deadline", s)
			}
			a.Sessions = append(a.Sessions, handlers.Session{ID: id, Deadline: deadline})
		}
	}
	if parts[6] != "" {
		f := strings.Split(parts[6], "/")
		if len(f) != 4 {
			return fmt.Errorf("held presence %q", parts[6])
		}
		at, err := fromNanos(f[3])
		o, ok := codeOrigins[f[2]]
		if err != nil || (!ok && f[2] != "") {
			return fmt.Errorf("held presence %q", parts[6])
		}
		a.Held = &handlers.Held{PresenceID: f[0], BaseStatus: events.BaseStatus(f[1]), Origin: o, ExpiredAt: at}
	}
	return nil
}

// agentFromFields reads a hash written by agentFields.
func agentFromFields(id string, h map[string]string) (handlers.Agent, error) {
	a := handlers.Agent{
		ID:         id,
		PresenceID: h[fieldPresenceID],
		Name:       h[fieldName],
		Text:       h[fieldText],
		BaseStatus: events.BaseStatus(h[fieldBaseStatus]),
	}
	var err error
	if a.SignedIn, err = strconv.ParseBool(h[fieldSignedIn]); err != nil {
		return a, fmt.Errorf("agent %s: field %s: %w", id, fieldSignedIn, err)
	}
	if a.Since, err = time.Parse(time.RFC3339Nano, h[fieldSince]); err != nil {
		return a, fmt.Errorf("agent %s: field %s: %w", id, fieldSince, err)
	}
	if a.Version, err = strconv.ParseUint(h[fieldVersion], 10, 64); err != nil {
		return a, fmt.Errorf("agent %s: field %s: %w", id, fieldVersion, err)
	}
	if a.AppliedSeq, err = strconv.ParseUint(h[fieldSeq], 10, 64); err != nil {
		return a, fmt.Errorf("agent %s: field %s: %w", id, fieldSeq, err)
	}
	if err := unpackWorker(&a, h[fieldWorker]); err != nil {
		return a, fmt.Errorf("agent %s: field %s: %w", id, fieldWorker, err)
	}
	return a, nil
}

// DedupeKey is the dedupe entry key of an event: a cryptographic hash of its
// source and id (separated by a byte neither may contain), so no producer can
// make two events collide.
func DedupeKey(source, id string) SeenKey {
	// Hashed from a buffer on the stack for the usual lengths: a hash state
	// from sha256.New is an allocation per event.
	var buf [256]byte
	sum := sha256.Sum256(append(append(append(buf[:0], source...), 0), id...))
	var k SeenKey
	copy(k[:], sum[:])
	return k
}

// EncodeSeen packs dedupe entries as 16-byte key plus 8-byte unix nanoseconds each.
func EncodeSeen(entries []Seen) []byte {
	b := make([]byte, 0, 24*len(entries))
	for _, e := range entries {
		b = appendSeen(b, e)
	}
	return b
}

func appendSeen(b []byte, e Seen) []byte {
	b = append(b, e.Key[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(e.At.UnixNano()))
}

// DecodeSeen reads what EncodeSeen wrote.
func DecodeSeen(b []byte) ([]Seen, error) {
	if len(b)%24 != 0 {
		return nil, fmt.Errorf("dedupe entries: %d bytes, not a multiple of 24", len(b))
	}
	out := make([]Seen, 0, len(b)/24)
	for ; len(b) > 0; b = b[24:] {
		var e Seen
		copy(e.Key[:], b[:16])
		var n uint64
		for _, c := range b[16:24] {
			n = n<<8 | uint64(c)
		}
		e.At = time.Unix(0, int64(n)).UTC()
		out = append(out, e)
	}
	return out, nil
}

// An outbox is stored as 'p', the uvarint length of the dedupe entries, the
// entries (EncodeSeen), then the uvarint count of status changes and each one's
// fields in a fixed order (appendOutgoing), strings as uvarint length and bytes.
// It is written with every change and Redis's Lua hashes every byte of every
// string it handles, so it carries no field names. Outboxes written as 'o'
// (the entries, then the changes as a JSON array of Outgoing) are still read.
const (
	outboxMagic     = 'p'
	outboxMagicJSON = 'o'
)

func encodeOutbox(out []Outgoing, seen []Seen) []byte {
	if len(out) == 0 && len(seen) == 0 {
		return nil
	}
	b := make([]byte, 0, 200*len(out)+24*len(seen)+16)
	b = append(b, outboxMagic)
	b = binary.AppendUvarint(b, uint64(24*len(seen)))
	for _, e := range seen {
		b = appendSeen(b, e)
	}
	b = binary.AppendUvarint(b, uint64(len(out)))
	for i := range out {
		b = appendOutgoing(b, &out[i])
	}
	return b
}

func appendStr(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// appendTime writes 0 for the zero time, else 1, the unix seconds and the
// nanoseconds: any time.Time in UTC comes back equal.
func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, 0)
	}
	b = binary.AppendVarint(append(b, 1), t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// appendOutgoing writes every field of o; TestOutboxCoversStatus fails when
// events.StatusChanged gains one this does not write.
func appendOutgoing(b []byte, o *Outgoing) []byte {
	st := &o.Status
	b = appendStr(b, o.ID)
	b = appendStr(b, o.TraceParent)
	b = appendStr(b, st.AgentID)
	b = appendStr(b, st.PresenceID)
	b = appendStr(b, st.Name)
	b = appendStr(b, st.Text)
	b = appendStr(b, string(st.BaseStatus))
	b = appendBool(b, st.SignedIn)
	b = appendTime(b, st.Since)
	b = appendStr(b, string(st.Reason))
	b = appendStr(b, st.Actor)
	b = appendBool(b, st.Previous != nil)
	if p := st.Previous; p != nil {
		b = appendStr(b, p.PresenceID)
		b = appendStr(b, string(p.BaseStatus))
		b = appendTime(b, p.Since)
	}
	b = appendStr(b, st.Cause.ID)
	b = appendStr(b, st.Cause.Source)
	b = appendStr(b, string(st.Cause.Type))
	return binary.AppendUvarint(b, st.Version)
}

// outboxReader reads what appendOutgoing wrote; the first problem sticks.
type outboxReader struct {
	b   []byte
	err error
}

func (r *outboxReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("decode outbox: truncated or bad %s", what)
	}
}

func (r *outboxReader) uvarint(what string) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *outboxReader) str(what string) string {
	n := r.uvarint(what)
	if n > uint64(len(r.b)) {
		r.fail(what)
		r.b = nil
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *outboxReader) bool(what string) bool {
	if len(r.b) == 0 || r.b[0] > 1 {
		r.fail(what)
		r.b = nil
		return false
	}
	v := r.b[0] == 1
	r.b = r.b[1:]
	return v
}

func (r *outboxReader) time(what string) time.Time {
	if !r.bool(what) {
		return time.Time{}
	}
	sec, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(what)
		r.b = nil
		return time.Time{}
	}
	r.b = r.b[n:]
	nsec := r.uvarint(what)
	if nsec >= 1e9 {
		r.fail(what)
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

func (r *outboxReader) outgoing() Outgoing {
	var o Outgoing
	st := &o.Status
	o.ID = r.str("id")
	o.TraceParent = r.str("traceparent")
	st.AgentID = r.str("agentId")
	st.PresenceID = r.str("presenceId")
	st.Name = r.str("name")
	st.Text = r.str("text")
	st.BaseStatus = events.BaseStatus(r.str("baseStatus"))
	st.SignedIn = r.bool("signedIn")
	st.Since = r.time("since")
	st.Reason = events.Reason(r.str("reason"))
	st.Actor = r.str("actor")
	if r.bool("previous") {
		st.Previous = &events.Previous{PresenceID: r.str("previous presenceId"),
			BaseStatus: events.BaseStatus(r.str("previous baseStatus")), Since: r.time("previous since")}
	}
	st.Cause.ID = r.str("cause id")
	st.Cause.Source = r.str("cause source")
	st.Cause.Type = events.Type(r.str("cause type"))
	st.Version = r.uvarint("version")
	st.TraceParent = o.TraceParent
	return o
}

func decodeOutbox(b []byte) ([]Outgoing, []Seen, error) {
	if len(b) == 0 {
		return nil, nil, nil
	}
	if b[0] != outboxMagic && b[0] != outboxMagicJSON {
		return nil, nil, fmt.Errorf("decode outbox: unknown format %q", b[0])
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > uint64(len(b)-1-k) {
		return nil, nil, fmt.Errorf("decode outbox: bad dedupe entries length")
	}
	rest := b[1+k:]
	seen, err := DecodeSeen(rest[:n])
	if err != nil {
		return nil, nil, fmt.Errorf("decode outbox: %w", err)
	}
	rest = rest[n:]
	var out []Outgoing
	if b[0] == outboxMagicJSON {
		if err := json.Unmarshal(rest, &out); err != nil {
			return nil, nil, fmt.Errorf("decode outbox: %w", err)
		}
		for i := range out {
			out[i].Status.TraceParent = out[i].TraceParent
		}
		return out, seen, nil
	}
	r := outboxReader{b: rest}
	count := r.uvarint("count")
	if count > uint64(len(rest)) { // every change takes more than a byte
		return nil, nil, fmt.Errorf("decode outbox: %d changes in %d bytes", count, len(rest))
	}
	for i := uint64(0); i < count && r.err == nil; i++ {
		out = append(out, r.outgoing())
	}
	if r.err == nil && len(r.b) > 0 {
		r.err = fmt.Errorf("decode outbox: %d bytes after the last change", len(r.b))
	}
	if r.err != nil {
		return nil, nil, r.err
	}
	return out, seen, nil
}
