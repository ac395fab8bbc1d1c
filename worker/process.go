package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/state"
)

// item is one input message of a batch, decoded.
type item struct {
	// msg is the consumer's message to acknowledge; nil for configuration events,
	// which every partition reads from the stream itself.
	msg     jetstream.Msg
	subject string // as published
	header  nats.Header
	data    []byte
	ev      events.Event
	rej     *events.Rejection
}

// outcome collects what a segment of a batch must publish and acknowledge once
// its state is committed.
type outcome struct {
	commits   []state.Commit
	outgoing  []state.Outgoing
	rejected  []*nats.Msg
	acked     map[string]uint64 // agent -> highest version to drop from the outbox
	index     []state.IndexEntry
	purge     []string // agents whose status subject keeps only the last message
	ack, term []jetstream.Msg
	// byAgent holds each agent's status changes of this segment, for its snapshot.
	byAgent   map[string][]state.Outgoing
	snapshots []*nats.Msg
}

func newOutcome() *outcome {
	return &outcome{acked: map[string]uint64{}, byAgent: map[string][]state.Outgoing{}}
}

func (w *Worker) decode(m jetstream.Msg) item {
	it := item{msg: m, header: m.Headers(), data: m.Data()}
	meta, err := m.Metadata()
	if err != nil {
		it.rej = events.Reject(events.CodeMalformed, "no JetStream metadata: "+err.Error())
		return it
	}
	it.subject, _ = logicalSubject(w.cfg.Prefix, m.Subject())
	w.decodeItem(&it, meta.Sequence.Stream, meta.Timestamp)
	return it
}

func (w *Worker) decodeItem(it *item, seq uint64, stored time.Time) {
	ev, rej := w.names.Subjects.Decode(it.subject, it.header, it.data)
	ev.Seq, ev.Stored = seq, stored.UTC()
	it.ev, it.rej = ev, rej
}

// configUpTo reads the configuration events stored after the last one this
// partition handled and at or before upTo. Partition consumers filter on their own
// subjects only (a second filter subject makes the server's next-message lookup far
// costlier); configuration is rare, so each partition merges it in itself.
func (pt *partition) configUpTo(ctx context.Context, upTo uint64) ([]item, error) {
	w := pt.w
	subject := w.names.Subjects.Config()
	var out []item
	for next := pt.rec.Config.Seq + 1; next <= upTo; {
		raw, err := pt.input.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read configuration after %d: %w", next-1, err)
		}
		if raw.Sequence > upTo {
			break
		}
		it := item{subject: subject, header: raw.Header, data: raw.Data}
		w.decodeItem(&it, raw.Sequence, raw.Time)
		out = append(out, it)
		next = raw.Sequence + 1
	}
	return out, nil
}

// merge orders the partition's messages and configuration events by sequence.
func merge(agents, config []item) []item {
	if len(config) == 0 {
		return agents
	}
	out := make([]item, 0, len(agents)+len(config))
	i, j := 0, 0
	for i < len(agents) || j < len(config) {
		if j == len(config) || (i < len(agents) && agents[i].ev.Seq < config[j].ev.Seq) {
			out = append(out, agents[i])
			i++
		} else {
			out = append(out, config[j])
			j++
		}
	}
	return out
}

// handle processes the partition's messages up to sequence upTo, with the
// configuration events stored up to there: configuration events act as barriers,
// so every agent event is judged with the configuration that preceded it in the
// stream.
func (pt *partition) handle(ctx context.Context, own []item, upTo uint64) (err error) {
	if err := pt.verifyStore(ctx); err != nil {
		return err
	}
	config, err := pt.configUpTo(ctx, upTo)
	if err != nil {
		return err
	}
	items := merge(own, config)
	defer func() {
		if err != nil {
			return // observed once, when the retry succeeds
		}
		now := time.Now()
		for _, it := range items {
			if !it.ev.Stored.IsZero() {
				pt.w.metrics.latency.Observe(now.Sub(it.ev.Stored).Seconds())
			}
		}
	}()
	for start := 0; start < len(items); {
		if items[start].msg == nil { // read from the configuration subject
			if err := pt.handleConfig(ctx, items[start]); err != nil {
				return err
			}
			start++
			continue
		}
		end := start + 1
		for end < len(items) && items[end].msg != nil {
			end++
		}
		if err := pt.handleAgents(ctx, items[start:end]); err != nil {
			return err
		}
		start = end
	}
	// The floor moves with every batch: a store restored from an older snapshot
	// then shows a lower floor than this owner holds, and the loss is detected.
	if len(own) == 0 || own[len(own)-1].ev.Seq <= pt.rec.Floor {
		return nil
	}
	rec := pt.rec
	rec.Floor = own[len(own)-1].ev.Seq
	return pt.savePartition(ctx, rec)
}

