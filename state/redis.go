package state

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/handlers"
)

var (
	//go:embed lua/stored_seq.lua
	storedSeqSource string
	//go:embed lua/commit.lua
	commitSource string
	//go:embed lua/save_config.lua
	saveConfigSource string
	//go:embed lua/swap_partition.lua
	swapPartitionSource string
	//go:embed lua/drop_outbox.lua
	dropOutboxSource string

	commitScript        = redis.NewScript(storedSeqSource + commitSource)
	saveConfigScript    = redis.NewScript(saveConfigSource)
	swapPartitionScript = redis.NewScript(swapPartitionSource)
	dropOutboxScript    = redis.NewScript(storedSeqSource + dropOutboxSource)
)

// RedisConfig configures the Redis store.
type RedisConfig struct {
	// Prefix starts every key; default "presence". It must not contain braces.
	Prefix string
	// CommitChunk is how many agents one commit script writes at most, on a
	// Redis that is not a cluster (a cluster takes one agent per script, as its
	// keys live in one slot per agent). Default 250: large enough to spread the
	// script's fixed cost, small enough not to hold the server for long.
	CommitChunk int
}

// Redis is a Store in Redis (standalone, Sentinel or Cluster). The key layout is
// described by Keys; every atomic step is one Lua script over one agent's keys,
// and the work of one call goes out as one pipeline.
type Redis struct {
	client  redis.UniversalClient
	keys    Keys
	chunk   int
	cluster bool
	err     error // a bad configuration, returned by every call
}

var _ Store = (*Redis)(nil)

// NewRedis returns a store on client. The store owns the client: Close closes it.
// A bad RedisConfig is reported by every call, Ping included.
func NewRedis(client redis.UniversalClient, cfg RedisConfig) *Redis {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.CommitChunk <= 0 {
		cfg.CommitChunk = 250
	}
	_, cluster := client.(*redis.ClusterClient)
	if cluster {
		cfg.CommitChunk = 1
	}
	return &Redis{client: client, keys: Keys{Prefix: cfg.Prefix}, chunk: cfg.CommitChunk, cluster: cluster, err: checkPrefix(cfg.Prefix)}
}

// Keys returns the key names the store uses.
func (r *Redis) Keys() Keys { return r.keys }

// Load implements Store: one pipeline for all agents.
func (r *Redis) Load(ctx context.Context, ids []string) ([]Record, error) {
	if r.err != nil {
		return nil, fmt.Errorf("load: %w", r.err)
	}
	for _, id := range ids {
		if err := checkAgentID(id); err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
	}
	if len(ids) == 0 {
		return []Record{}, nil
	}
	type cmds struct {
		hash             *redis.MapStringStringCmd
		state, out, seen *redis.StringCmd
	}
	cs := make([]cmds, len(ids))
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cs[i].hash = p.HGetAll(ctx, r.keys.Agent(id))
			cs[i].state = p.Get(ctx, r.keys.State(id))
			cs[i].out = p.Get(ctx, r.keys.Outbox(id))
			cs[i].seen = p.Get(ctx, r.keys.Seen(id))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("load %d agents: %w", len(ids), err)
	}
	out := make([]Record, len(ids))
	for i, id := range ids {
		rec := Record{Agent: handlers.Agent{ID: id}}
		a, found, err := readAgent(id, cs[i].hash, cs[i].state)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", id, err)
		}
		if found {
			rec.Agent = a
		}
		journal, err := optional(cs[i].out)
		if err != nil {
			return nil, fmt.Errorf("load %s: outbox: %w", id, err)
		}
		saved, err := optional(cs[i].seen)
		if err != nil {
			return nil, fmt.Errorf("load %s: dedupe entries: %w", id, err)
		}
		if rec.Seen, err = DecodeSeen(saved); err != nil {
			return nil, fmt.Errorf("load %s: %w", id, err)
		}
		if journal != nil {
			rec.HasOutbox = true
			var added []Seen
			if rec.Outbox, added, err = decodeOutbox(journal); err != nil {
				return nil, fmt.Errorf("load %s: %w", id, err)
			}
			rec.Seen = mergeSeen(rec.Seen, added)
		}
		out[i] = rec
	}
	return out, nil
}

