package state

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
)

// Both stores share the encoding and rules below, so they behave identically:
// Memory keeps the same JSON that Redis keeps and decodes it on every read, which
// also makes every value it returns a deep copy.

// maxExact is the first integer a float64 (a Lua number, a ZSET score) cannot hold
// exactly next to its neighbour; sequences and versions must stay below it.
const maxExact = 1 << 53

// checkCommits validates a Commit call before anything is written.
func checkCommits(commits []Commit, window time.Duration) error {
	if window < 0 {
		return fmt.Errorf("commit: negative dedupe window %v", window)
	}
	for i, c := range commits {
		if err := checkAgentID(c.Agent.ID); err != nil {
			return fmt.Errorf("commit %d: %w", i, err)
		}
		if c.Agent.AppliedSeq >= maxExact || c.Agent.Version >= maxExact {
			return fmt.Errorf("commit %d (agent %s): appliedSeq %d / version %d must stay below 2^53",
				i, c.Agent.ID, c.Agent.AppliedSeq, c.Agent.Version)
		}
		if c.DedupeKey != "" && c.DedupeAt.IsZero() {
			return fmt.Errorf("commit %d (agent %s): dedupe key %q without DedupeAt", i, c.Agent.ID, c.DedupeKey)
		}
		for _, o := range c.Outbox {
			if o.Status.Version >= maxExact {
				return fmt.Errorf("commit %d (agent %s): outbox version %d must stay below 2^53", i, c.Agent.ID, o.Status.Version)
			}
		}
	}
	return nil
}

// stored is the state a commit writes: the tombstone for a removed agent.
func stored(c Commit) handlers.Agent {
	if c.Removed {
		return handlers.Agent{ID: c.Agent.ID, Version: c.Agent.Version, AppliedSeq: c.Agent.AppliedSeq}
	}
	return c.Agent
}

// readModel returns the fields of the public read-model hash, in the order the
// commit script takes them, or nil when the agent has no read model.
func readModel(a handlers.Agent) []string {
	if !a.HasStatus() {
		return nil
	}
	return []string{
		"presenceId", a.PresenceID,
		"name", a.Name,
		"text", a.Text,
		"baseStatus", string(a.BaseStatus),
		"signedIn", strconv.FormatBool(a.SignedIn),
		"since", a.Since.UTC().Format(time.RFC3339Nano),
		"version", strconv.FormatUint(a.Version, 10),
	}
}

func decodeAgent(b []byte) (handlers.Agent, error) {
	var a handlers.Agent
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("decode agent state: %w", err)
	}
	return a, nil
}

func decodeOutgoing(b []byte) (Outgoing, error) {
	var o Outgoing
	if err := json.Unmarshal(b, &o); err != nil {
		return o, fmt.Errorf("decode outbox entry: %w", err)
	}
	// Status.TraceParent is not part of the JSON; it is the entry's TraceParent.
	if o.Status.TraceParent == "" {
		o.Status.TraceParent = o.TraceParent
	}
	return o, nil
}

// decodeConfig decodes a stored configuration; Custom is never nil so callers can
// add to it.
func decodeConfig(b []byte) (handlers.Config, error) {
	var c handlers.Config
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("decode config: %w", err)
	}
	if c.Custom == nil {
		c.Custom = map[string]events.Presence{}
	}
	return c, nil
}

// decodePartition decodes a stored partition record; Config.Custom and Seen are
// never nil.
func decodePartition(b []byte) (Partition, error) {
	var p Partition
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("decode partition record: %w", err)
	}
	normalizePartition(&p)
	return p, nil
}

func newPartition() Partition {
	p := Partition{Config: handlers.NewConfig()}
	normalizePartition(&p)
	return p
}

func normalizePartition(p *Partition) {
	if p.Config.Custom == nil {
		p.Config.Custom = map[string]events.Presence{}
	}
	if p.Seen == nil {
		p.Seen = map[string]time.Time{}
	}
}

// dedupeScore is the ZSET score of a dedupe key recorded at t.
func dedupeScore(t time.Time) int64 { return t.UnixMilli() }

// leaseScore is the ZSET score of a lease deadline: rounded up to the millisecond,
// so an agent is never due before its deadline.
func leaseScore(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.After(time.UnixMilli(ms)) {
		ms++
	}
	return ms
}

// nowScore is the highest lease score due at now: rounded down to the
// millisecond (UnixMilli floors).
func nowScore(t time.Time) int64 { return t.UnixMilli() }
