package state

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/handlers"
)

var (
	//go:embed lua/commit.lua
	commitSource string
	//go:embed lua/save_config.lua
	saveConfigSource string
	//go:embed lua/swap_partition.lua
	swapPartitionSource string

	commitScript        = redis.NewScript(commitSource)
	saveConfigScript    = redis.NewScript(saveConfigSource)
	swapPartitionScript = redis.NewScript(swapPartitionSource)
)

// RedisConfig configures the Redis store.
type RedisConfig struct {
	// Prefix starts every key; default "presence". It must not contain braces.
	Prefix string
}

// Redis is a Store in Redis (standalone, Sentinel or Cluster). The key layout is
// described by Keys; every atomic step is one Lua script over keys of one hash
// tag, and the per-agent work of one call goes out as one pipeline.
type Redis struct {
	client redis.UniversalClient
	keys   Keys
	err    error // a bad configuration, returned by every call
}

var _ Store = (*Redis)(nil)

// NewRedis returns a store on client. The store owns the client: Close closes it.
// A bad RedisConfig is reported by every call, Ping included.
func NewRedis(client redis.UniversalClient, cfg RedisConfig) *Redis {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	return &Redis{client: client, keys: Keys{Prefix: cfg.Prefix}, err: checkPrefix(cfg.Prefix)}
}

// Keys returns the key names the store uses.
func (r *Redis) Keys() Keys { return r.keys }

// Load implements Store: one pipeline for all requests.
func (r *Redis) Load(ctx context.Context, reqs []LoadRequest) ([]Snapshot, error) {
	if r.err != nil {
		return nil, fmt.Errorf("load: %w", r.err)
	}
	for _, q := range reqs {
		if err := checkAgentID(q.AgentID); err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
	}
	if len(reqs) == 0 {
		return []Snapshot{}, nil
	}
	type cmds struct {
		state  *redis.StringCmd
		seen   *redis.Cmd
		outbox *redis.StringSliceCmd
	}
	cs := make([]cmds, len(reqs))
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range reqs {
			cs[i].state = p.Get(ctx, r.keys.State(q.AgentID))
			if len(q.DedupeKeys) > 0 {
				args := make([]any, 0, 2+len(q.DedupeKeys))
				args = append(args, "ZMSCORE", r.keys.Seen(q.AgentID))
				for _, k := range q.DedupeKeys {
					args = append(args, k)
				}
				cs[i].seen = p.Do(ctx, args...)
			}
			cs[i].outbox = p.ZRange(ctx, r.keys.Outbox(q.AgentID), 0, -1)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("load %d agents: %w", len(reqs), err)
	}
	out := make([]Snapshot, len(reqs))
	for i, q := range reqs {
		s := Snapshot{Agent: handlers.Agent{ID: q.AgentID}, Seen: map[string]bool{}}
		b, err := cs[i].state.Bytes()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return nil, fmt.Errorf("load %s: %w", q.AgentID, err)
		default:
			if s.Agent, err = decodeAgent(b); err != nil {
				return nil, fmt.Errorf("load %s: %w", q.AgentID, err)
			}
		}
		if cs[i].seen != nil {
			scores, err := cs[i].seen.Slice()
			if err != nil {
				return nil, fmt.Errorf("load %s: dedupe keys: %w", q.AgentID, err)
			}
			for j, sc := range scores {
				if sc != nil && j < len(q.DedupeKeys) {
					s.Seen[q.DedupeKeys[j]] = true
				}
			}
		}
		members, err := cs[i].outbox.Result()
		if err != nil {
			return nil, fmt.Errorf("load %s: outbox: %w", q.AgentID, err)
		}
		for _, m := range members {
			o, err := decodeOutgoing([]byte(m))
			if err != nil {
				return nil, fmt.Errorf("load %s: %w", q.AgentID, err)
			}
			s.Outbox = append(s.Outbox, o)
		}
		out[i] = s
	}
	return out, nil
}