func dedupeKey(ev events.Event) string { return ev.Source + "\x00" + ev.ID }

func (w *Worker) reject(out *outcome, it item, rej *events.Rejection) {
	out.rejected = append(out.rejected, w.names.Subjects.EncodeRejected(w.cfg.Source, w.names.InputStream(), it.ev.Seq, it.subject, it.header, it.data, rej))
	out.term = append(out.term, it.msg)
	w.metrics.rejected.WithLabelValues(string(rej.Code)).Inc()
}

// record queues the status changes of one agent step with its commit.
func (w *Worker) record(out *outcome, c state.Commit, changes []events.StatusChanged) {
	for _, st := range changes {
		c.Outbox = append(c.Outbox, state.Outgoing{ID: events.StatusID(st.Cause, st.AgentID, st.Version), Status: st, TraceParent: st.TraceParent})
		if st.Reason == events.ReasonAgentRemoved {
			out.purge = append(out.purge, st.AgentID)
		}
	}
	out.outgoing = append(out.outgoing, c.Outbox...)
	out.byAgent[c.Agent.ID] = append(out.byAgent[c.Agent.ID], c.Outbox...)
	out.commits = append(out.commits, c)
}

func customID(cfg handlers.Config, id string) string {
	if _, ok := cfg.Custom[id]; ok {
		return id
	}
	return ""
}

// defaultsIndex names the index of agents whose own default is a presence; the
// colon cannot occur in a presence id.
func defaultsIndex(id string) string {
	if id == "" {
		return ""
	}
	return "default:" + id
}

// indexAgents queues the index moves of agents from their loaded to their final state.
func indexAgents(out *outcome, cfg handlers.Config, before, after map[string]handlers.Agent) {
	for id, a := range after {
		b := before[id]
		out.index = append(out.index,
			state.IndexEntry{AgentID: id, Deadline: a.NextDeadline(), From: b.PresenceID, To: customID(cfg, a.PresenceID)},
			state.IndexEntry{AgentID: id, Deadline: a.NextDeadline(), From: defaultsIndex(b.DefaultPresenceID), To: defaultsIndex(a.DefaultPresenceID)})
	}
}

func (pt *partition) handleAgents(ctx context.Context, items []item) error {
	w := pt.w
	cfg := pt.rec.Config
	out := newOutcome()
	var reqs []state.LoadRequest
	pos := map[string]int{}
	for _, it := range items {
		if it.rej != nil {
			continue
		}
		i, ok := pos[it.ev.AgentID]
		if !ok {
			i = len(reqs)
			pos[it.ev.AgentID] = i
			reqs = append(reqs, state.LoadRequest{AgentID: it.ev.AgentID})
		}
		reqs[i].DedupeKeys = append(reqs[i].DedupeKeys, dedupeKey(it.ev))
	}
	snaps, err := w.store.Load(ctx, reqs)
	if err != nil {
		return fmt.Errorf("load agents: %w", err)
	}
	// Checked after loading, so agents read from a store that lost its data are never used.
	if err := pt.verifyStore(ctx); err != nil {
		return err
	}
	before := make(map[string]handlers.Agent, len(snaps))
	leftovers := make(map[string][]state.Outgoing)
	changed := map[string]handlers.Agent{}
	redelivered := map[string]bool{}
	cur := make(map[string]handlers.Agent, len(snaps))
	seen := make(map[string]map[string]bool, len(snaps))
	for _, s := range snaps {
		before[s.Agent.ID], cur[s.Agent.ID], seen[s.Agent.ID] = s.Agent, s.Agent, s.Seen
		if seen[s.Agent.ID] == nil {
			seen[s.Agent.ID] = map[string]bool{}
		}
		// Changes recorded by an earlier attempt that died before publishing them.
		out.outgoing = append(out.outgoing, s.Outbox...)
		if len(s.Outbox) > 0 {
			leftovers[s.Agent.ID] = s.Outbox
			changed[s.Agent.ID] = s.Agent
		}
	}
	for _, it := range items {
		if it.rej != nil {
			w.reject(out, it, it.rej)
			continue
		}
		id := it.ev.AgentID
		a := cur[id]
		if it.ev.Seq <= a.AppliedSeq {
			// Applied by an attempt that died before acknowledging: what came after
			// the commit (indexes, durable copy) is redone, as it may be missing.
			redelivered[id] = true
			changed[id] = a
			out.ack = append(out.ack, it.msg)
			w.metrics.events.WithLabelValues(string(it.ev.Type), "redelivered").Inc()
			continue
		}
		key := dedupeKey(it.ev)
		if seen[id][key] {
			a.AppliedSeq = it.ev.Seq
			w.record(out, state.Commit{Agent: a}, nil)
			cur[id], changed[id] = a, a
			out.ack = append(out.ack, it.msg)
			w.metrics.events.WithLabelValues(string(it.ev.Type), "duplicate").Inc()
			continue
		}
		next, changes, err := w.rules.Apply(cfg, a, it.ev)
		var rej *events.Rejection
		if errors.As(err, &rej) {
			pt.log.Debug("rejected", "id", it.ev.ID, "source", it.ev.Source, "type", it.ev.Type, "agent", id, "code", rej.Code, "seq", it.ev.Seq)
			// Remember the sequence so a redelivery is not judged again later.
			a.AppliedSeq = it.ev.Seq
			w.record(out, state.Commit{Agent: a}, nil)
			cur[id], changed[id] = a, a
			w.reject(out, it, rej)
			continue
		} else if err != nil {
			return fmt.Errorf("apply %s: %w", it.ev.Type, err)
		}
		seen[id][key] = true
		w.record(out, state.Commit{Agent: next, DedupeKey: key, DedupeAt: it.ev.Stored}, changes)
		cur[id], changed[id] = next, next
		out.ack = append(out.ack, it.msg)
		w.metrics.events.WithLabelValues(string(it.ev.Type), "applied").Inc()
	}
	indexAgents(out, cfg, before, changed)
	for id, a := range changed {
		b := before[id]
		if redelivered[id] {
			b = handlers.Agent{}
		}
		w.snapshot(out, pt.p, b, a, append(leftovers[id], out.byAgent[id]...))
	}
	return w.finish(ctx, pt.p, out)
}

