// Package state keeps agent state, the outbox of status changes still to publish,
// the configuration and the per-partition indexes. Store is the one interface; Redis
// and memory implement it, and one conformance suite runs against both.
//
// A partition owner keeps the agents it works on in memory and writes each change
// with a compare-and-set on the input sequence it last wrote, so the store never
// has to be read on the hot path and a store that lost or rewound data (or a
// second writer) shows up as a refused commit.
package state

import (
	"context"
	"errors"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
)

// Outgoing is a status change recorded with the state that caused it and not yet
// known to be published.
type Outgoing struct {
	// ID is the CloudEvents id the status event is published with (and its Nats-Msg-Id).
	ID     string               `json:"id"`
	Status events.StatusChanged `json:"status"`
	// TraceParent of the cause, carried onto the published event (Status.TraceParent
	// has no JSON name; stores fill it from this field on Load).
	TraceParent string `json:"traceparent,omitempty"`
	// Data, when set, is events.MarshalStatus(&Status), marshalled once when the
	// change is made and published as it is (the outbox stores the fields).
	Data []byte `json:"-"`
}

// SeenKey identifies one applied event for deduplication: a hash of its source
// and id (events.DedupeKey), so every entry has the same small size.
type SeenKey [16]byte

// Seen is one dedupe entry: an applied event and the time JetStream stored it.
type Seen struct {
	Key SeenKey
	At  time.Time
}

// Record is an agent as stored.
type Record struct {
	// Agent is the stored state; an agent never committed has only ID set
	// (AppliedSeq 0).
	Agent handlers.Agent
	// Outbox holds the status changes of the agent's last commit, in version
	// order, until DropOutbox says they were published; HasOutbox says one is
	// stored (it may hold dedupe entries only).
	Outbox    []Outgoing
	HasOutbox bool
	// Seen holds the dedupe entries saved by SaveSeen (which expire at the
	// time it was given) and those of the stored outbox, oldest first.
	Seen []Seen
}

// Commit is one atomic step for one agent.
type Commit struct {
	// Agent is the new state; Agent.AppliedSeq (at least 1) is the input
	// sequence it was applied up to. AppliedSeq and versions stay below 2^53.
	Agent handlers.Agent
	// Expect is the AppliedSeq the store must hold for the commit to apply (0:
	// nothing stored). Anything else means the store lost or rewound data, or
	// another writer got there first, and nothing is written.
	Expect uint64
	// Restore writes the commit whenever the stored AppliedSeq is lower than
	// Agent.AppliedSeq, whatever Expect says: a rebuild restoring durable copies.
	Restore bool
	// Removed erases the agent (read model included); only Agent.ID, Version and
	// AppliedSeq are kept, as a tombstone.
	Removed bool
	// Before is the stored state the writer holds, nil if it does not know it:
	// only what differs from it is written.
	Before *handlers.Agent
	// Outbox and Seen, when either is not empty, replace the agent's stored
	// outbox: the status changes of this step, with the dedupe entries added
	// since SaveSeen last saved the agent's (so the entry of every applied event
	// is stored with it, not only at SaveSeen). DropOutbox deletes the stored
	// outbox when this commit writes none.
	Outbox     []Outgoing
	Seen       []Seen
	DropOutbox bool
}

// IndexEntry moves an agent in its partition's indexes. Index updates are not
// atomic with the commit: they are written with it, repeated when the agent is
// committed again (a lease entry only when it must move: the worker lets it lag
// behind a later deadline), and readers check them against the agent's state.
type IndexEntry struct {
	AgentID string
	// Lease is true when the entry moves the agent in the lease index: Deadline
	// is then its earliest lease deadline, zero to remove it.
	Lease    bool
	Deadline time.Time
	// From is the index the agent leaves ("" for none); To the one it is in now.
	From, To string
}

// Partition is what one input partition keeps for itself besides its agents.
type Partition struct {
	// Config is the configuration as of Seq.
	Config handlers.Config `json:"config"`
	// Seen holds the dedupe keys of configuration events inside the window.
	Seen map[string]time.Time `json:"seen,omitempty"`
	// Seq is the checkpoint: every input of the partition up to it is applied,
	// published and acknowledged, and its agents' durable copies hold it.
	Seq uint64 `json:"seq,omitempty"`
	// Marker names the lease that last took the partition over. A running owner
	// that finds another marker, or none, knows the store lost or rewound its
	// data, or that another owner took over.
	Marker string `json:"marker,omitempty"`
}

// ErrNotFound is returned for an agent that has no status.
var ErrNotFound = errors.New("not found")

// Store is where presenced keeps its state.
type Store interface {
	// Load returns one Record per agent id, in order.
	Load(ctx context.Context, ids []string) ([]Record, error)
	// Commit applies each commit atomically for its agent, and reports per commit
	// whether it was applied. It also writes the index entries of partition p, in
	// the same round trip but not atomically with the commits. An invalid commit
	// fails the call before anything is written.
	Commit(ctx context.Context, p int, commits []Commit, index []IndexEntry) ([]bool, error)
	// DropOutbox forgets the outboxes whose changes are published (with the
	// dedupe entries they hold: save those first): published maps an agent to
	// the AppliedSeq of the commit that stored the outbox, and an agent stored at
	// any other sequence keeps its outbox, which is then not the one published.
	DropOutbox(ctx context.Context, published map[string]uint64) error
	// SaveSeen replaces each agent's dedupe entries; they expire at expire[id]
	// (the newest entry's time plus the window), so a quiet agent keeps none.
	SaveSeen(ctx context.Context, seen map[string][]Seen, expire map[string]time.Time) error
	// Verify returns the agents whose stored AppliedSeq is below the given one:
	// the store lost commits. A higher one is a later commit (a checkpoint
	// checks while its partition commits on); one its owner did not make fails
	// the owner's next compare-and-set.
	Verify(ctx context.Context, seqs map[string]uint64) ([]string, error)
	// Agent returns the agent's current state, ErrNotFound when it has no status.
	Agent(ctx context.Context, agentID string) (handlers.Agent, error)

	// LoadPartition returns the partition's record and whether one is stored; a
	// missing record is handlers.NewConfig() with no marker. Config.Custom and
	// Seen are never nil.
	LoadPartition(ctx context.Context, p int) (Partition, bool, error)
	// SwapPartition stores rec only if the stored record still has old's Marker
	// and Seq (no record counts as the zero Partition), atomically, and reports
	// whether it did.
	SwapPartition(ctx context.Context, p int, old, rec Partition) (bool, error)
	// Config returns the newest configuration any partition applied.
	Config(ctx context.Context) (handlers.Config, error)
	// SaveConfig stores cfg if its Seq is higher than the stored one (or none is
	// stored) and reports whether it did.
	SaveConfig(ctx context.Context, cfg handlers.Config) (bool, error)

	// DueAgents returns up to limit agents of partition p whose indexed lease
	// deadline is at or before now, earliest first (ties by id); limit <= 0 means
	// no limit. Deadlines count in whole milliseconds rounded up, so an indexed
	// deadline never comes due early (but up to 1ms late); the index itself may
	// hold a deadline earlier than the agent's, which the caller checks.
	DueAgents(ctx context.Context, p int, now time.Time, limit int) ([]string, error)
	// AgentsIn returns the agents of partition p in index name, sorted.
	AgentsIn(ctx context.Context, p int, name string) ([]string, error)

	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	Close() error
}