// optional reads a string that may be missing.
func optional(c *redis.StringCmd) ([]byte, error) {
	b, err := c.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

// The commit script's flags, a bit each (see commit.lua).
const (
	flagRestore    = 1 << iota // apply if the stored sequence is lower, whatever expect says
	flagRewrite                // delete the hash before writing it
	flagState                  // write the state key, delete the hash
	flagDropState              // delete the state key
	flagOutbox                 // set the outbox
	flagDropOutbox             // delete the outbox
)

// commitArgs appends the keys of one commit, its entries in the chunk's
// MessagePack argument (expect, seq, flags, n, n hash fields and values, state)
// and its outbox argument (see commit.lua); it returns how many entries.
func (r *Redis) commitArgs(keys []string, b []byte, outboxes []any, c Commit) ([]string, []byte, []any, int, error) {
	st := stored(c)
	id := c.Agent.ID
	keys = append(keys, r.keys.Agent(id), r.keys.State(id), r.keys.Outbox(id))
	var flags uint64
	if c.Restore {
		flags |= flagRestore
	}
	var stateJSON []byte
	var before *handlers.Agent // nil: every field is written
	if st.HasStatus() {
		if c.Before != nil && c.Before.HasStatus() && !c.Restore && !c.Removed {
			before = c.Before
		} else {
			flags |= flagRewrite
			if c.Before == nil || c.Before.AppliedSeq > 0 {
				flags |= flagDropState // a state key may be left from before the first status
			}
		}
	} else {
		j, err := json.Marshal(st)
		if err != nil {
			return nil, nil, nil, 0, fmt.Errorf("commit %s: encode state: %w", id, err)
		}
		stateJSON = j
		flags |= flagState
	}
	outbox := encodeOutbox(c.Outbox, c.Seen)
	if len(outbox) > 0 {
		flags |= flagOutbox
	} else if c.DropOutbox || c.Restore || c.Removed {
		flags |= flagDropOutbox
	}
	b = mpUint(b, c.Expect)
	b = mpUint(b, st.AppliedSeq)
	b = mpUint(b, flags)
	// The field count is known once they are written: it is reserved as a
	// 16-bit integer and filled in.
	head := len(b)
	b = append(b, 0xcd, 0, 0)
	m := 0
	if st.HasStatus() {
		b, m = appendFields(b, before, st)
	}
	binary.BigEndian.PutUint16(b[head+1:], uint16(2*m))
	b = mpBytes(b, stateJSON)
	// The outbox, the largest value, goes as an argument of its own: Lua hashes
	// every byte of every string it makes, and one inside the MessagePack
	// would be hashed twice.
	if outbox == nil {
		outboxes = append(outboxes, "")
	} else {
		outboxes = append(outboxes, outbox)
	}
	return keys, b, outboxes, 5 + 2*m, nil
}

// Commit implements Store: the commits go out in scripts of up to CommitChunk
// agents, followed by the index updates, all in one pipeline.
func (r *Redis) Commit(ctx context.Context, p int, commits []Commit, index []IndexEntry) ([]bool, error) {
	if r.err != nil {
		return nil, fmt.Errorf("commit: %w", r.err)
	}
	if err := checkCommits(commits, index); err != nil {
		return nil, err
	}
	var calls []scriptCall
	for start := 0; start < len(commits); start += r.chunk {
		end := min(start+r.chunk, len(commits))
		keys := make([]string, 0, 3*(end-start))
		// One flat array for the chunk: Lua builds no table per agent. Its
		// length is known at the end, so the header is reserved at 32 bits.
		b := make([]byte, 0, 256*(end-start))
		b = append(b, 0xdd, 0, 0, 0, 0)
		args := make([]any, 1, 1+end-start)
		entries := 0
		for _, c := range commits[start:end] {
			var n int
			var err error
			if keys, b, args, n, err = r.commitArgs(keys, b, args, c); err != nil {
				return nil, err
			}
			entries += n
		}
		binary.BigEndian.PutUint32(b[1:], uint32(entries))
		args[0] = b
		calls = append(calls, scriptCall{keys: keys, args: args, n: end - start})
	}
	cmds, err := r.runScripts(ctx, commitScript, calls, func(pl redis.Pipeliner) { r.queueIndex(ctx, pl, p, index) })
	if err != nil {
		return nil, fmt.Errorf("commit %d agents: %w", len(commits), err)
	}
	applied := make([]bool, 0, len(commits))
	for i, cmd := range cmds {
		res, err := cmd.Int64Slice()
		if err != nil || len(res) != calls[i].n {
			return nil, fmt.Errorf("commit: unexpected script reply %v: %w", cmd.Val(), err)
		}
		for _, v := range res {
			applied = append(applied, v == 1)
		}
	}
	return applied, nil
}

func (r *Redis) queueIndex(ctx context.Context, pl redis.Pipeliner, p int, index []IndexEntry) {
	for _, e := range index {
		if e.Lease {
			leases := r.keys.LeaseShard(p, LeaseShardOf(e.AgentID))
			if e.Deadline.IsZero() {
				pl.ZRem(ctx, leases, e.AgentID)
			} else {
				pl.ZAdd(ctx, leases, redis.Z{Score: float64(leaseScore(e.Deadline)), Member: e.AgentID})
			}
		}
		if e.From != "" && e.From != e.To {
			pl.SRem(ctx, r.keys.Members(p, e.From), e.AgentID)
		}
		if e.To != "" {
			pl.SAdd(ctx, r.keys.Members(p, e.To), e.AgentID)
		}
	}
}

// DropOutbox implements Store: scripts of up to CommitChunk agents in one pipeline.
func (r *Redis) DropOutbox(ctx context.Context, published map[string]uint64) error {
	if r.err != nil {
		return fmt.Errorf("drop outbox: %w", r.err)
	}
	ids, err := sortedAgents("drop outbox", published)
	if err != nil {
		return err
	}
	var calls []scriptCall
	for start := 0; start < len(ids); start += r.chunk {
		end := min(start+r.chunk, len(ids))
		keys := make([]string, 0, 3*(end-start))
		args := make([]any, 0, end-start)
		for _, id := range ids[start:end] {
			keys = append(keys, r.keys.Agent(id), r.keys.State(id), r.keys.Outbox(id))
			args = append(args, strconv.FormatUint(published[id], 10))
		}
		calls = append(calls, scriptCall{keys: keys, args: args, n: end - start})
	}
	if _, err := r.runScripts(ctx, dropOutboxScript, calls, func(redis.Pipeliner) {}); err != nil {
		return fmt.Errorf("drop outbox of %d agents: %w", len(ids), err)
	}
	return nil
}

// SaveSeen implements Store.
func (r *Redis) SaveSeen(ctx context.Context, seen map[string][]Seen, expire map[string]time.Time) error {
	if r.err != nil {
		return fmt.Errorf("save dedupe entries: %w", r.err)
	}
	for id := range seen {
		if err := checkAgentID(id); err != nil {
			return fmt.Errorf("save dedupe entries: %w", err)
		}
	}
	if len(seen) == 0 {
		return nil
	}
	if _, err := r.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for id, entries := range seen {
			key := r.keys.Seen(id)
			at := expire[id]
			if len(entries) == 0 || !at.After(time.Now()) {
				pl.Del(ctx, key)
				continue
			}
			pl.SetArgs(ctx, key, EncodeSeen(entries), redis.SetArgs{ExpireAt: at})
		}
		return nil
	}); err != nil {
		return fmt.Errorf("save dedupe entries of %d agents: %w", len(seen), err)
	}
	return nil
}

