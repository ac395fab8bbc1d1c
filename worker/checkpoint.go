package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/state"
)

// What JetStream keeps to rebuild the store (contract §5) is the input stream
// itself plus checkpoints in the state stream: per partition its record (the
// configuration as of the checkpoint, the checkpoint's input sequence and the
// dedupe keys of configuration events) and per agent the last durable copy of
// its state and dedupe entries. Every agent changed since the previous
// checkpoint gets a fresh copy before the record moves on, so the copies and the
// inputs after the record's sequence together give every agent exactly. A
// rebuild restores the copies and replays those inputs through the rules; the
// status changes they produce were published when the inputs were first
// handled, so the versions come out the same and nothing is published twice.

// agentSnapshot is the durable copy of an agent.
type agentSnapshot struct {
	Agent handlers.Agent `json:"agent"`
	// Seen is state.EncodeSeen of the agent's dedupe entries.
	Seen []byte `json:"seen,omitempty"`
	// Outbox holds the agent's committed changes not known to be published
	// when the copy was taken (after a failed publish, or a takeover).
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

// errStoreChanged means the store no longer holds what this owner wrote: it lost
// or rewound its data, or another owner took the partition.
var errStoreChanged = errors.New("state store lost or rewound this partition's data")

// rebuildMarker prefixes the marker of a record that asks for a rebuild: written
// while one runs, or by an owner that found the store behind what it wrote.
const rebuildMarker = "rebuilding/"

// A checkpoint is taken from the partition at one input sequence, between
// batches, and written while the partition handles on: written in line, the
// copies of every agent changed since the last one (hundreds of publishes and
// store writes) held the partition's next inputs back for as long, and the
// partitions of a worker, taken over together, all did so at the same moment.
// Taking it is cheap: an agent's state is never changed in place once stored in
// the partition's map (a step works on a clone), so the copy can hold it as it
// is. One checkpoint is written at a time.
type pendingCheckpoint struct {
	prev, rec state.Partition // the store's record as this owner last wrote it, and the one to write
	agents    []agentCopy
	seen      map[string][]state.Seen
	expire    map[string]time.Time
	seqs      map[string]uint64
	// drop, dirty and configDirty are the partition's at the moment taken;
	// a failed write gives them back.
	drop        map[string]uint64
	dirty       map[string]bool
	configDirty bool
	// done receives how the background write ended; cancel stops it.
	done   chan error
	cancel context.CancelFunc
}

type agentCopy struct {
	agent  handlers.Agent
	outbox []state.Outgoing
	seen   []state.Seen
}

// takeCheckpoint takes what a checkpoint at pos writes, or returns nil when
// there is nothing to write (and force is false).
func (pt *partition) takeCheckpoint(force bool) *pendingCheckpoint {
	w := pt.w
	now := time.Now()
	if !force && len(pt.dirty) == 0 && !pt.configDirty && pt.pos == pt.stored.Seq && len(pt.drop) == 0 {
		pt.lastCheckpoint = now
		return nil
	}
	c := &pendingCheckpoint{prev: pt.stored, rec: pt.rec, drop: pt.drop, dirty: pt.dirty, configDirty: pt.configDirty,
		agents: make([]agentCopy, 0, len(pt.dirty)), seen: make(map[string][]state.Seen, len(pt.dirty)),
		expire: make(map[string]time.Time, len(pt.dirty)), seqs: make(map[string]uint64, len(pt.dirty))}
	c.rec.Seq = pt.pos
	for id := range pt.dirty {
		e := pt.agents[id]
		if e == nil {
			continue
		}
		e.prune(w.cfg.DedupeWindow)
		c.agents = append(c.agents, agentCopy{agent: e.agent, outbox: e.outbox, seen: e.seen})
		if len(e.seen) > 0 {
			c.expire[id] = e.seen[len(e.seen)-1].At.Add(w.cfg.DedupeWindow)
		}
		c.seen[id] = e.seen
		c.seqs[id] = e.agent.AppliedSeq
	}
	pt.dirty = make(map[string]bool, len(pt.dirty))
	pt.drop = map[string]uint64{}
	pt.configDirty = false
	pt.lastCheckpoint, pt.sinceCheckpoint = now, 0
	return c
}

// writeCheckpoint writes durable copies of the agents changed since the last
// checkpoint, then the partition record, to JetStream and then to the store. The
// store's write is a swap against the record this owner last wrote, and it
// checks first that the store still holds what this owner committed for those
// agents: a store rewound under a running owner is caught here at the latest.
// It reads only c and what never changes in the partition, so it can run on a
// goroutine of its own.
func (pt *partition) writeCheckpoint(ctx context.Context, c *pendingCheckpoint) error {
	w := pt.w
	if err := w.hooks.beforeCheckpoint(ctx); err != nil {
		return err
	}
	msgs := make([]*nats.Msg, 0, len(c.agents))
	for _, a := range c.agents {
		// Changes not yet published go with the copy: restored over a store that
		// lost them, the agent's redelivered input finds itself applied already.
		snap := agentSnapshot{Agent: a.agent, Outbox: a.outbox}
		if len(a.seen) > 0 {
			snap.Seen = state.EncodeSeen(a.seen)
		}
		b, err := json.Marshal(snap)
		if err != nil {
			return fmt.Errorf("encode snapshot of %s: %w", a.agent.ID, err)
		}
		m := nats.NewMsg(w.names.agentSnapshotSubject(w.cfg.Prefix, pt.p, a.agent.ID))
		m.Data = b
		msgs = append(msgs, m)
	}
	// A batch's worth at a time: the room for outstanding publishes is sized
	// for every partition's wave and one such chunk beside it.
	for start := 0; start < len(msgs); start += w.cfg.BatchSize {
		if _, err := w.publishAll(ctx, msgs[start:min(start+w.cfg.BatchSize, len(msgs))]); err != nil {
			return err
		}
	}
	b, err := json.Marshal(c.rec)
	if err != nil {
		return fmt.Errorf("encode partition %d record: %w", pt.p, err)
	}
	if _, err := w.js.Publish(ctx, w.names.partitionSubject(w.cfg.Prefix, pt.p), b); err != nil {
		return w.natsFailed("publish", fmt.Errorf("publish partition %d record: %w", pt.p, err))
	}
	if err := w.store.SaveSeen(ctx, c.seen, c.expire); err != nil {
		return fmt.Errorf("save dedupe entries: %w", err)
	}
	bad, err := w.store.Verify(ctx, c.seqs)
	if err != nil {
		return fmt.Errorf("verify agents: %w", err)
	}
	if len(bad) > 0 {
		pt.log.Warn("state store does not hold what this owner committed", "agents", len(bad), "first", bad[0])
		pt.markLost(ctx)
		return fmt.Errorf("partition %d: %w", pt.p, errStoreChanged)
	}
	// Only now: an outbox may hold the only stored copy of dedupe entries, which
	// SaveSeen has just written. An agent committed since the checkpoint was
	// taken keeps its outbox: the drop is a compare-and-set on the sequence.
	if len(c.drop) > 0 {
		if err := w.store.DropOutbox(ctx, c.drop); err != nil {
			return fmt.Errorf("drop published outboxes: %w", err)
		}
	}
	ok, err := w.store.SwapPartition(ctx, pt.p, c.prev, c.rec)
	if err != nil {
		return fmt.Errorf("save partition %d: %w", pt.p, err)
	}
	if !ok {
		return fmt.Errorf("partition %d: %w", pt.p, errStoreChanged)
	}
	return nil
}

// landCheckpoint records in the partition how the write of c ended. Landed: the
// store holds c's record, the dedupe entries it saved need not go with the
// agents' next commits, and the outboxes it dropped are gone unless the agent
// was committed since. Failed: what it would have written is to write again.
func (pt *partition) landCheckpoint(c *pendingCheckpoint, err error) {
	if err != nil {
		for id := range c.dirty {
			pt.dirty[id] = true
		}
		for id, seq := range c.drop {
			if _, newer := pt.drop[id]; !newer {
				if e := pt.agents[id]; e != nil && e.outboxStored && e.agent.AppliedSeq == seq {
					pt.drop[id] = seq
				}
			}
		}
		pt.configDirty = pt.configDirty || c.configDirty
		return
	}
	pt.stored = c.rec
	pt.rec.Seq = c.rec.Seq
	for id, seen := range c.seen {
		if e := pt.agents[id]; e != nil {
			e.saved = max(e.saved, savedPrefix(e.seen, seen))
		}
	}
	for id, seq := range c.drop {
		if e := pt.agents[id]; e != nil && e.agent.AppliedSeq == seq {
			e.outboxStored = false
		}
	}
}

// savedPrefix returns how many of the dedupe entries now held (oldest first) are
// among saved, the entries as a checkpoint took them: since then the front may
// have left the window and newer entries come after.
func savedPrefix(now, saved []state.Seen) int {
	if len(saved) == 0 {
		return 0
	}
	last := saved[len(saved)-1]
	for i, s := range now {
		if s.Key == last.Key && s.At.Equal(last.At) {
			return i + 1
		}
	}
	return 0
}

// checkpoint takes a checkpoint and writes it in line: on taking a partition
// over, and as its last act.
func (pt *partition) checkpoint(ctx context.Context, force bool) error {
	c := pt.takeCheckpoint(force)
	if c == nil {
		return nil
	}
	err := pt.writeCheckpoint(ctx, c)
	pt.landCheckpoint(c, err)
	return err
}

// swap replaces the store's partition record with rec, against the record this
// owner last wrote; a store holding another one changed under the owner.
func (pt *partition) swap(ctx context.Context, rec state.Partition) error {
	ok, err := pt.w.store.SwapPartition(ctx, pt.p, pt.stored, rec)
	if err != nil {
		return fmt.Errorf("save partition %d: %w", pt.p, err)
	}
	if !ok {
		return fmt.Errorf("partition %d: %w", pt.p, errStoreChanged)
	}
	pt.stored, pt.rec = rec, rec
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
	rec, err := state.DecodePartition(m.Data)
	if err != nil {
		return state.Partition{}, false, fmt.Errorf("partition %d record: %w", pt.p, err)
	}
	return rec, true, nil
}

// verifyStore compares the store's partition record with the one this owner
// last wrote; a mismatch stops the partition, and the next takeover rebuilds.
func (pt *partition) verifyStore(ctx context.Context) error {
	rec, _, err := pt.w.store.LoadPartition(ctx, pt.p)
	if err != nil {
		return fmt.Errorf("load partition %d: %w", pt.p, err)
	}
	if rec.Marker != pt.stored.Marker || rec.Seq < pt.stored.Seq {
		pt.log.Warn("state store changed under this owner", "marker", rec.Marker, "want_marker", pt.stored.Marker,
			"checkpoint", rec.Seq, "want_checkpoint", pt.stored.Seq)
		return fmt.Errorf("partition %d: %w", pt.p, errStoreChanged)
	}
	return nil
}

// markLost leaves the store's partition record marked as needing a rebuild. The
// record itself may look whole (a store restored from a copy taken after the
// last checkpoint), so without the mark the next owner would trust it.
func (pt *partition) markLost(ctx context.Context) {
	rec, _, err := pt.w.store.LoadPartition(ctx, pt.p)
	if err != nil {
		return // the takeover checks again; a store that cannot answer is retried there
	}
	lost := rec
	lost.Marker = rebuildMarker + "lost"
	if _, err := pt.w.store.SwapPartition(ctx, pt.p, rec, lost); err != nil {
		pt.log.Warn("mark partition for rebuild", "err", err)
	}
}

// restore writes the agents' durable copies into the store wherever it holds an
// older state (or none), with their indexes and dedupe entries, and takes the
// durable record as the partition's. It first swaps the store's record for one
// marked as rebuilding, so that the takeover's final checkpoint lands only if
// the store kept what the restore wrote: a store emptied again meanwhile holds
// no record, and the swap against the rebuilding one fails.
func (pt *partition) restore(ctx context.Context, durable state.Partition) error {
	w := pt.w
	start := time.Now()
	pending := durable
	pending.Marker = fmt.Sprintf("%s%s/%d", rebuildMarker, w.cfg.InstanceID, pt.rev)
	if err := pt.swap(ctx, pending); err != nil {
		return err
	}
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
	cfg := durable.Config
	var commits []state.Commit
	var index []state.IndexEntry
	seen := map[string][]state.Seen{}
	expire := map[string]time.Time{}
	flush := func() error {
		if len(commits) == 0 {
			return nil
		}
		// A commit the store refuses already holds newer state: nothing to restore.
		if _, err := w.store.Commit(ctx, pt.p, commits, index); err != nil {
			return fmt.Errorf("restore agents: %w", err)
		}
		if err := w.store.SaveSeen(ctx, seen, expire); err != nil {
			return fmt.Errorf("restore dedupe entries: %w", err)
		}
		commits, index = commits[:0], index[:0]
		clear(seen)
		clear(expire)
		return nil
	}
	restored := 0
	for pending := info.NumPending; pending > 0; pending-- {
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
		if a.ID == "" || a.AppliedSeq == 0 {
			continue
		}
		freshen(&a, cfg.Settings, start)
		commits = append(commits, state.Commit{Agent: a, Restore: true, Outbox: snap.Outbox})
		index = append(index,
			state.IndexEntry{AgentID: a.ID, Lease: true, Deadline: a.NextDeadline()},
			state.IndexEntry{AgentID: a.ID, To: customID(cfg, a.PresenceID)},
			state.IndexEntry{AgentID: a.ID, To: defaultsIndex(a.DefaultPresenceID)})
		if entries, err := state.DecodeSeen(snap.Seen); err == nil && len(entries) > 0 {
			seen[a.ID] = entries
			expire[a.ID] = entries[len(entries)-1].At.Add(w.cfg.DedupeWindow)
		}
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
	if _, err := w.store.SaveConfig(ctx, cfg); err != nil {
		return fmt.Errorf("restore config: %w", err)
	}
	clear(pt.agents)
	pt.log.Warn("agents restored from JetStream", "agents", restored, "checkpoint", durable.Seq, "took", time.Since(start))
	return nil
}

// freshen gives every live session of a the fresh lease a repair owes it
// (contract §5): a session whose lease had not run out by the repair runs for a
// full TTL from then. Leases that had run out stay as they were, so inputs
// stored before the repair are judged as they were the first time.
func freshen(a *handlers.Agent, s handlers.Settings, at time.Time) bool {
	if s.SessionTTL <= 0 {
		return false
	}
	changed := false
	for i, sess := range a.Sessions {
		if d := at.Add(s.SessionTTL); !sess.Deadline.IsZero() && sess.Deadline.After(at) && sess.Deadline.Before(d) {
			a.Sessions[i].Deadline = d
			changed = true
		}
	}
	return changed
}

// freshLeases applies freshen to the agents a replay brought up to date.
func (pt *partition) freshLeases(ctx context.Context) error {
	now := time.Now()
	s := newStep()
	for _, cur := range pt.agents {
		e := cur.clone()
		e.agent.Sessions = append([]handlers.Session(nil), e.agent.Sessions...)
		if freshen(&e.agent, pt.rec.Config.Settings, now) {
			pt.plan(s, pt.rec.Config, cur, e, false, false)
		}
	}
	if len(s.commits) == 0 {
		return nil
	}
	ok, err := pt.w.store.Commit(ctx, pt.p, s.commits, s.index)
	if err != nil {
		return fmt.Errorf("fresh leases: %w", err)
	}
	for i, applied := range ok {
		if !applied {
			return fmt.Errorf("partition %d: agent %s: %w", pt.p, s.commits[i].Agent.ID, errStoreChanged)
		}
	}
	for id, e := range s.after {
		pt.agents[id] = e
	}
	return nil
}

// replay brings the store up to upTo by handling the partition's inputs and the
// configuration events in (from, upTo] again, without publishing: every one of
// them was handled, published and acknowledged before. What the store already
// holds is recognised by the agents' sequences and left as it is; what it lost
// is written again. Every agent it meets gets a durable copy at the next
// checkpoint.
func (pt *partition) replay(ctx context.Context, from, upTo uint64) error {
	w := pt.w
	pt.pos = max(pt.pos, from)
	if upTo <= from {
		return nil
	}
	start := time.Now()
	pt.replaying = true
	defer func() { pt.replaying = false }()
	cons, err := w.js.OrderedConsumer(ctx, w.names.InputStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{fmt.Sprintf("%s.in.*.%d.*", w.cfg.Prefix, pt.p), w.names.Subjects.Config()},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from + 1,
	})
	if err != nil {
		return fmt.Errorf("replay partition %d: %w", pt.p, err)
	}
	n := 0
	for done := false; !done; {
		batch, err := cons.Fetch(w.cfg.BatchSize, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("replay partition %d: %w", pt.p, err)
		}
		var items []item
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("replay partition %d: %w", pt.p, err)
			}
			if meta.Sequence.Stream > upTo {
				done = true
				break
			}
			it := item{header: m.Headers(), data: m.Data()}
			w.decodeStored(&it, m.Subject(), meta.Sequence.Stream, meta.Timestamp)
			items = append(items, it)
			if meta.Sequence.Stream == upTo || meta.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("replay partition %d: %w", pt.p, err)
		}
		if got == 0 {
			break // nothing more stored: the rest of the range holds no input of this partition
		}
		if len(items) > 0 {
			if err := pt.handle(ctx, items, items[len(items)-1].ev.Seq); err != nil {
				return err
			}
			n += len(items)
		}
	}
	pt.pos = max(pt.pos, upTo)
	pt.log.Info("partition replayed", "from", from+1, "to", upTo, "inputs", n, "took", time.Since(start))
	return nil
}
