// Package events is the presenced event contract in code: type names, the data each
// type carries, the subjects they travel on, and a pure codec between NATS messages
// and typed events.
package events

import (
	"encoding/json"
	"time"
)

// BaseStatus is what routing looks at.
type BaseStatus string

const (
	Available BaseStatus = "available"
	Busy      BaseStatus = "busy"
	BusyDND   BaseStatus = "busy_dnd"
	Away      BaseStatus = "away"
	Offline   BaseStatus = "offline"
)

// BaseStatuses returns the five base statuses.
func BaseStatuses() []BaseStatus { return []BaseStatus{Available, Busy, BusyDND, Away, Offline} }

// Valid reports whether b is one of the five base statuses.
func (b BaseStatus) Valid() bool {
	switch b {
	case Available, Busy, BusyDND, Away, Offline:
		return true
	}
	return false
}

// Presence is what an agent shows; routing treats it only by its BaseStatus.
type Presence struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Text        string     `json:"text"`
	BaseStatus  BaseStatus `json:"baseStatus"`
	Description string     `json:"description"`
	Selectable  bool       `json:"selectable"`
	Builtin     bool       `json:"builtin"`
}

// InactiveID is the built-in presence the system sets after a missed notification.
const InactiveID = "inactive"

// Builtins returns the six built-in presences in contract order. A fresh slice each
// call keeps callers from mutating a shared table.
func Builtins() []Presence {
	ids := []string{"available", "busy", "busy_dnd", "away", InactiveID, "offline"}
	out := make([]Presence, len(ids))
	for i, id := range ids {
		out[i], _ = Builtin(id)
	}
	return out
}

// Builtin returns the built-in presence with id, if there is one. It is on the
// path of every event, so it builds only the one asked for.
func Builtin(id string) (Presence, bool) {
	mk := func(name string, b BaseStatus, sel bool) (Presence, bool) {
		return Presence{ID: id, Name: name, Text: name, BaseStatus: b, Selectable: sel, Builtin: true}, true
	}
	switch id {
	case "available":
		return mk("Available", Available, true)
	case "busy":
		return mk("Busy", Busy, true)
	case "busy_dnd":
		return mk("Do not disturb", BusyDND, true)
	case "away":
		return mk("Away", Away, true)
	case InactiveID:
		return mk("Inactive", Away, false)
	case "offline":
		return mk("Offline", Offline, true)
	}
	return Presence{}, false
}

// BuiltinOf returns "the built-in presence of base status b": the one whose id is b.
func BuiltinOf(b BaseStatus) Presence {
	p, _ := Builtin(string(b))
	return p
}

// Type is a CloudEvents type this service consumes or produces.
type Type string

const (
	// From agent clients.
	AgentLogin       Type = "agent.login"
	AgentLogout      Type = "agent.logout"
	AgentHeartbeat   Type = "agent.heartbeat"
	AgentPresenceSet Type = "agent.presence.set"
	// From routers.
	NotificationMissed   Type = "notification.missed"
	NotificationRejected Type = "notification.rejected"
	AgentCapacityChanged Type = "agent.capacity.changed"
	// Configuration.
	PresenceConfigured Type = "presence.configured"
	PresenceRemoved    Type = "presence.removed"
	AgentConfigured    Type = "agent.configured"
	AgentRemoved       Type = "agent.removed"
	SettingsConfigured Type = "settings.configured"
	// From the worker itself (extension of contract v1: subject <prefix>.in.system.<agentId>).
	SessionExpired Type = "session.expired"
	// Out.
	AgentStatusChanged Type = "agent.status.changed"
	EventRejected      Type = "event.rejected"
)

// Role is who publishes on a subject; subjects carry it so NATS permissions can
// restrict who may send what.
type Role string

const (
	RoleAgent  Role = "agent"
	RoleRouter Role = "router"
	RoleConfig Role = "config"
	RoleSystem Role = "system"
)

