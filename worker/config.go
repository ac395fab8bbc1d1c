// Package worker is the imperative shell of presenced: it consumes the input
// stream partition by partition, runs the pure rules of package handlers, keeps
// state through a state.Store and publishes status changes from the outbox.
package worker

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"log/slog"
	"strings"
	"time"

	"github.com/presenced/presenced/events"
)

// Config configures a Worker. Every field's zero value means the default named in
// its comment.
type Config struct {
	// Prefix starts every subject. Default "presence".
	Prefix string
	// Source is the CloudEvents source of published events, shared by all replicas. Default "presenced".
	Source string
	// Partitions is the number of input partitions, fixed for the life of the input
	// stream: agents are spread over them by a hash of their id, and each is owned by
	// one replica at a time. Default 16.
	Partitions int
	// BatchSize is the most messages one partition handles in one step. Default 500.
	BatchSize int
	// DedupeWindow is how long a repeated source+id has no effect. Default 2m.
	DedupeWindow time.Duration
	// LeaseTTL is how long a partition stays owned by a replica that stopped
	// renewing it. Default 10s.
	LeaseTTL time.Duration
	// InstanceID names this replica in ownership records. Default: random.
	InstanceID string
	// StatusHistory is how many status messages per agent the status stream keeps. Default 10.
	StatusHistory int64
	// InputMaxAge is how long input messages are kept. Default 7 days.
	InputMaxAge time.Duration
	// StreamReplicas is the replication factor of the streams. Default 1.
	StreamReplicas int
	// SweepInterval is how often owned partitions are checked for expired sessions. Default 1s.
	SweepInterval time.Duration
	// A partition checkpoints (writes durable copies of the agents it changed,
	// and its record, to JetStream and the store) once CheckpointInputs inputs
	// were handled since the last checkpoint, once CheckpointInterval has
	// passed, or as soon as it has been quiet for a SweepInterval; and when it
	// is released. A new owner, and a rebuild after the store lost data, replay
	// the inputs since the last checkpoint: the thresholds bound that replay,
	// and the cost of checkpoints grows with the agents changed, not with the
	// inputs. Defaults 20000 and 30s.
	CheckpointInputs   int
	CheckpointInterval time.Duration
	// AckWait is the input consumers' ack wait. Default 30s.
	AckWait time.Duration
	// StallAfter: a partition whose consumer holds inputs it does not receive
	// (to deliver, or delivered and never received) and that handled none for
	// this long since a check first saw it is taken over again, with a new
	// consumer from its ack floor, instead of waiting for the server's own
	// redelivery after AckWait. Default 15s (the client notices a pull the
	// server no longer serves within 5s).
	StallAfter time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Tracer records a span per traced input event (one with a traceparent);
	// the status events it causes carry that span as their parent. Default: the
	// no-op tracer, with which the input's traceparent is carried on unchanged.
	Tracer trace.Tracer
}

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = "presence"
	}
	for _, tok := range strings.Split(c.Prefix, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t") {
			return c, fmt.Errorf("subject prefix %q: use dot-separated tokens without wildcards or spaces", c.Prefix)
		}
	}
	if c.Source == "" {
		c.Source = "presenced"
	}
	if c.Partitions <= 0 {
		c.Partitions = 16
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.DedupeWindow <= 0 {
		c.DedupeWindow = 2 * time.Minute
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 10 * time.Second
	}
	if c.InstanceID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		c.InstanceID = hex.EncodeToString(b[:])
	}
	if c.StatusHistory <= 0 {
		c.StatusHistory = 10
	}
	if c.InputMaxAge <= 0 {
		c.InputMaxAge = 7 * 24 * time.Hour
	}
	if c.StreamReplicas <= 0 {
		c.StreamReplicas = 1
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Second
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 30 * time.Second
	}
	if c.CheckpointInputs <= 0 {
		c.CheckpointInputs = 20000
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.StallAfter <= 0 {
		c.StallAfter = 15 * time.Second
	}
	if c.Tracer == nil {
		c.Tracer = noop.NewTracerProvider().Tracer("")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Names derives stream, bucket and consumer names from the subject prefix, so
// several organisations can share a NATS account by prefix.
type Names struct {
	Subjects events.Subjects
	base     string
}

// NamesFor returns the names used for prefix.
func NamesFor(prefix string) Names {
	base := strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(prefix))
	return Names{Subjects: events.Subjects{Prefix: prefix}, base: base}
}

// InputStream holds every input subject.
func (n Names) InputStream() string { return n.base + "_IN" }

// StatusStream holds agent.status.changed, keeping the last messages per agent.
func (n Names) StatusStream() string { return n.base + "_STATUS" }

// RejectedStream holds event.rejected dead letters.
func (n Names) RejectedStream() string { return n.base + "_REJECTED" }

// OwnersBucket is the key-value bucket of partition leases and live members.
func (n Names) OwnersBucket() string { return n.base + "_OWNERS" }

// consumerName is the durable consumer of partition p created by the lease with revision rev.
func (n Names) consumerName(p int, rev uint64) string {
	return fmt.Sprintf("%s_P%d_R%d", n.base, p, rev)
}

// consumerPrefix is what every consumer of partition p is named with.
func (n Names) consumerPrefix(p int) string { return fmt.Sprintf("%s_P%d_R", n.base, p) }
