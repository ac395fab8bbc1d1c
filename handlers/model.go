// Package handlers holds the presence rules as pure functions: (configuration,
// agent state, event) in, (new agent state, status changes) out. Nothing here talks
// to NATS or Redis.
package handlers

import (
	"time"

	"github.com/presenced/presenced/events"
)

// Settings are the organisation settings of settings.configured.
type Settings struct {
	DefaultPresenceID    string        `json:"defaultPresenceId,omitempty"`
	MissedNotification   bool          `json:"missedNotification"`
	RejectedNotification bool          `json:"rejectedNotification"`
	SessionTTL           time.Duration `json:"sessionTtl"`
	ReconnectGrace       time.Duration `json:"reconnectGrace"`
}

// DefaultSettings are the contract's defaults.
func DefaultSettings() Settings {
	return Settings{
		MissedNotification: true,
		SessionTTL:         90 * time.Second,
		ReconnectGrace:     150 * time.Second,
	}
}

// Config is the organisation configuration every agent event is judged with.
type Config struct {
	// Seq is the input stream sequence of the last configuration event applied.
	Seq      uint64                     `json:"seq"`
	Custom   map[string]events.Presence `json:"custom,omitempty"`
	Settings Settings                   `json:"settings"`
}

// NewConfig is the configuration before any configuration event.
func NewConfig() Config {
	return Config{Custom: map[string]events.Presence{}, Settings: DefaultSettings()}
}

// Presence looks a presence up among built-ins and custom ones.
func (c Config) Presence(id string) (events.Presence, bool) {
	if p, ok := events.Builtin(id); ok {
		return p, true
	}
	p, ok := c.Custom[id]
	return p, ok
}

// Session is one live signed-in client of an agent.
type Session struct {
	ID string `json:"id"`
	// Deadline is when the lease runs out; zero means it never does (TTL 0).
	Deadline time.Time `json:"deadline,omitzero"`
}

// Capacity is the last agent.capacity.changed of an agent.
type Capacity struct {
	Used  int `json:"used"`
	Total int `json:"total"`
}

// Origin records how the current presence was set; the capacity rule needs it to
// tell an automatic busy_dnd from a sticky one.
type Origin string

const (
	OriginManual   Origin = "manual" // chosen by hand, or a default (counts as chosen)
	OriginCapacity Origin = "capacity"
	OriginRejected Origin = "rejected"
	OriginSystem   Origin = "system" // inactive, offline, restored, moved by config
)

// Held is the presence an agent held when its last session expired, kept for the
// reconnect grace window.
type Held struct {
	PresenceID string            `json:"presenceId"`
	BaseStatus events.BaseStatus `json:"baseStatus"`
	Origin     Origin            `json:"origin"`
	ExpiredAt  time.Time         `json:"expiredAt"`
}

// Agent is everything the worker keeps about one agent.
type Agent struct {
	ID string `json:"id"`
	// Version of the last published status; 0 before the first.
	Version uint64 `json:"version"`
	// AppliedSeq is the input stream sequence of the last event applied to this
	// agent: an event at or below it is a redelivery and is not applied again.
	AppliedSeq uint64 `json:"appliedSeq"`

	PresenceID string            `json:"presenceId,omitempty"`
	Name       string            `json:"name,omitempty"`
	Text       string            `json:"text,omitempty"`
	BaseStatus events.BaseStatus `json:"baseStatus,omitempty"`
	SignedIn   bool              `json:"signedIn"`
	Since      time.Time         `json:"since,omitzero"`
	Origin     Origin            `json:"origin,omitempty"`
	// Reason and Actor of the last published status, for status queries.
	Reason events.Reason `json:"reason,omitempty"`
	Actor  string        `json:"actor,omitempty"`

	Sessions          []Session `json:"sessions,omitempty"` // sorted by ID
	DefaultPresenceID string    `json:"defaultPresenceId,omitempty"`
	Capacity          *Capacity `json:"capacity,omitempty"`
	Held              *Held     `json:"held,omitempty"`
}

// HasStatus reports whether a status was ever published for the agent (and it was
// not removed since).
func (a Agent) HasStatus() bool { return a.PresenceID != "" }

// Status is the agent's current status as the query subject answers it.
func (a Agent) Status() events.StatusChanged {
	return events.StatusChanged{
		AgentID: a.ID, PresenceID: a.PresenceID, Name: a.Name, Text: a.Text,
		BaseStatus: a.BaseStatus, SignedIn: a.SignedIn, Since: a.Since, Version: a.Version,
		Reason: a.Reason, Actor: a.Actor,
	}
}

// NextDeadline is the earliest lease deadline of the agent's sessions, zero if none expires.
func (a Agent) NextDeadline() time.Time {
	var d time.Time
	for _, s := range a.Sessions {
		if !s.Deadline.IsZero() && (d.IsZero() || s.Deadline.Before(d)) {
			d = s.Deadline
		}
	}
	return d
}