// Actor names who caused a status change, as published in agent.status.changed.
func (r Role) Actor() string {
	switch r {
	case RoleConfig:
		return "admin"
	case RoleRouter:
		return "router"
	case RoleAgent:
		return "agent"
	}
	return "system"
}

// RoleOf returns the only role whose subject may carry t, and false for a type that
// no input subject carries.
func RoleOf(t Type) (Role, bool) {
	switch t {
	case AgentLogin, AgentLogout, AgentHeartbeat, AgentPresenceSet:
		return RoleAgent, true
	case NotificationMissed, NotificationRejected, AgentCapacityChanged:
		return RoleRouter, true
	case PresenceConfigured, PresenceRemoved, AgentConfigured, AgentRemoved, SettingsConfigured:
		return RoleConfig, true
	case SessionExpired:
		return RoleSystem, true
	}
	return "", false
}

// InputTypes lists every type the worker consumes.
func InputTypes() []Type {
	return []Type{AgentLogin, AgentLogout, AgentHeartbeat, AgentPresenceSet,
		NotificationMissed, NotificationRejected, AgentCapacityChanged,
		PresenceConfigured, PresenceRemoved, AgentConfigured, AgentRemoved, SettingsConfigured,
		SessionExpired}
}

// --- data of the input types ---

// SessionData is the data of agent.login, agent.logout and agent.heartbeat.
type SessionData struct {
	SessionID string `json:"sessionId,omitempty"`
}

// DefaultSessionID is the session a login without sessionId opens.
const DefaultSessionID = "default"

// PresenceSetData is the data of agent.presence.set.
type PresenceSetData struct {
	PresenceID string `json:"presenceId"`
}

// NotificationData is the data of notification.missed and notification.rejected.
type NotificationData struct {
	WorkItemID   string `json:"workItemId,omitempty"`
	WorkstreamID string `json:"workstreamId,omitempty"`
}

// CapacityData is the data of agent.capacity.changed.
type CapacityData struct {
	Used  int `json:"used"`
	Total int `json:"total"`
}

// PresenceConfiguredData is the data of presence.configured; decoding fills the
// defaults (selectable true, description empty).
type PresenceConfiguredData struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Text        string     `json:"text"`
	BaseStatus  BaseStatus `json:"baseStatus"`
	Description string     `json:"description"`
	Selectable  bool       `json:"selectable"`
}

// PresenceRemovedData is the data of presence.removed.
type PresenceRemovedData struct {
	ID string `json:"id"`
}

// AgentConfiguredData is the data of agent.configured; a nil DefaultPresenceID clears it.
type AgentConfiguredData struct {
	AgentID           string  `json:"agentId"`
	DefaultPresenceID *string `json:"defaultPresenceId"`
}

// AgentRemovedData is the data of agent.removed.
type AgentRemovedData struct {
	AgentID string `json:"agentId"`
}

// Optional is a settings field that may be omitted (keep), null (restore the
// default) or set.
type Optional[T any] struct {
	Present bool // the field was in the JSON
	Null    bool // it was JSON null
	Value   T
}

// UnmarshalJSON is only called when the field is present.
func (o *Optional[T]) UnmarshalJSON(b []byte) error {
	o.Present = true
	if string(b) == "null" {
		o.Null = true
		return nil
	}
	return json.Unmarshal(b, &o.Value)
}

// SettingsConfiguredData is the data of settings.configured.
type SettingsConfiguredData struct {
	DefaultPresenceID     Optional[string] `json:"defaultPresenceId"`
	MissedNotification    Optional[bool]   `json:"missedNotification"`
	RejectedNotification  Optional[bool]   `json:"rejectedNotification"`
	SessionTTLSeconds     Optional[int]    `json:"sessionTtlSeconds"`
	ReconnectGraceSeconds Optional[int]    `json:"reconnectGraceSeconds"`
}

// SessionExpiredData is the data of the worker's own session.expired event: the
// session whose lease ran out and the lease deadline it had.
type SessionExpiredData struct {
	SessionID string    `json:"sessionId"`
	Deadline  time.Time `json:"deadline"`
}