// Verify implements Store.
func (r *Redis) Verify(ctx context.Context, seqs map[string]uint64) ([]string, error) {
	if r.err != nil {
		return nil, fmt.Errorf("verify: %w", r.err)
	}
	ids, err := sortedAgents("verify", seqs)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, nil
	}
	// The hash's seq first, for all: only an agent without a status (no hash)
	// needs its state key read as well, and that takes a second round trip only
	// when there is one, instead of a second command for every agent.
	seqCmds := make([]*redis.StringCmd, len(ids))
	_, err = r.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, id := range ids {
			seqCmds[i] = pl.HGet(ctx, r.keys.Agent(id), fieldSeq)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("verify %d agents: %w", len(ids), err)
	}
	have := make([]uint64, len(ids))
	var noHash []int
	for i, id := range ids {
		s, err := seqCmds[i].Result()
		if errors.Is(err, redis.Nil) {
			noHash = append(noHash, i)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", id, err)
		}
		if have[i], err = strconv.ParseUint(s, 10, 64); err != nil {
			return nil, fmt.Errorf("verify %s: field %s: %w", id, fieldSeq, err)
		}
	}
	if len(noHash) > 0 {
		stateCmds := make([]*redis.StringCmd, len(noHash))
		_, err = r.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
			for j, i := range noHash {
				stateCmds[j] = pl.Get(ctx, r.keys.State(ids[i]))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("verify %d agents without a status: %w", len(noHash), err)
		}
		for j, i := range noHash {
			b, err := optional(stateCmds[j])
			if err != nil {
				return nil, fmt.Errorf("verify %s: %w", ids[i], err)
			}
			if b == nil {
				continue
			}
			a, err := decodeAgent(b)
			if err != nil {
				return nil, fmt.Errorf("verify %s: %w", ids[i], err)
			}
			have[i] = a.AppliedSeq
		}
	}
	var bad []string
	for i, id := range ids {
		if have[i] < seqs[id] {
			bad = append(bad, id)
		}
	}
	return bad, nil
}

