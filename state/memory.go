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
// It keeps the same JSON the Redis store keeps and follows the same rules
// (dedupe pruning, outbox order, lease rounding), so the conformance suite holds
// for both; every value it returns is freshly decoded, never shared.
type Memory struct {
	mu         sync.Mutex
	agents     map[string]*memAgent
	partitions map[int][]byte
	config     []byte // nil: none saved
	configSeq  uint64
	leases     map[int]map[string]int64           // partition -> agent -> lease score
	members    map[int]map[string]map[string]bool // partition -> presence -> agents
}

type memAgent struct {
	state      []byte // JSON of handlers.Agent
	appliedSeq uint64
	seen       map[string]int64  // dedupe key -> DedupeAt unix ms
	outbox     map[string]uint64 // JSON of Outgoing -> version
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{
		agents:     map[string]*memAgent{},
		partitions: map[int][]byte{},
		leases:     map[int]map[string]int64{},
		members:    map[int]map[string]map[string]bool{},
	}
}

// Load implements Store.
func (m *Memory) Load(ctx context.Context, reqs []LoadRequest) ([]Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	for _, r := range reqs {
		if err := checkAgentID(r.AgentID); err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Snapshot, len(reqs))
	for i, r := range reqs {
		s := Snapshot{Agent: handlers.Agent{ID: r.AgentID}, Seen: map[string]bool{}}
		a := m.agents[r.AgentID]
		if a != nil {
			var err error
			if s.Agent, err = decodeAgent(a.state); err != nil {
				return nil, fmt.Errorf("load %s: %w", r.AgentID, err)
			}
			for _, k := range r.DedupeKeys {
				if _, ok := a.seen[k]; ok {
					s.Seen[k] = true
				}
			}
			members := make([]string, 0, len(a.outbox))
			for k := range a.outbox {
				members = append(members, k)
			}
			// ZSET order: by score, then by member bytes.
			slices.SortFunc(members, func(x, y string) int {
				return cmp.Or(cmp.Compare(a.outbox[x], a.outbox[y]), cmp.Compare(x, y))
			})
			for _, k := range members {
				o, err := decodeOutgoing([]byte(k))
				if err != nil {
					return nil, fmt.Errorf("load %s: %w", r.AgentID, err)
				}
				s.Outbox = append(s.Outbox, o)
			}
		}
		out[i] = s
	}
	return out, nil
}

// Commit implements Store.
func (m *Memory) Commit(ctx context.Context, commits []Commit, dedupeWindow time.Duration) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if err := checkCommits(commits, dedupeWindow); err != nil {
		return nil, err
	}
	// Encode everything first so a failure writes nothing.
	type enc struct {
		state  []byte
		outbox [][]byte
	}
	encs := make([]enc, len(commits))
	for i, c := range commits {
		b, err := json.Marshal(stored(c))
		if err != nil {
			return nil, fmt.Errorf("commit %s: encode state: %w", c.Agent.ID, err)
		}
		encs[i].state = b
		for _, o := range c.Outbox {
			ob, err := json.Marshal(o)
			if err != nil {
				return nil, fmt.Errorf("commit %s: encode outbox entry: %w", c.Agent.ID, err)
			}
			encs[i].outbox = append(encs[i].outbox, ob)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	applied := make([]bool, len(commits))
	for i, c := range commits {
		a := m.agents[c.Agent.ID]
		var cur uint64 // an agent never committed counts as appliedSeq 0
		if a != nil {
			cur = a.appliedSeq
		}
		if cur >= c.Agent.AppliedSeq {
			continue
		}
		if a == nil {
			a = &memAgent{seen: map[string]int64{}, outbox: map[string]uint64{}}
			m.agents[c.Agent.ID] = a
		}
		a.state, a.appliedSeq = encs[i].state, c.Agent.AppliedSeq
		if c.DedupeKey != "" {
			a.seen[c.DedupeKey] = dedupeScore(c.DedupeAt)
			var newest int64
			first := true
			for _, at := range a.seen {
				if first || at > newest {
					newest, first = at, false
				}
			}
			cutoff := newest - dedupeWindow.Milliseconds()
			for k, at := range a.seen {
				if at < cutoff {
					delete(a.seen, k)
				}
			}
		}
		for j, ob := range encs[i].outbox {
			a.outbox[string(ob)] = c.Outbox[j].Status.Version
		}
		applied[i] = true
	}
	return applied, nil
}

// AckOutbox implements Store.
func (m *Memory) AckOutbox(ctx context.Context, upTo map[string]uint64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ack outbox: %w", err)
	}
	for id := range upTo {
		if err := checkAgentID(id); err != nil {
			return fmt.Errorf("ack outbox: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, v := range upTo {
		a := m.agents[id]
		if a == nil {
			continue
		}
		for k, ver := range a.outbox {
			if ver <= v {
				delete(a.outbox, k)
			}
		}
	}
	return nil
}

// Agent implements Store.
func (m *Memory) Agent(ctx context.Context, agentID string) (handlers.Agent, error) {
	if err := ctx.Err(); err != nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, err)
	}
	if err := checkAgentID(agentID); err != nil {
		return handlers.Agent{}, fmt.Errorf("agent: %w", err)
	}
	m.mu.Lock()
	a := m.agents[agentID]
	var b []byte
	if a != nil {
		b = a.state
	}
	m.mu.Unlock()
	if b == nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, ErrNotFound)
	}
	ag, err := decodeAgent(b)
	if err != nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, err)
	}
	if !ag.HasStatus() {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, ErrNotFound)
	}
	return ag, nil
}

