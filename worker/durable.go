package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/state"
)

// The state stream keeps, durably in JetStream, everything needed to rebuild the
// store when it loses data (contract §5): per agent the last snapshot of its
// state with the status changes not yet known to be published, and per partition
// its record (configuration as of its position, floor, marker). It keeps only the
// last message per subject.

// agentSnapshot is the durable copy of an agent.
type agentSnapshot struct {
	Agent  handlers.Agent   `json:"agent"`
	Outbox []state.Outgoing `json:"outbox,omitempty"`
}

func (n Names) agentSnapshotSubject(prefix string, p int, agentID string) string {
	return prefix + ".state.agent." + strconv.Itoa(p) + "." + agentID
}

func (n Names) partitionSubject(prefix string, p int) string {
	return prefix + ".state.partition." + strconv.Itoa(p)
}

// StateStream holds the durable copies the store is rebuilt from.
func (n Names) StateStream() string { return n.base + "_STATE" }

// durable strips what a rebuild does not need to restore exactly: lease
// deadlines (every live session gets a fresh lease) and the applied sequence.
func durable(a handlers.Agent) handlers.Agent {
	a.AppliedSeq = 0
	s := make([]handlers.Session, len(a.Sessions))
	for i, x := range a.Sessions {
		s[i] = handlers.Session{ID: x.ID}
	}
	a.Sessions = s
	return a
}

// snapshot queues the durable copy of agent a if it changed since before, or if
// status changes are still in its outbox.
func (w *Worker) snapshot(out *outcome, p int, before, a handlers.Agent, outbox []state.Outgoing) {
	if len(outbox) == 0 && reflect.DeepEqual(durable(before), durable(a)) {
		return
	}
	b, err := json.Marshal(agentSnapshot{Agent: a, Outbox: outbox})
	if err != nil {
		return // plain data: cannot fail
	}
	m := nats.NewMsg(w.names.agentSnapshotSubject(w.cfg.Prefix, p, a.ID))
	m.Data = b
	out.snapshots = append(out.snapshots, m)
}

// savePartition writes the partition record to the store and its durable copy.
// The write only happens if the store still holds pt.rec, checked in the same
// atomic step: a record written into a store that lost its data (even a moment
// after a check) would hide the loss from every later check.
func (pt *partition) savePartition(ctx context.Context, rec state.Partition) error {
	ok, err := pt.w.store.SwapPartition(ctx, pt.p, pt.rec, rec)
	if err != nil {
		return fmt.Errorf("save partition %d: %w", pt.p, err)
	}
	if !ok {
		return fmt.Errorf("partition %d: %w", pt.p, errStoreChanged)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode partition %d: %w", pt.p, err)
	}
	if _, err := pt.w.js.Publish(ctx, pt.w.names.partitionSubject(pt.w.cfg.Prefix, pt.p), b); err != nil {
		return fmt.Errorf("publish partition %d record: %w", pt.p, err)
	}
	pt.rec = rec
	return nil
}

// durablePartition reads the partition's durable record; ok is false when there is none.
func (pt *partition) durablePartition(ctx context.Context) (state.Partition, bool, error) {
	stream, err := pt.w.js.Stream(ctx, pt.w.names.StateStream())
	if err != nil {
		return state.Partition{}, false, fmt.Errorf("state stream: %w", err)
	}
	m, err := stream.GetLastMsgForSubject(ctx, pt.w.names.partitionSubject(pt.w.cfg.Prefix, pt.p))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return state.Partition{}, false, nil
	}
	if err != nil {
		return state.Partition{}, false, fmt.Errorf("read partition %d record: %w", pt.p, err)
	}
	var rec state.Partition
	if err := json.Unmarshal(m.Data, &rec); err != nil {
		return state.Partition{}, false, fmt.Errorf("decode partition %d record: %w", pt.p, err)
	}
	return rec, true, nil
}

// errStoreChanged means the store no longer holds what this owner wrote: it lost
// or rewound its data, or another owner took the partition.
var errStoreChanged = errors.New("state store lost or rewound this partition's data")