func (pt *partition) handleConfig(ctx context.Context, it item) error {
	w := pt.w
	ev := it.ev
	rec := pt.rec
	if ev.Seq <= rec.Config.Seq {
		return ackAll([]jetstream.Msg{it.msg}, nil)
	}
	out := newOutcome()
	next := state.Partition{Config: rec.Config.Clone(), Seen: map[string]time.Time{}, Floor: rec.Floor, Marker: rec.Marker}
	for k, t := range rec.Seen {
		if ev.Stored.Sub(t) < w.cfg.DedupeWindow {
			next.Seen[k] = t
		}
	}
	key := dedupeKey(ev)
	var cfg handlers.Config
	var err error
	rej := it.rej
	if rej == nil {
		cfg, err = w.rules.Configure(rec.Config, ev)
	}
	switch {
	case rej != nil:
		w.reject(out, it, rej)
	case next.Seen[key] != (time.Time{}):
		w.metrics.events.WithLabelValues(string(ev.Type), "duplicate").Inc()
		out.ack = append(out.ack, it.msg)
	case errors.As(err, &rej):
		w.reject(out, it, rej)
	case err != nil:
		return fmt.Errorf("configure %s: %w", ev.Type, err)
	default:
		if err := pt.reconfigureAgents(ctx, out, rec.Config, cfg, ev); err != nil {
			return err
		}
		next.Config = cfg
		next.Seen[key] = ev.Stored
		out.ack = append(out.ack, it.msg)
		w.metrics.events.WithLabelValues(string(ev.Type), "applied").Inc()
	}
	next.Config.Seq = ev.Seq
	// Saved before the status changes go out, so a client that saw them finds the
	// new configuration on the presences query.
	if _, err := w.store.SaveConfig(ctx, next.Config); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if err := w.finish(ctx, pt.p, out); err != nil {
		return err
	}
	return pt.savePartition(ctx, next)
}