// LoadPartition implements Store.
func (m *Memory) LoadPartition(ctx context.Context, p int) (Partition, error) {
	if err := ctx.Err(); err != nil {
		return Partition{}, fmt.Errorf("load partition %d: %w", p, err)
	}
	m.mu.Lock()
	b := m.partitions[p]
	m.mu.Unlock()
	if b == nil {
		return newPartition(), nil
	}
	rec, err := decodePartition(b)
	if err != nil {
		return Partition{}, fmt.Errorf("load partition %d: %w", p, err)
	}
	return rec, nil
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
	if m.partitions[p] != nil {
		if cur, err = decodePartition(m.partitions[p]); err != nil {
			return false, fmt.Errorf("swap partition %d: %w", p, err)
		}
	}
	if cur.Marker != old.Marker || cur.Floor < old.Floor || cur.Config.Seq < old.Config.Seq {
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

// SaveConfig implements Store. The first configuration saved is always stored.
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

// Index implements Store.
func (m *Memory) Index(ctx context.Context, p int, entries []IndexEntry) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("index partition %d: %w", p, err)
	}
	for _, e := range entries {
		if err := checkAgentID(e.AgentID); err != nil {
			return fmt.Errorf("index partition %d: %w", p, err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range entries {
		if e.Deadline.IsZero() {
			delete(m.leases[p], e.AgentID)
		} else {
			if m.leases[p] == nil {
				m.leases[p] = map[string]int64{}
			}
			m.leases[p][e.AgentID] = leaseScore(e.Deadline)
		}
		if e.From != "" && e.From != e.To {
			if set := m.members[p][e.From]; set != nil {
				delete(set, e.AgentID)
				if len(set) == 0 {
					delete(m.members[p], e.From)
				}
			}
		}
		if e.To != "" {
			if m.members[p] == nil {
				m.members[p] = map[string]map[string]bool{}
			}
			if m.members[p][e.To] == nil {
				m.members[p][e.To] = map[string]bool{}
			}
			m.members[p][e.To][e.AgentID] = true
		}
	}
	return nil
}

// DueAgents implements Store. A limit <= 0 means no limit. Agents come in deadline
// order, ties by id.
func (m *Memory) DueAgents(ctx context.Context, p int, now time.Time, limit int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("due agents of partition %d: %w", p, err)
	}
	due := nowScore(now)
	m.mu.Lock()
	var ids []string
	for id, score := range m.leases[p] {
		if score <= due {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(x, y string) int {
		return cmp.Or(cmp.Compare(m.leases[p][x], m.leases[p][y]), cmp.Compare(x, y))
	})
	m.mu.Unlock()
	if limit > 0 && len(ids) > limit {
		ids = ids[:limit]
	}
	return ids, nil
}

// AgentsIn implements Store. The ids come sorted.
func (m *Memory) AgentsIn(ctx context.Context, p int, presenceID string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("agents of partition %d in %q: %w", p, presenceID, err)
	}
	m.mu.Lock()
	var ids []string
	for id := range m.members[p][presenceID] {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	slices.Sort(ids)
	return ids, nil
}

// Ping implements Store; memory is always reachable.
func (m *Memory) Ping(ctx context.Context) error { return nil }

// Close implements Store; it keeps the data.
func (m *Memory) Close() error { return nil }
