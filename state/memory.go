package state

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/presenced/presenced/handlers"
)

// Memory is a Store in process memory, for running without Redis and for tests.
// It keeps what the Redis store keeps, encoded the same way, and follows the same
// rules (compare-and-set, outbox replacement, lease rounding, expiring dedupe
// entries), so the conformance suite holds for both; every value it returns is
// freshly decoded, never shared.
type Memory struct {
	mu         sync.Mutex
	agents     map[string]*memAgent
	partitions map[int][]byte
	config     []byte // nil: none saved
	configSeq  uint64
	leases     map[int]map[string]int64           // partition -> agent -> lease score
	members    map[int]map[string]map[string]bool // partition -> index name -> agents
	now        func() time.Time
}

type memAgent struct {
	state      []byte // JSON of handlers.Agent
	appliedSeq uint64
	outbox     []byte
	seen       []byte
	seenExpire time.Time
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{
		agents:     map[string]*memAgent{},
		partitions: map[int][]byte{},
		leases:     map[int]map[string]int64{},
		members:    map[int]map[string]map[string]bool{},
		now:        time.Now,
	}
}

func (m *Memory) agent(id string) *memAgent {
	a := m.agents[id]
	if a == nil {
		a = &memAgent{}
		m.agents[id] = a
	}
	return a
}

// Load implements Store.
func (m *Memory) Load(ctx context.Context, ids []string) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	for _, id := range ids {
		if err := checkAgentID(id); err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Record, len(ids))
	for i, id := range ids {
		rec := Record{Agent: handlers.Agent{ID: id}}
		if a := m.agents[id]; a != nil {
			var err error
			if a.state != nil {
				if rec.Agent, err = decodeAgent(a.state); err != nil {
					return nil, fmt.Errorf("load %s: %w", id, err)
				}
			}
			if a.seen != nil && a.seenExpire.After(m.now()) {
				if rec.Seen, err = DecodeSeen(a.seen); err != nil {
					return nil, fmt.Errorf("load %s: %w", id, err)
				}
			}
			if a.outbox != nil {
				rec.HasOutbox = true
				var added []Seen
				if rec.Outbox, added, err = decodeOutbox(a.outbox); err != nil {
					return nil, fmt.Errorf("load %s: %w", id, err)
				}
				rec.Seen = mergeSeen(rec.Seen, added)
			}
		}
		out[i] = rec
	}
	return out, nil
}

// Commit implements Store.
func (m *Memory) Commit(ctx context.Context, p int, commits []Commit, index []IndexEntry) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if err := checkCommits(commits, index); err != nil {
		return nil, err
	}
	type prepared struct {
		state, outbox []byte
	}
	prep := make([]prepared, len(commits))
	for i, c := range commits {
		b, err := json.Marshal(stored(c))
		if err != nil {
			return nil, fmt.Errorf("commit %s: encode state: %w", c.Agent.ID, err)
		}
		prep[i] = prepared{b, encodeOutbox(c.Outbox, c.Seen)}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	committed := make(map[string]bool, len(commits))
	applied := make([]bool, len(commits))
	for i, c := range commits {
		a := m.agent(c.Agent.ID)
		committed[c.Agent.ID] = true
		ok := a.appliedSeq == c.Expect
		if c.Restore {
			ok = a.appliedSeq < c.Agent.AppliedSeq
		}
		if !ok {
			continue
		}
		a.state, a.appliedSeq = prep[i].state, c.Agent.AppliedSeq
		switch {
		case len(prep[i].outbox) > 0:
			a.outbox = prep[i].outbox
		case c.DropOutbox || c.Restore || c.Removed:
			a.outbox = nil
		}
		applied[i] = true
	}
	for _, e := range index {
		m.index(p, e)
	}
	return applied, nil
}

func (m *Memory) index(p int, e IndexEntry) {
	if e.Lease {
		if m.leases[p] == nil {
			m.leases[p] = map[string]int64{}
		}
		if e.Deadline.IsZero() {
			delete(m.leases[p], e.AgentID)
		} else {
			m.leases[p][e.AgentID] = leaseScore(e.Deadline)
		}
	}
	if m.members[p] == nil {
		m.members[p] = map[string]map[string]bool{}
	}
	if e.From != "" && e.From != e.To {
		delete(m.members[p][e.From], e.AgentID)
	}
	if e.To != "" {
		if m.members[p][e.To] == nil {
			m.members[p][e.To] = map[string]bool{}
		}
		m.members[p][e.To][e.AgentID] = true
	}
}

// DropOutbox implements Store.
func (m *Memory) DropOutbox(ctx context.Context, published map[string]uint64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("drop outbox: %w", err)
	}
	if _, err := sortedAgents("drop outbox", published); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, seq := range published {
		if a := m.agents[id]; a != nil && a.appliedSeq == seq {
			a.outbox = nil
		}
	}
	return nil
}

