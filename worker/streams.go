package worker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PartitionOf is the input partition of an agent. It must equal the nats-server
// subject transform partition(n, token) the input stream applies: FNV-1a 32 of the
// token modulo n. A test checks the two agree on a real server.
func PartitionOf(agentID string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(agentID))
	return int(h.Sum32() % uint32(n))
}

const partitionsMetadata = "presenced.partitions"

// ensureStreams creates or updates the three streams and the owners bucket.
// Changing the partition count of an existing input stream would reorder agents
// across partitions, so it is refused.
// streamConfigs are the streams presenced needs, input stream first.
func streamConfigs(cfg Config, names Names) []jetstream.StreamConfig {
	p := cfg.Prefix
	in := jetstream.StreamConfig{
		Name:        names.InputStream(),
		Description: "presenced input: agent, router, config and system events",
		// Exactly the subject shapes of the contract: anything else (an extra
		// token, a missing one) is refused at the door, where the publisher sees
		// the error, instead of being stored where no partition consumer reads it.
		Subjects:   []string{p + ".in.*.*", p + ".in.config"},
		Storage:    jetstream.FileStorage,
		Replicas:   cfg.StreamReplicas,
		MaxAge:     cfg.InputMaxAge,
		Duplicates: cfg.DedupeWindow,
		// Stored subjects get the agent's partition as an extra token, so one
		// consumer per partition can filter them: <p>.in.<role>.<partition>.<agent>.
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source:      p + ".in.*.*",
			Destination: fmt.Sprintf("%s.in.{{wildcard(1)}}.{{partition(%d,2)}}.{{wildcard(2)}}", p, cfg.Partitions),
		},
		Metadata: map[string]string{partitionsMetadata: strconv.Itoa(cfg.Partitions)},
		// Every batch looks up the configuration events stored before its last
		// message. A direct get is answered inline by the server, where the API
		// goes through a queue of a few goroutines. With replicas a lagging
		// follower may answer a direct get and miss a configuration event, so it
		// is enabled only where the leader is the only copy (a mirror with
		// MirrorDirect would answer too, from a copy that may lag: the README
		// says not to add one).
		AllowDirect: cfg.StreamReplicas == 1,
	}
	return []jetstream.StreamConfig{in, {
		Name:              names.StatusStream(),
		Description:       "presenced agent.status.changed, last messages per agent",
		Subjects:          []string{p + ".status.>"},
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.StreamReplicas,
		MaxMsgsPerSubject: cfg.StatusHistory,
		Duplicates:        cfg.DedupeWindow,
		AllowDirect:       true,
	}, {
		Name:              names.StateStream(),
		Description:       "presenced durable copies of agent state and partition records, to rebuild the state store",
		Subjects:          []string{p + ".state.>"},
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.StreamReplicas,
		MaxMsgsPerSubject: 1,
		Duplicates:        cfg.DedupeWindow,
		AllowDirect:       true,
	}, {
		Name:        names.RejectedStream(),
		Description: "presenced event.rejected dead letters",
		Subjects:    []string{p + ".rejected"},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.StreamReplicas,
		MaxAge:      30 * 24 * time.Hour,
		Duplicates:  cfg.DedupeWindow,
	}}
}

// errStreamConflict marks an existing stream that contradicts the configuration.
var errStreamConflict = errors.New("stream conflicts with the configuration")

func ensureStreams(ctx context.Context, js jetstream.JetStream, cfg Config, names Names) (jetstream.KeyValue, error) {
	streams := streamConfigs(cfg, names)
	in := streams[0]
	if s, err := js.Stream(ctx, in.Name); err == nil {
		if got := s.CachedInfo().Config.Metadata[partitionsMetadata]; got != "" && got != in.Metadata[partitionsMetadata] {
			return nil, fmt.Errorf("%w: input stream %s was created with %s partitions, not %d: start with --partitions %s", errStreamConflict, in.Name, got, cfg.Partitions, got)
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("look up stream %s: %w", in.Name, err)
	}
	for _, sc := range streams {
		// Only a missing or different stream is written: replicas starting while
		// others run must not send updates for nothing.
		if s, err := js.Stream(ctx, sc.Name); err == nil {
			if sameStream(s.CachedInfo().Config, sc) {
				continue
			}
			cfg.Logger.Info("updating stream settings", "stream", sc.Name)
		}
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return nil, fmt.Errorf("create stream %s: %w", sc.Name, err)
		}
	}
	kvc := jetstream.KeyValueConfig{
		Bucket:      names.OwnersBucket(),
		Description: "presenced partition leases and live replicas",
		TTL:         cfg.LeaseTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.StreamReplicas,
		History:     1,
	}
	if kv, err := js.KeyValue(ctx, kvc.Bucket); err == nil {
		if st, err := kv.Status(ctx); err == nil && st.TTL() == kvc.TTL {
			return kv, nil
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, kvc)
	if err != nil {
		return nil, fmt.Errorf("create bucket %s: %w", names.OwnersBucket(), err)
	}
	return kv, nil
}

// sameStream compares the settings presenced chooses; the server reports an
// unset per-subject limit as -1.
func sameStream(have, want jetstream.StreamConfig) bool {
	perSubject := have.MaxMsgsPerSubject == want.MaxMsgsPerSubject || (have.MaxMsgsPerSubject <= 0 && want.MaxMsgsPerSubject <= 0)
	return slices.Equal(have.Subjects, want.Subjects) && have.MaxAge == want.MaxAge &&
		perSubject && have.Duplicates == want.Duplicates &&
		have.Replicas == want.Replicas && have.AllowDirect == want.AllowDirect && reflect.DeepEqual(have.SubjectTransform, want.SubjectTransform)
}

// logicalSubject turns a stored input subject back into the one it was published
// on, by dropping the partition token, and returns the partition.
func logicalSubject(prefix, stored string) (string, int) {
	rest, ok := strings.CutPrefix(stored, prefix+".in.")
	if !ok {
		return stored, -1
	}
	// Cut, not Split: a slice of tokens per input is an allocation the hot
	// path does not need.
	role, rest, ok1 := strings.Cut(rest, ".")
	part, agent, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(agent, ".") {
		return stored, -1
	}
	p, err := strconv.Atoi(part)
	if err != nil {
		return stored, -1
	}
	return prefix + ".in." + role + "." + agent, p
}
