// Package state keeps agent state, the outbox of status changes still to publish,
// the configuration and the per-partition indexes. Store is the one interface; Redis
// and memory implement it, and one conformance suite runs against both.
package state

import (
	"context"
	"errors"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
)

// Outgoing is a status change recorded with the state that caused it and not yet
// acknowledged as published.
type Outgoing struct {
	// ID is the CloudEvents id the status event is published with (and its Nats-Msg-Id).
	ID     string               `json:"id"`
	Status events.StatusChanged `json:"status"`
	// TraceParent of the cause, carried onto the published event. Status.TraceParent
	// is not stored (it has no JSON name); stores fill it from this field on Load.
	TraceParent string `json:"traceparent,omitempty"`
}

// LoadRequest asks for one agent and whether some dedupe keys were already recorded for it.
type LoadRequest struct {
	AgentID    string
	DedupeKeys []string
}

// Snapshot is an agent as stored, with what Load was asked about it.
type Snapshot struct {
	// Agent is the stored state; an agent never seen has only ID set.
	Agent handlers.Agent
	// Seen holds the requested dedupe keys that are recorded and inside the window.
	Seen map[string]bool
	// Outbox holds the agent's unpublished status changes, in version order.
	Outbox []Outgoing
}

// Commit is one atomic step for one agent: its new state, the dedupe key of the
// event applied, and the status changes it caused.
type Commit struct {
	// Agent is the new state. Agent.AppliedSeq is the input sequence applied; the
	// commit only happens if the stored AppliedSeq is lower (an agent never
	// committed counts as 0, so AppliedSeq must be at least 1). AppliedSeq and the
	// versions must stay below 2^53 (Lua numbers and ZSET scores hold them exactly).
	Agent handlers.Agent
	// Removed erases the agent (read model included); only Agent.ID, Version and
	// AppliedSeq are kept, as a tombstone.
	Removed bool
	// DedupeKey, when not empty, is recorded at DedupeAt (which must then be set);
	// it is forgotten once older than the window passed to Commit, measured from
	// the newest DedupeAt recorded for the agent (no wall clock; millisecond
	// precision). Keys of an agent that gets no newer keys are kept.
	DedupeKey string
	DedupeAt  time.Time
	Outbox    []Outgoing
}

// IndexEntry moves an agent in its partition's indexes after a commit. Index
// updates are not atomic with the commit: they are repeated whenever the agent is
// seen again and readers check them against the agent's state.
type IndexEntry struct {
	AgentID string
	// Deadline is the agent's earliest lease deadline; zero removes it from the lease index.
	Deadline time.Time
	// From is the presence the agent was indexed under ("" for none); To the one it is in now.
	From, To string
}

// Partition is what one input partition keeps for itself: the configuration as of
// its own position in the input stream and the dedupe keys of configuration events.
type Partition struct {
	Config handlers.Config      `json:"config"`
	Seen   map[string]time.Time `json:"seen,omitempty"`
	// Floor is an input sequence below which every message of the partition was
	// handled; a new owner starts after it when no consumer is left to ask.
	Floor uint64 `json:"floor,omitempty"`
	// Marker names the lease that last took the partition over. A running owner
	// that finds another marker, or none, knows the store lost or rewound its data.
	Marker string `json:"marker,omitempty"`
}

// ErrNotFound is returned for an agent that has no status.
var ErrNotFound = errors.New("not found")

// Store is where presenced keeps its state.
type Store interface {
	// Load returns one Snapshot per request, in request order.
	Load(ctx context.Context, reqs []LoadRequest) ([]Snapshot, error)
	// Commit applies each commit atomically for its agent, in slice order, and
	// reports, per commit, whether it was applied (false: the stored AppliedSeq was
	// not lower, nothing written). An invalid commit fails the call before anything
	// is written; after any other error some commits may have been applied, and
	// repeating the call reports those as not applied.
	Commit(ctx context.Context, commits []Commit, dedupeWindow time.Duration) ([]bool, error)
	// AckOutbox forgets, per agent, the outbox entries with version <= the given one.
	AckOutbox(ctx context.Context, upTo map[string]uint64) error
	// Agent returns the agent's current state, ErrNotFound when it has no status.
	Agent(ctx context.Context, agentID string) (handlers.Agent, error)

	// LoadPartition returns the partition's record; a new partition gets
	// handlers.NewConfig(). Config.Custom and Seen are never nil.
	LoadPartition(ctx context.Context, p int) (Partition, error)
	// SwapPartition stores rec only if the stored record still has old's Marker and
	// a Floor and Config.Seq not lower than old's (no record counts as the zero
	// Partition), atomically, and reports whether it did.
	SwapPartition(ctx context.Context, p int, old, rec Partition) (bool, error)
	// Config returns the newest configuration any partition applied.
	Config(ctx context.Context) (handlers.Config, error)
	// SaveConfig stores cfg if its Seq is higher than the stored one (or none is
	// stored) and reports whether it did.
	SaveConfig(ctx context.Context, cfg handlers.Config) (bool, error)

	Index(ctx context.Context, p int, entries []IndexEntry) error
	// DueAgents returns up to limit agents of partition p whose earliest lease
	// deadline is at or before now, earliest first (ties by id); limit <= 0 means
	// no limit. Deadlines count in whole milliseconds rounded up, so an agent is
	// never due early (but up to 1ms late).
	DueAgents(ctx context.Context, p int, now time.Time, limit int) ([]string, error)
	// AgentsIn returns the agents of partition p indexed under presenceID, sorted.
	AgentsIn(ctx context.Context, p int, presenceID string) ([]string, error)

	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	Close() error
}
