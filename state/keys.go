package state

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// DefaultPrefix starts every Redis key unless RedisConfig.Prefix says otherwise.
const DefaultPrefix = "presence"

// Keys builds the Redis key names of one key prefix. It is a pure helper: the
// names are part of the contract (the read model) or of the worker's own layout,
// and tests and tools use it to find them.
//
// Every key one script touches shares one Redis Cluster hash tag: the agent id
// for the per-agent keys, "p<N>" for the per-partition indexes.
type Keys struct {
	Prefix string
}

// Agent is the public read model of an agent, a HASH (contract §5), which also
// holds the worker's own fields of an agent with a status (layout.go).
func (k Keys) Agent(agentID string) string { return k.Prefix + ":agent:{" + agentID + "}" }

// State is the state of an agent without a status (a tombstone, an agent only
// configured so far), JSON of handlers.Agent.
func (k Keys) State(agentID string) string { return k.Prefix + ":state:{" + agentID + "}" }

// Seen is the STRING of an agent's dedupe entries as of the last checkpoint
// (24 bytes each), expiring when the newest of them leaves the window.
func (k Keys) Seen(agentID string) string { return k.Prefix + ":seen:{" + agentID + "}" }

// Outbox is the STRING of an agent's status changes of its last commit (JSON),
// until they are published.
func (k Keys) Outbox(agentID string) string { return k.Prefix + ":outbox:{" + agentID + "}" }

// Partition is the record of input partition p, JSON of Partition.
func (k Keys) Partition(p int) string { return k.Prefix + ":partition:{p" + strconv.Itoa(p) + "}" }

// Config is the newest configuration any partition applied, JSON of handlers.Config.
func (k Keys) Config() string { return k.Prefix + ":config" }

// LeaseShards is how many ZSETs hold a partition's lease deadlines. A small
// sorted set stays in Redis's compact listpack encoding (up to 128 entries by
// default), about 20 bytes an entry against about 100 in the skiplist of a large
// one; 64 shards keep that up to about 6 500 leased agents per partition (the
// shards fill unevenly), while
// the expiry sweep still reads them all in one round trip.
const LeaseShards = 64

// LeaseShard is shard s of partition p's lease index: a ZSET of agents scored by
// their earliest lease deadline (unix ms), or by an earlier one the worker has
// not moved yet. An agent's shard is LeaseShardOf its id.
func (k Keys) LeaseShard(p, s int) string {
	return k.Prefix + ":leases:{p" + strconv.Itoa(p) + "}:" + strconv.Itoa(s)
}

// LeaseShardOf returns the lease shard of an agent. Partitions are FNV-1a of
// the id modulo their count, so the shard is that hash mixed (MurmurHash3's
// finalizer): its low bits alone would put a partition's agents in a few shards.
func LeaseShardOf(agentID string) int {
	f := fnv.New32a()
	_, _ = f.Write([]byte(agentID))
	h := f.Sum32()
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return int(h % LeaseShards)
}

// Leases is partition p's lease index as one ZSET, as stored before the shards;
// the Redis store moves what it finds there into the shards.
func (k Keys) Leases(p int) string { return k.Prefix + ":leases:{p" + strconv.Itoa(p) + "}" }

// Members is the SET of partition p's agents indexed under name (a custom
// presence they are in, or default:<presence> for their own default).
func (k Keys) Members(p int, name string) string {
	return k.Prefix + ":members:{p" + strconv.Itoa(p) + "}:" + name
}

// HashTag returns what Redis Cluster hashes for key: the content of the first
// {...} when it is not empty, else the whole key.
func HashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// checkAgentID rejects ids that cannot be stored: empty, or with a brace that
// would break the key's hash tag. (The contract allows far less; the worker
// validates ids before they get here.)
func checkAgentID(id string) error {
	if id == "" {
		return fmt.Errorf("agent id is empty")
	}
	if strings.ContainsAny(id, "{}") {
		return fmt.Errorf("agent id %q contains a brace", id)
	}
	return nil
}

// checkPrefix rejects a key prefix that would break the hash tags.
func checkPrefix(prefix string) error {
	if strings.ContainsAny(prefix, "{}") {
		return fmt.Errorf("redis key prefix %q: braces are not allowed (they would break the cluster hash tags)", prefix)
	}
	return nil
}