// verifyStore compares the store's partition record with the one this owner
// keeps; a mismatch stops the partition, and the next takeover rebuilds.
func (pt *partition) verifyStore(ctx context.Context) error {
	rec, err := pt.w.store.LoadPartition(ctx, pt.p)
	if err != nil {
		return fmt.Errorf("load partition %d: %w", pt.p, err)
	}
	if rec.Marker != pt.rec.Marker || rec.Floor < pt.rec.Floor || rec.Config.Seq < pt.rec.Config.Seq {
		pt.log.Debug("store changed under this owner", "marker", rec.Marker, "want_marker", pt.rec.Marker, "floor", rec.Floor, "want_floor", pt.rec.Floor)
		return fmt.Errorf("partition %d: %w", pt.p, errStoreChanged)
	}
	return nil
}

// stale reports whether the store's record is behind the durable one, i.e. the
// store lost data since the partition was last owned.
func stale(store, durable state.Partition) bool {
	return store.Marker == "" || store.Floor < durable.Floor || store.Config.Seq < durable.Config.Seq
}

// rebuild restores the partition's agents, outboxes, indexes and record from the
// state stream. Every live session gets a fresh lease.
func (pt *partition) rebuild(ctx context.Context, rec state.Partition) error {
	w := pt.w
	start := time.Now()
	cons, err := w.js.OrderedConsumer(ctx, w.names.StateStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{w.names.agentSnapshotSubject(w.cfg.Prefix, pt.p, "*")},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("read agent snapshots: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("read agent snapshots: %w", err)
	}
	status, err := w.js.Stream(ctx, w.names.StatusStream())
	if err != nil {
		return fmt.Errorf("status stream: %w", err)
	}
	lease := func(at time.Time) time.Time {
		if rec.Config.Settings.SessionTTL <= 0 {
			return time.Time{}
		}
		return at.Add(rec.Config.Settings.SessionTTL)
	}
	pending := info.NumPending
	var commits []state.Commit
	var index []state.IndexEntry
	flush := func() error {
		if len(commits) == 0 {
			return nil
		}
		// A commit the store refuses already holds newer state: nothing to restore.
		if _, err := w.store.Commit(ctx, commits, w.cfg.DedupeWindow); err != nil {
			return fmt.Errorf("restore agents: %w", err)
		}
		if err := w.store.Index(ctx, pt.p, index); err != nil {
			return fmt.Errorf("restore index: %w", err)
		}
		commits, index = commits[:0], index[:0]
		return nil
	}
	restored := 0
	for ; pending > 0; pending-- {
		m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			return fmt.Errorf("read agent snapshot: %w", err)
		}
		var snap agentSnapshot
		if err := json.Unmarshal(m.Data(), &snap); err != nil {
			w.log.Error("skipping unreadable agent snapshot", "subject", m.Subject(), "err", err)
			continue
		}
		a := snap.Agent
		for i := range a.Sessions {
			a.Sessions[i].Deadline = lease(start)
		}
		var outbox []state.Outgoing
		if len(snap.Outbox) > 0 {
			var last uint64
			if lm, err := status.GetLastMsgForSubject(ctx, w.names.Subjects.Status(a.ID)); err == nil {
				var st struct {
					Version uint64 `json:"version"`
				}
				_ = json.Unmarshal(lm.Data, &st)
				last = st.Version
			} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
				return fmt.Errorf("last status of %s: %w", a.ID, err)
			}
			for _, o := range snap.Outbox {
				if o.Status.Version > last {
					outbox = append(outbox, o)
				}
			}
		}
		commits = append(commits, state.Commit{Agent: a, Removed: !a.HasStatus(), Outbox: outbox})
		index = append(index,
			state.IndexEntry{AgentID: a.ID, Deadline: a.NextDeadline(), To: customID(rec.Config, a.PresenceID)},
			state.IndexEntry{AgentID: a.ID, Deadline: a.NextDeadline(), To: defaultsIndex(a.DefaultPresenceID)})
		restored++
		if len(commits) >= 500 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if _, err := w.store.SaveConfig(ctx, rec.Config); err != nil {
		return fmt.Errorf("restore config: %w", err)
	}
	w.metrics.rebuilds.Inc()
	pt.log.Warn("state store rebuilt from JetStream", "agents", restored, "took", time.Since(start))
	return nil
}
