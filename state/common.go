package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
)

// Both stores share the rules below, so they behave identically.

// maxExact is the first integer a float64 (a Lua number, a ZSET score) cannot hold
// exactly next to its neighbour; sequences and versions must stay below it.
const maxExact = 1 << 53

// checkCommits validates a Commit call before anything is written.
func checkCommits(commits []Commit, index []IndexEntry) error {
	seen := make(map[string]bool, len(commits))
	for i, c := range commits {
		if err := checkAgentID(c.Agent.ID); err != nil {
			return fmt.Errorf("commit %d: %w", i, err)
		}
		if seen[c.Agent.ID] {
			return fmt.Errorf("commit %d: agent %s is committed twice in one call", i, c.Agent.ID)
		}
		seen[c.Agent.ID] = true
		if c.Agent.AppliedSeq == 0 {
			return fmt.Errorf("commit %d (agent %s): appliedSeq must be at least 1", i, c.Agent.ID)
		}
		if c.Agent.AppliedSeq >= maxExact || c.Agent.Version >= maxExact || c.Expect >= maxExact {
			return fmt.Errorf("commit %d (agent %s): appliedSeq %d / version %d / expect %d must stay below 2^53",
				i, c.Agent.ID, c.Agent.AppliedSeq, c.Agent.Version, c.Expect)
		}
	}
	for i, e := range index {
		if err := checkAgentID(e.AgentID); err != nil {
			return fmt.Errorf("index entry %d: %w", i, err)
		}
	}
	return nil
}

// sortedAgents validates the agent ids of a call that takes a sequence per agent
// (op names it in errors) and returns them sorted.
func sortedAgents(op string, seqs map[string]uint64) ([]string, error) {
	ids := make([]string, 0, len(seqs))
	for id := range seqs {
		if err := checkAgentID(id); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// stored is the state a commit writes: the tombstone for a removed agent.
func stored(c Commit) handlers.Agent {
	if c.Removed {
		return handlers.Agent{ID: c.Agent.ID, Version: c.Agent.Version, AppliedSeq: c.Agent.AppliedSeq}
	}
	return c.Agent
}

func decodeAgent(b []byte) (handlers.Agent, error) {
	var a handlers.Agent
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("decode agent state: %w", err)
	}
	return a, nil
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

// DecodePartition decodes a partition record (as stored, or as kept durably in
// JetStream); Config.Custom and Seen are never nil.
func DecodePartition(b []byte) (Partition, error) {
	var p Partition
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("decode partition record: %w", err)
	}
	normalizePartition(&p)
	return p, nil
}

// NewPartition is the record of a partition nothing was written for.
func NewPartition() Partition {
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

// mergeSeen returns the saved dedupe entries followed by those added since that
// are not among them, in time order.
func mergeSeen(saved, added []Seen) []Seen {
	if len(added) == 0 {
		return saved
	}
	out := append([]Seen(nil), saved...)
	for _, e := range added {
		if !slices.ContainsFunc(saved, func(s Seen) bool { return s.Key == e.Key && s.At.Equal(e.At) }) {
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b Seen) int { return a.At.Compare(b.At) })
	return out
}