// Agent implements Store.
func (r *Redis) Agent(ctx context.Context, agentID string) (handlers.Agent, error) {
	if r.err != nil {
		return handlers.Agent{}, fmt.Errorf("agent: %w", r.err)
	}
	if err := checkAgentID(agentID); err != nil {
		return handlers.Agent{}, fmt.Errorf("agent: %w", err)
	}
	hash := r.client.HGetAll(ctx, r.keys.Agent(agentID))
	h, err := hash.Result()
	if err != nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, err)
	}
	if _, ok := h[fieldSeq]; !ok {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, ErrNotFound)
	}
	a, err := agentFromFields(agentID, h)
	if err != nil {
		return handlers.Agent{}, fmt.Errorf("agent %s: %w", agentID, err)
	}
	return a, nil
}

// readAgent decodes an agent from its hash, or else from its state key.
func readAgent(id string, hash *redis.MapStringStringCmd, st *redis.StringCmd) (handlers.Agent, bool, error) {
	h, err := hash.Result()
	if err != nil {
		return handlers.Agent{}, false, err
	}
	if _, ok := h[fieldSeq]; ok {
		a, err := agentFromFields(id, h)
		return a, err == nil, err
	}
	b, err := optional(st)
	if err != nil || b == nil {
		return handlers.Agent{}, false, err
	}
	a, err := decodeAgent(b)
	return a, err == nil, err
}

// LoadPartition implements Store.
func (r *Redis) LoadPartition(ctx context.Context, p int) (Partition, bool, error) {
	if r.err != nil {
		return Partition{}, false, fmt.Errorf("load partition %d: %w", p, r.err)
	}
	b, err := r.client.Get(ctx, r.keys.Partition(p)).Bytes()
	if errors.Is(err, redis.Nil) {
		return NewPartition(), false, nil
	}
	if err != nil {
		return Partition{}, false, fmt.Errorf("load partition %d: %w", p, err)
	}
	rec, err := DecodePartition(b)
	if err != nil {
		return Partition{}, false, fmt.Errorf("load partition %d: %w", p, err)
	}
	return rec, true, nil
}