// reconfigureAgents applies an accepted configuration event to the agents of this
// partition it concerns.
func (pt *partition) reconfigureAgents(ctx context.Context, out *outcome, before, after handlers.Config, ev events.Event) error {
	w := pt.w
	var ids []string
	switch d := ev.Data.(type) {
	case events.PresenceConfiguredData, events.PresenceRemovedData:
		pid := ""
		if c, ok := d.(events.PresenceConfiguredData); ok {
			pid = c.ID
		} else {
			pid = d.(events.PresenceRemovedData).ID
		}
		for _, idx := range []string{pid, defaultsIndex(pid)} {
			got, err := w.store.AgentsIn(ctx, pt.p, idx)
			if err != nil {
				return fmt.Errorf("agents in %s: %w", idx, err)
			}
			ids = append(ids, got...)
		}
		// An empty answer from a store that lost its data must not pass for "nobody".
		if err := pt.verifyStore(ctx); err != nil {
			return err
		}
	case events.AgentConfiguredData, events.AgentRemovedData:
		if PartitionOf(ev.AgentID, w.cfg.Partitions) == pt.p {
			ids = []string{ev.AgentID}
		}
	}
	if len(ids) == 0 {
		return nil
	}
	reqs := make([]state.LoadRequest, 0, len(ids))
	dup := map[string]bool{}
	for _, id := range ids {
		if !dup[id] {
			dup[id] = true
			reqs = append(reqs, state.LoadRequest{AgentID: id})
		}
	}
	snaps, err := w.store.Load(ctx, reqs)
	if err != nil {
		return fmt.Errorf("load agents: %w", err)
	}
	if err := pt.verifyStore(ctx); err != nil {
		return err
	}
	beforeA, changed := map[string]handlers.Agent{}, map[string]handlers.Agent{}
	for _, s := range snaps {
		out.outgoing = append(out.outgoing, s.Outbox...)
		if ev.Seq <= s.Agent.AppliedSeq {
			if len(s.Outbox) > 0 {
				w.snapshot(out, pt.p, s.Agent, s.Agent, s.Outbox)
			}
			continue
		}
		a, changes := w.rules.Reconfigure(before, after, s.Agent, ev)
		w.record(out, state.Commit{Agent: a, Removed: ev.Type == events.AgentRemoved}, changes)
		w.snapshot(out, pt.p, s.Agent, a, append(s.Outbox, out.byAgent[a.ID]...))
		beforeA[a.ID], changed[a.ID] = s.Agent, a
	}
	indexAgents(out, after, beforeA, changed)
	return nil
}

// finish commits, publishes and acknowledges what a segment produced, in that
// order: a crash anywhere before the end leaves messages unacknowledged, and
// their redelivery finds the commit done and the outbox still to publish.
func (w *Worker) finish(ctx context.Context, p int, out *outcome) error {
	if len(out.commits) > 0 {
		ok, err := w.store.Commit(ctx, out.commits, w.cfg.DedupeWindow)
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		for i, applied := range ok {
			if !applied {
				return fmt.Errorf("commit of agent %s at sequence %d lost to another writer", out.commits[i].Agent.ID, out.commits[i].Agent.AppliedSeq)
			}
		}
	}
	if err := w.hooks.afterCommit(ctx); err != nil {
		return err
	}
	// Durable copies go first: once a status is out, a rebuild must know its version.
	if err := w.publishAll(ctx, out.snapshots); err != nil {
		return err
	}
	msgs := make([]*nats.Msg, 0, len(out.outgoing)+len(out.rejected))
	for _, o := range out.outgoing {
		st := o.Status
		st.TraceParent = o.TraceParent
		msgs = append(msgs, w.names.Subjects.EncodeStatus(w.cfg.Source, o.ID, st))
		if v := out.acked[st.AgentID]; st.Version > v {
			out.acked[st.AgentID] = st.Version
		}
	}
	msgs = append(msgs, out.rejected...)
	if err := w.publishAll(ctx, msgs); err != nil {
		return err
	}
	w.metrics.published.Add(float64(len(out.outgoing)))
	if len(out.purge) > 0 {
		stream, err := w.js.Stream(ctx, w.names.StatusStream())
		if err != nil {
			return fmt.Errorf("status stream: %w", err)
		}
		for _, id := range out.purge {
			if err := stream.Purge(ctx, jetstream.WithPurgeSubject(w.names.Subjects.Status(id)), jetstream.WithPurgeKeep(1)); err != nil {
				return fmt.Errorf("purge status of %s: %w", id, err)
			}
		}
	}
	if len(out.acked) > 0 {
		if err := w.store.AckOutbox(ctx, out.acked); err != nil {
			return fmt.Errorf("ack outbox: %w", err)
		}
	}
	if len(out.index) > 0 {
		if err := w.store.Index(ctx, p, out.index); err != nil {
			return fmt.Errorf("index: %w", err)
		}
	}
	return ackAll(out.ack, out.term)
}

// publishAll publishes msgs in order and waits for every acknowledgement. On a
// failure the caller retries the whole list; JetStream drops the copies that
// already made it by their Nats-Msg-Id.
func (w *Worker) publishAll(ctx context.Context, msgs []*nats.Msg) error {
	if len(msgs) == 0 {
		return nil
	}
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		f, err := w.js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("publish %s: %w", m.Subject, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
		case <-ctx.Done():
			return fmt.Errorf("publish: %w", ctx.Err())
		}
	}
	return nil
}

func ackAll(ack, term []jetstream.Msg) error {
	for _, m := range ack {
		if m == nil {
			continue // a configuration event read from the stream, not delivered
		}
		if err := m.Ack(); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
	}
	for _, m := range term {
		if m == nil {
			continue
		}
		if err := m.Term(); err != nil {
			return fmt.Errorf("term: %w", err)
		}
	}
	return nil
}