// Commit implements Store: one commit script per commit, all in one pipeline,
// run in order. After an error some commits may have been applied; repeating the
// call then reports them as not applied (their AppliedSeq is stored already).
func (r *Redis) Commit(ctx context.Context, commits []Commit, dedupeWindow time.Duration) ([]bool, error) {
	if r.err != nil {
		return nil, fmt.Errorf("commit: %w", r.err)
	}
	if err := checkCommits(commits, dedupeWindow); err != nil {
		return nil, err
	}
	calls := make([]scriptCall, len(commits))
	for i, c := range commits {
		st := stored(c)
		b, err := json.Marshal(st)
		if err != nil {
			return nil, fmt.Errorf("commit %s: encode state: %w", c.Agent.ID, err)
		}
		id := c.Agent.ID
		args := make([]any, 0, 14+2*len(c.Outbox))
		args = append(args, strconv.FormatUint(st.AppliedSeq, 10), b)
		if rm := readModel(st); rm != nil {
			args = append(args, "1")
			for j := 1; j < len(rm); j += 2 {
				args = append(args, rm[j])
			}
		} else {
			args = append(args, "0", "", "", "", "", "", "", "")
		}
		var at int64
		if c.DedupeKey != "" {
			at = dedupeScore(c.DedupeAt)
		}
		args = append(args, c.DedupeKey, strconv.FormatInt(at, 10), strconv.FormatInt(dedupeWindow.Milliseconds(), 10),
			strconv.Itoa(len(c.Outbox)))
		for _, o := range c.Outbox {
			ob, err := json.Marshal(o)
			if err != nil {
				return nil, fmt.Errorf("commit %s: encode outbox entry: %w", id, err)
			}
			args = append(args, strconv.FormatUint(o.Status.Version, 10), ob)
		}
		calls[i] = scriptCall{
			keys: []string{r.keys.State(id), r.keys.Agent(id), r.keys.Seen(id), r.keys.Outbox(id)},
			args: args,
		}
	}
	cmds, err := r.runScripts(ctx, commitScript, calls)
	if err != nil {
		return nil, fmt.Errorf("commit %d agents: %w", len(commits), err)
	}
	applied := make([]bool, len(commits))
	for i, cmd := range cmds {
		n, err := cmd.Int()
		if err != nil {
			return nil, fmt.Errorf("commit %s: %w", commits[i].Agent.ID, err)
		}
		applied[i] = n == 1
	}
	return applied, nil
}

// AckOutbox implements Store: one pipeline for all agents.
func (r *Redis) AckOutbox(ctx context.Context, upTo map[string]uint64) error {
	if r.err != nil {
		return fmt.Errorf("ack outbox: %w", r.err)
	}
	for id := range upTo {
		if err := checkAgentID(id); err != nil {
			return fmt.Errorf("ack outbox: %w", err)
		}
	}
	if len(upTo) == 0 {
		return nil
	}
	if _, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for id, v := range upTo {
			p.ZRemRangeByScore(ctx, r.keys.Outbox(id), "-inf", strconv.FormatUint(v, 10))
		}
		return nil
	}); err != nil {
		return fmt.Errorf("ack outbox of %d agents: %w", len(upTo), err)
	}
	return nil
}

// Agent implements Store.
func (r *Redis) Agent(ctx context.Context, agentID string) (handlers.Agent, error) {
	if r.err != nil {
		return handlers.Agent{}, fmt.Errorf("agent: %w", r.err)
	}
	if err := checkAgentID(agentID); err != nil {
		return handlers.Agent{}, fmt.Errorf("agent: %w", err)
	}
	b, err := r.client.Get(ctx, r.keys.State(agentID)).Bytes()
	if errors.Is(err, redis.Nil) {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, ErrNotFound)
	}
	if err != nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, err)
	}
	a, err := decodeAgent(b)
	if err != nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, err)
	}
	if !a.HasStatus() {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, ErrNotFound)
	}
	return a, nil
}

// LoadPartition implements Store.
func (r *Redis) LoadPartition(ctx context.Context, p int) (Partition, error) {
	if r.err != nil {
		return Partition{}, fmt.Errorf("load partition %d: %w", p, r.err)
	}
	b, err := r.client.Get(ctx, r.keys.Partition(p)).Bytes()
	if errors.Is(err, redis.Nil) {
		return newPartition(), nil
	}
	if err != nil {
		return Partition{}, fmt.Errorf("load partition %d: %w", p, err)
	}
	rec, err := decodePartition(b)
	if err != nil {
		return Partition{}, fmt.Errorf("load partition %d: %w", p, err)
	}
	return rec, nil
}