// SwapPartition implements Store: one script, so the check and the write see the same server.
func (r *Redis) SwapPartition(ctx context.Context, p int, old, rec Partition) (bool, error) {
	if r.err != nil {
		return false, fmt.Errorf("swap partition %d: %w", p, r.err)
	}
	if rec.Seq >= maxExact || old.Seq >= maxExact {
		return false, fmt.Errorf("swap partition %d: checkpoint must stay below 2^53", p)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("swap partition %d: encode: %w", p, err)
	}
	n, err := swapPartitionScript.Run(ctx, r.client, []string{r.keys.Partition(p)}, b, old.Marker,
		strconv.FormatUint(old.Seq, 10)).Int()
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

// DueAgents implements Store. A limit <= 0 means no limit. Agents come in deadline
// order, ties by id. It reads every lease shard of the partition in one pipeline,
// with the single index of before the shards, whose entries it then moves into
// the shards.
func (r *Redis) DueAgents(ctx context.Context, p int, now time.Time, limit int) ([]string, error) {
	return r.dueAgents(ctx, p, now, limit, false)
}

func (r *Redis) dueAgents(ctx context.Context, p int, now time.Time, limit int, moved bool) ([]string, error) {
	if r.err != nil {
		return nil, fmt.Errorf("due agents of partition %d: %w", p, r.err)
	}
	by := &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(nowScore(now), 10)}
	if limit > 0 {
		by.Count = int64(limit)
	}
	shards := make([]*redis.ZSliceCmd, LeaseShards)
	var legacy *redis.IntCmd
	_, err := r.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for s := range shards {
			shards[s] = pl.ZRangeByScoreWithScores(ctx, r.keys.LeaseShard(p, s), by)
		}
		legacy = pl.Exists(ctx, r.keys.Leases(p))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("due agents of partition %d: %w", p, err)
	}
	if legacy.Val() > 0 && !moved {
		if err := r.moveLeases(ctx, p); err != nil {
			return nil, err
		}
		return r.dueAgents(ctx, p, now, limit, true)
	}
	var due []redis.Z
	for _, c := range shards {
		due = append(due, c.Val()...)
	}
	if len(due) == 0 {
		return nil, nil
	}
	slices.SortFunc(due, func(a, b redis.Z) int {
		if c := cmp.Compare(a.Score, b.Score); c != 0 {
			return c
		}
		return strings.Compare(a.Member.(string), b.Member.(string))
	})
	if limit > 0 && len(due) > limit {
		due = due[:limit]
	}
	ids := make([]string, len(due))
	for i, z := range due {
		ids[i] = z.Member.(string)
	}
	return ids, nil
}

// moveLeases moves partition p's lease index as stored before the shards into
// the shards, in one transaction (the keys share the partition's hash slot).
// Only the partition's owner writes its leases, so nothing changes the old index
// between the read and the move.
func (r *Redis) moveLeases(ctx context.Context, p int) error {
	old := r.keys.Leases(p)
	all, err := r.client.ZRangeWithScores(ctx, old, 0, -1).Result()
	if err != nil {
		return fmt.Errorf("read lease index of partition %d: %w", p, err)
	}
	byShard := map[int][]redis.Z{}
	for _, z := range all {
		s := LeaseShardOf(z.Member.(string))
		byShard[s] = append(byShard[s], z)
	}
	// One ZADD per shard, keeping the earlier deadline where an agent is in both:
	// one too early is put right by the sweep that meets it, one too late would
	// hold an expiry back.
	_, err = r.client.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		for s, zs := range byShard {
			pl.ZAddArgs(ctx, r.keys.LeaseShard(p, s), redis.ZAddArgs{LT: true, Members: zs})
		}
		pl.Del(ctx, old)
		return nil
	})
	if err != nil {
		return fmt.Errorf("move lease index of partition %d into shards: %w", p, err)
	}
	return nil
}

// AgentsIn implements Store. The ids come sorted.
func (r *Redis) AgentsIn(ctx context.Context, p int, name string) ([]string, error) {
	if r.err != nil {
		return nil, fmt.Errorf("agents of partition %d in %q: %w", p, name, r.err)
	}
	ids, err := r.client.SMembers(ctx, r.keys.Members(p, name)).Result()
	if err != nil {
		return nil, fmt.Errorf("agents of partition %d in %q: %w", p, name, err)
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

// scriptCall is one run of a script over n agents.
type scriptCall struct {
	keys []string
	args []any
	n    int
}

// runScripts runs calls of s in one pipeline with EVALSHA, followed by what extra
// queues, and runs again, with EVAL, only the calls the server did not know the
// script for (NOSCRIPT: nothing ran), so no call runs twice. Each returned
// command has a nil error.
func (r *Redis) runScripts(ctx context.Context, s *redis.Script, calls []scriptCall, extra func(redis.Pipeliner)) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	var extraErr error
	// Per-command errors are inspected below; the pipeline's own error is the first of them.
	plCmds, _ := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range calls {
			cmds[i] = s.EvalSha(ctx, p, c.keys, c.args...)
		}
		extra(p)
		return nil
	})
	for _, c := range plCmds[len(calls):] {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			extraErr = err
			break
		}
	}
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
	if extraErr != nil {
		return nil, extraErr
	}
	return cmds, nil
}