// Event is one decoded, validated input event together with where it was stored.
type Event struct {
	ID      string
	Source  string
	Type    Type
	Subject string // CloudEvents subject attribute
	// AgentID is the agent the event is about: the subject token for agent-scoped
	// events, the agentId in the data for agent.configured / agent.removed, empty
	// for the other configuration events.
	AgentID string
	Role    Role
	// Stored is the time JetStream stored the message; all rules use it, never the
	// producer's time attribute.
	Stored time.Time
	// Seq is the input stream sequence.
	Seq uint64
	// TraceParent is the W3C traceparent extension, carried onto caused status events.
	TraceParent string
	// Data is one of the *Data types above, by Type.
	Data any
}

// Cause names the event a status change came from.
type Cause struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	Type   Type   `json:"type"`
}

// Previous is the status an agent held before a change.
type Previous struct {
	PresenceID string     `json:"presenceId"`
	BaseStatus BaseStatus `json:"baseStatus"`
	Since      time.Time  `json:"since"`
}

// Reason says why a status changed.
type Reason string

const (
	ReasonLogin                Reason = "login"
	ReasonReconnect            Reason = "reconnect"
	ReasonLogout               Reason = "logout"
	ReasonSessionExpired       Reason = "session_expired"
	ReasonManual               Reason = "manual"
	ReasonMissedNotification   Reason = "missed_notification"
	ReasonRejectedNotification Reason = "rejected_notification"
	ReasonCapacity             Reason = "capacity"
	ReasonPresenceUpdated      Reason = "presence_updated"
	ReasonPresenceRemoved      Reason = "presence_removed"
	ReasonAgentRemoved         Reason = "agent_removed"
)

// StatusChanged is the data of agent.status.changed and of a status query reply.
type StatusChanged struct {
	AgentID    string     `json:"agentId"`
	PresenceID string     `json:"presenceId"`
	Name       string     `json:"name"`
	Text       string     `json:"text"`
	BaseStatus BaseStatus `json:"baseStatus"`
	SignedIn   bool       `json:"signedIn"`
	Since      time.Time  `json:"since"`
	Reason     Reason     `json:"reason"`
	Actor      string     `json:"actor"`
	Previous   *Previous  `json:"previous"`
	Cause      Cause      `json:"cause"`
	Version    uint64     `json:"version"`
	// TraceParent travels as the CloudEvents traceparent extension, not in the data.
	TraceParent string `json:"-"`
}

// Code is an event.rejected code.
type Code string

const (
	CodeMalformed        Code = "malformed"
	CodeUnsupportedType  Code = "unsupported_type"
	CodeWrongSubject     Code = "wrong_subject"
	CodeInvalidData      Code = "invalid_data"
	CodeAgentMismatch    Code = "agent_mismatch"
	CodeUnknownPresence  Code = "unknown_presence"
	CodeNotSelectable    Code = "not_selectable"
	CodeBuiltinImmutable Code = "builtin_immutable"
	CodeNotSignedIn      Code = "not_signed_in"
	CodeTooLarge         Code = "too_large"
)

// Rejection is an input that will not be applied because it is invalid. It is an
// error so pure functions can return it; the worker turns it into event.rejected.
type Rejection struct {
	Code    Code
	Message string
}

func (r *Rejection) Error() string { return string(r.Code) + ": " + r.Message }

// Reject builds a Rejection.
func Reject(code Code, msg string) *Rejection { return &Rejection{Code: code, Message: msg} }

// Rejected is the data of event.rejected.
type Rejected struct {
	Code    Code          `json:"code"`
	Message string        `json:"message"`
	Subject string        `json:"subject"`
	Event   RejectedInput `json:"event"`
}

// RejectedInput is the rejected message as it arrived: headers and data (the
// payload as JSON when it parses, else a base64 string).
type RejectedInput struct {
	Headers map[string][]string `json:"headers"`
	Data    json.RawMessage     `json:"data"`
}
