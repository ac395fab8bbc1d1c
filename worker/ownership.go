package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Partition ownership: every replica registers itself under member.<id> and
// renews it; each partition belongs to the live member that wins a rendezvous
// hash, which holds a lease key partition.<n> in the owners bucket. Lease keys
// expire with the bucket TTL, so a crashed owner's partitions are claimed by
// others after LeaseTTL.

type leaseValue struct {
	Owner string `json:"owner"`
}

func memberKey(id string) string { return "member." + id }
func leaseKey(p int) string      { return "partition." + strconv.Itoa(p) }

// winner picks the owner of partition p among members by rendezvous hashing, so
// that a member joining or leaving moves only its share of partitions.
func winner(members []string, p int) string {
	var best string
	var bestScore uint32
	for _, m := range members {
		h := fnv.New32a()
		_, _ = h.Write([]byte(m + "/" + strconv.Itoa(p)))
		if s := h.Sum32(); best == "" || s > bestScore || (s == bestScore && m < best) {
			best, bestScore = m, s
		}
	}
	return best
}

func liveMembers(ctx context.Context, kv jetstream.KeyValue) ([]string, error) {
	lister, err := kv.ListKeysFiltered(ctx, "member.*")
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	var out []string
	for k := range lister.Keys() {
		out = append(out, strings.TrimPrefix(k, "member."))
	}
	return out, nil
}

// claim takes the lease of partition p if nobody holds it and returns its revision.
func claim(ctx context.Context, kv jetstream.KeyValue, p int, owner string) (uint64, error) {
	b, _ := json.Marshal(leaseValue{Owner: owner})
	rev, err := kv.Create(ctx, leaseKey(p), b)
	if err != nil {
		return 0, fmt.Errorf("claim partition %d: %w", p, err)
	}
	return rev, nil
}

// renew extends a held lease; it fails when someone else holds it now.
func renew(ctx context.Context, kv jetstream.KeyValue, p int, owner string, rev uint64) (uint64, error) {
	b, _ := json.Marshal(leaseValue{Owner: owner})
	next, err := kv.Update(ctx, leaseKey(p), b, rev)
	if err != nil {
		return 0, fmt.Errorf("renew partition %d: %w", p, err)
	}
	return next, nil
}

func release(ctx context.Context, kv jetstream.KeyValue, p int, rev uint64) error {
	err := kv.Delete(ctx, leaseKey(p), jetstream.LastRevision(rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("release partition %d: %w", p, err)
	}
	return nil
}