// SwapPartition implements Store: one script, so the check and the write see the same server.
func (r *Redis) SwapPartition(ctx context.Context, p int, old, rec Partition) (bool, error) {
	if r.err != nil {
		return false, fmt.Errorf("swap partition %d: %w", p, r.err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("swap partition %d: encode: %w", p, err)
	}
	n, err := swapPartitionScript.Run(ctx, r.client, []string{r.keys.Partition(p)}, b, old.Marker,
		strconv.FormatUint(old.Floor, 10), strconv.FormatUint(old.Config.Seq, 10)).Int()
	if err != nil {
		return false, fmt.Errorf("swap partition %d: %w", p, err)
	}
	return n == 1, nil
}

// Config implements Store.
func (r *Redis) Config(ctx context.Context) (handlers.Config, error) {
	if r.err != nil {
		return handlers.Config{}, fmt.Errorf("config: %w", r.err)
	}
	b, err := r.client.Get(ctx, r.keys.Config()).Bytes()
	if errors.Is(err, redis.Nil) {
		return handlers.NewConfig(), nil
	}
	if err != nil {
		return handlers.Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := decodeConfig(b)
	if err != nil {
		return handlers.Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// SaveConfig implements Store. The first configuration saved is always stored.
func (r *Redis) SaveConfig(ctx context.Context, cfg handlers.Config) (bool, error) {
	if r.err != nil {
		return false, fmt.Errorf("save config: %w", r.err)
	}
	if cfg.Seq >= maxExact {
		return false, fmt.Errorf("save config: seq %d must stay below 2^53", cfg.Seq)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return false, fmt.Errorf("save config: encode: %w", err)
	}
	n, err := saveConfigScript.Run(ctx, r.client, []string{r.keys.Config()}, strconv.FormatUint(cfg.Seq, 10), b).Int()
	if err != nil {
		return false, fmt.Errorf("save config seq %d: %w", cfg.Seq, err)
	}
	return n == 1, nil
}

// Index implements Store: one pipeline for all entries, applied in order.
func (r *Redis) Index(ctx context.Context, p int, entries []IndexEntry) error {
	if r.err != nil {
		return fmt.Errorf("index partition %d: %w", p, r.err)
	}
	for _, e := range entries {
		if err := checkAgentID(e.AgentID); err != nil {
			return fmt.Errorf("index partition %d: %w", p, err)
		}
	}
	if len(entries) == 0 {
		return nil
	}
	leases := r.keys.Leases(p)
	if _, err := r.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for _, e := range entries {
			if e.Deadline.IsZero() {
				pl.ZRem(ctx, leases, e.AgentID)
			} else {
				pl.ZAdd(ctx, leases, redis.Z{Score: float64(leaseScore(e.Deadline)), Member: e.AgentID})
			}
			if e.From != "" && e.From != e.To {
				pl.SRem(ctx, r.keys.Members(p, e.From), e.AgentID)
			}
			if e.To != "" {
				pl.SAdd(ctx, r.keys.Members(p, e.To), e.AgentID)
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("index partition %d (%d entries): %w", p, len(entries), err)
	}
	return nil
}

// DueAgents implements Store. A limit <= 0 means no limit. Agents come in deadline
// order, ties by id.
func (r *Redis) DueAgents(ctx context.Context, p int, now time.Time, limit int) ([]string, error) {
	if r.err != nil {
		return nil, fmt.Errorf("due agents of partition %d: %w", p, r.err)
	}
	by := &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(nowScore(now), 10)}
	if limit > 0 {
		by.Count = int64(limit)
	}
	ids, err := r.client.ZRangeByScore(ctx, r.keys.Leases(p), by).Result()
	if err != nil {
		return nil, fmt.Errorf("due agents of partition %d: %w", p, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	return ids, nil
}

// AgentsIn implements Store. The ids come sorted.
func (r *Redis) AgentsIn(ctx context.Context, p int, presenceID string) ([]string, error) {
	if r.err != nil {
		return nil, fmt.Errorf("agents of partition %d in %q: %w", p, presenceID, r.err)
	}
	ids, err := r.client.SMembers(ctx, r.keys.Members(p, presenceID)).Result()
	if err != nil {
		return nil, fmt.Errorf("agents of partition %d in %q: %w", p, presenceID, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	slices.Sort(ids)
	return ids, nil
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error {
	if r.err != nil {
		return r.err
	}
	if err := r.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	return nil
}

// Close implements Store; it closes the client.
func (r *Redis) Close() error {
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("close redis client: %w", err)
	}
	return nil
}

// scriptCall is one run of a script.
type scriptCall struct {
	keys []string
	args []any
}

// runScripts runs calls of s in one pipeline with EVALSHA and runs again, with
// EVAL, only those the server did not know the script for (NOSCRIPT: nothing ran),
// so no call runs twice. Each returned command has a nil error.
func (r *Redis) runScripts(ctx context.Context, s *redis.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	if len(calls) == 0 {
		return cmds, nil
	}
	// Per-command errors are inspected below; the pipeline's own error is the first of them.
	_, _ = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range calls {
			cmds[i] = s.EvalSha(ctx, p, c.keys, c.args...)
		}
		return nil
	})
	var missing []int
	for i, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		_, _ = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range missing {
				cmds[i] = s.Eval(ctx, p, calls[i].keys, calls[i].args...)
			}
			return nil
		})
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return nil, err
		}
	}
	return cmds, nil
}