// SaveSeen implements Store.
func (m *Memory) SaveSeen(ctx context.Context, seen map[string][]Seen, expire map[string]time.Time) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save dedupe entries: %w", err)
	}
	for id := range seen {
		if err := checkAgentID(id); err != nil {
			return fmt.Errorf("save dedupe entries: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, entries := range seen {
		a := m.agent(id)
		if len(entries) == 0 || !expire[id].After(m.now()) {
			a.seen, a.seenExpire = nil, time.Time{}
			continue
		}
		a.seen, a.seenExpire = EncodeSeen(entries), expire[id]
	}
	return nil
}

// Verify implements Store.
func (m *Memory) Verify(ctx context.Context, seqs map[string]uint64) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if _, err := sortedAgents("verify", seqs); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var bad []string
	for id, want := range seqs {
		var have uint64
		if a := m.agents[id]; a != nil {
			have = a.appliedSeq
		}
		if have < want {
			bad = append(bad, id)
		}
	}
	slices.Sort(bad)
	return bad, nil
}

// Agent implements Store.
func (m *Memory) Agent(ctx context.Context, agentID string) (handlers.Agent, error) {
	if err := ctx.Err(); err != nil {
		return handlers.Agent{}, fmt.Errorf("agent: %w", err)
	}
	if err := checkAgentID(agentID); err != nil {
		return handlers.Agent{}, fmt.Errorf("agent: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	a := m.agents[agentID]
	if a == nil || a.state == nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, ErrNotFound)
	}
	ag, err := decodeAgent(a.state)
	if err != nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, err)
	}
	if !ag.HasStatus() {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, ErrNotFound)
	}
	return ag, nil
}

// LoadPartition implements Store.
func (m *Memory) LoadPartition(ctx context.Context, p int) (Partition, bool, error) {
	if err := ctx.Err(); err != nil {
		return Partition{}, false, fmt.Errorf("load partition %d: %w", p, err)
	}
	m.mu.Lock()
	b, ok := m.partitions[p]
	m.mu.Unlock()
	if !ok {
		return NewPartition(), false, nil
	}
	rec, err := DecodePartition(b)
	if err != nil {
		return Partition{}, false, fmt.Errorf("load partition %d: %w", p, err)
	}
	return rec, true, nil
}

// SwapPartition implements Store.
func (m *Memory) SwapPartition(ctx context.Context, p int, old, rec Partition) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("swap partition %d: %w", p, err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("swap partition %d: encode: %w", p, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var cur Partition
	if raw, ok := m.partitions[p]; ok {
		if cur, err = DecodePartition(raw); err != nil {
			return false, fmt.Errorf("swap partition %d: %w", p, err)
		}
	}
	if cur.Marker != old.Marker || cur.Seq != old.Seq {
		return false, nil
	}
	m.partitions[p] = b
	return true, nil
}

// Config implements Store.
func (m *Memory) Config(ctx context.Context) (handlers.Config, error) {
	if err := ctx.Err(); err != nil {
		return handlers.Config{}, fmt.Errorf("config: %w", err)
	}
	m.mu.Lock()
	b := m.config
	m.mu.Unlock()
	if b == nil {
		return handlers.NewConfig(), nil
	}
	c, err := decodeConfig(b)
	if err != nil {
		return handlers.Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// SaveConfig implements Store.
func (m *Memory) SaveConfig(ctx context.Context, cfg handlers.Config) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("save config: %w", err)
	}
	if cfg.Seq >= maxExact {
		return false, fmt.Errorf("save config: seq %d must stay below 2^53", cfg.Seq)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return false, fmt.Errorf("save config: encode: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.config != nil && m.configSeq >= cfg.Seq {
		return false, nil
	}
	m.config, m.configSeq = b, cfg.Seq
	return true, nil
}

// DueAgents implements Store.
func (m *Memory) DueAgents(ctx context.Context, p int, now time.Time, limit int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("due agents of partition %d: %w", p, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	max := nowScore(now)
	var ids []string
	for id, score := range m.leases[p] {
		if score <= max {
			ids = append(ids, id)
		}
	}
	leases := m.leases[p]
	slices.SortFunc(ids, func(a, b string) int { return cmp.Or(cmp.Compare(leases[a], leases[b]), cmp.Compare(a, b)) })
	if limit > 0 && len(ids) > limit {
		ids = ids[:limit]
	}
	if len(ids) == 0 {
		return nil, nil
	}
	return ids, nil
}

// AgentsIn implements Store.
func (m *Memory) AgentsIn(ctx context.Context, p int, name string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("agents of partition %d in %q: %w", p, name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id := range m.members[p][name] {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// Ping implements Store.
func (m *Memory) Ping(ctx context.Context) error { return nil }

// Close implements Store.
func (m *Memory) Close() error { return nil }
