package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/state"
)

// item is one input message of a batch, decoded.
type item struct {
	// msg is the consumer's message; nil for configuration events, which every
	// partition reads from the stream itself, and during a replay.
	msg     jetstream.Msg
	config  bool   // from the configuration subject
	subject string // as published
	header  nats.Header
	data    []byte
	ev      events.Event
	rej     *events.Rejection
	pending uint64 // messages left in the partition's consumer after this one
}

// decode decodes a message of the partition's consumer, whose metadata (or the
// error reading it) the caller parsed.
func (w *Worker) decode(m jetstream.Msg, meta *jetstream.MsgMetadata, err error) item {
	it := item{msg: m, header: m.Headers(), data: m.Data()}
	if err != nil {
		it.rej = events.Reject(events.CodeMalformed, "no JetStream metadata: "+err.Error())
		return it
	}
	w.decodeStored(&it, m.Subject(), meta.Sequence.Stream, meta.Timestamp)
	it.pending = meta.NumPending
	return it
}

// decodeStored decodes an input as the stream stored it (subject with the
// partition token).
func (w *Worker) decodeStored(it *item, stored string, seq uint64, at time.Time) {
	subject, part := logicalSubject(w.cfg.Prefix, stored)
	it.subject = subject
	it.config = subject == w.names.Subjects.Config()
	w.decodeItem(it, seq, at)
	// A producer can publish a subject that already has a partition token (five
	// tokens: the transform leaves it as it is). Applied here, it would give the
	// agent a second writer whenever the token is not the agent's partition.
	if it.rej == nil && part >= 0 && it.ev.AgentID != "" && part != PartitionOf(it.ev.AgentID, w.cfg.Partitions) {
		it.rej = events.Reject(events.CodeWrongSubject, fmt.Sprintf("subject %s names partition %d, not the agent's; publish on %s",
			stored, part, subject))
		it.subject = stored // as published: the transform left it as it was
	}
}

func (w *Worker) decodeItem(it *item, seq uint64, stored time.Time) {
	ev, rej := w.names.Subjects.Decode(it.subject, it.header, it.data)
	ev.Seq, ev.Stored = seq, stored.UTC()
	it.ev, it.rej = ev, rej
}

// configUpTo returns the configuration events stored after the last one this
// partition handled and at or before upTo. Partition consumers filter on their own
// subjects only (a second filter subject makes the server's next-message lookup far
// costlier); configuration is rare, so each partition merges it in itself, from
// reads the worker's partitions share.
func (pt *partition) configUpTo(ctx context.Context, upTo uint64, anchor string) ([]item, error) {
	w := pt.w
	raw, err := w.configs.upTo(ctx, pt.input, pt.rec.Config.Seq+1, upTo, anchor)
	if err != nil {
		return nil, w.natsFailed("read_config", err)
	}
	out := make([]item, 0, len(raw))
	for _, m := range raw {
		it := item{subject: w.names.Subjects.Config(), config: true, header: m.Header, data: m.Data}
		w.decodeItem(&it, m.Sequence, m.Time)
		out = append(out, it)
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

// handle processes items (the partition's messages, or during a replay its
// messages and the configuration events among them, in stream order) up to
// sequence upTo, merging in the configuration events stored up to there:
// configuration events act as barriers, so every agent event is judged with the
// configuration that preceded it in the stream. It is safe to call again with
// the same items after a failure: what was committed is recognised by the
// sequences the owner holds, and what is still to publish is in its outboxes.
func (pt *partition) handle(ctx context.Context, own []item, upTo uint64) (err error) {
	items := own
	if !pt.replaying {
		timer := prometheus.NewTimer(pt.w.metrics.stepConfig)
		anchor := ""
		if n := len(own); n > 0 && own[n-1].msg != nil {
			anchor = own[n-1].msg.Subject() // stored, so the stream has it
		}
		config, err := pt.configUpTo(ctx, upTo, anchor)
		if err != nil {
			return err
		}
		timer.ObserveDuration()
		items = merge(own, config)
	}
	defer func() {
		if err != nil || pt.replaying {
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
		if items[start].config {
			if err := pt.handleConfig(ctx, items[start]); err != nil {
				return err
			}
			start++
			continue
		}
		end := start + 1
		for end < len(items) && !items[end].config {
			end++
		}
		if err := pt.handleAgents(ctx, items[start:end]); err != nil {
			return err
		}
		start = end
	}
	pt.pos = max(pt.pos, upTo)
	return nil
}

// step is what a segment of a batch commits, publishes and acknowledges.
type step struct {
	commits []state.Commit
	after   map[string]*agentEntry // the entries once the commits are applied
	// out holds the status changes to publish per agent, in version order, and
	// order the agents in the order they came.
	out      map[string][]state.Outgoing
	order    []string
	rejected []*nats.Msg
	index    []state.IndexEntry
	purge    []string // agents whose status subject keeps only the last message
	last     jetstream.Msg
	spans    []trace.Span
}

func newStep() *step {
	return &step{after: map[string]*agentEntry{}, out: map[string][]state.Outgoing{}}
}

func (s *step) emit(id string, o ...state.Outgoing) {
	prev, ok := s.out[id]
	if !ok {
		s.order = append(s.order, id)
		s.out[id] = o // only read from here on, so shared, not copied
		return
	}
	s.out[id] = append(prev[:len(prev):len(prev)], o...)
}

func (pt *partition) reject(s *step, it item, rej *events.Rejection) {
	if pt.replaying {
		return // its dead letter went out the first time
	}
	w := pt.w
	s.rejected = append(s.rejected, w.names.Subjects.EncodeRejected(w.cfg.Source, w.names.InputStream(), it.ev.Seq, it.subject, it.header, it.data, rej))
	w.metrics.rejected.WithLabelValues(string(rej.Code)).Inc()
}

// count counts an input by outcome, once: not again when a replay meets it.
func (pt *partition) count(typ events.Type, outcome string) {
	if !pt.replaying {
		pt.w.metrics.events.WithLabelValues(string(typ), outcome).Inc()
	}
}

// outgoing turns the status changes of one rule application into outbox entries.
func outgoing(changes []events.StatusChanged) []state.Outgoing {
	out := make([]state.Outgoing, len(changes))
	for i, st := range changes {
		out[i] = state.Outgoing{ID: events.StatusID(st.Cause, st.AgentID, st.Version), Status: st, TraceParent: st.TraceParent,
			Data: events.MarshalStatus(&st)}
	}
	return out
}

func (pt *partition) handleAgents(ctx context.Context, items []item) (err error) {
	w := pt.w
	cfg := pt.rec.Config
	var ids []string
	for _, it := range items {
		if it.rej == nil {
			ids = append(ids, it.ev.AgentID)
		}
	}
	timer := prometheus.NewTimer(w.metrics.stepLoad)
	if err := pt.load(ctx, ids); err != nil {
		return err
	}
	timer.ObserveDuration()
	s := newStep()
	defer func() { endSpans(s.spans, err) }()
	work := make(map[string]*agentEntry, len(ids))
	applied := map[string]bool{}
	for _, it := range items {
		if it.msg != nil {
			s.last = it.msg
		}
		if it.rej != nil {
			pt.reject(s, it, it.rej)
			continue
		}
		id := it.ev.AgentID
		e := work[id]
		if e == nil {
			e = pt.agents[id].clone()
			work[id] = e
		}
		if it.ev.Seq <= e.seq {
			// Handled before (by an attempt that failed later, or by the previous
			// owner): what it committed and did not publish is in the outbox.
			pt.count(it.ev.Type, "redelivered")
			continue
		}
		if it.ev.Seq <= pt.uncertainUpTo && !pt.replaying {
			// The previous owner was given this input: it may have published
			// changes of it that the store lost.
			e.uncertain = true
		}
		e.seq = it.ev.Seq
		key := state.DedupeKey(it.ev.Source, it.ev.ID)
		if e.seenWithin(key, it.ev.Stored, w.cfg.DedupeWindow) {
			pt.count(it.ev.Type, "duplicate")
			continue
		}
		if !pt.replaying {
			if span := w.startSpan(&it, pt.p); span != nil {
				s.spans = append(s.spans, span)
			}
		}
		next, changes, err := w.rules.Apply(cfg, e.agent, it.ev)
		if err != nil {
			// Declared here: the target errors.As is given moves to the heap,
			// which would cost every applied event an allocation.
			var rej *events.Rejection
			if !errors.As(err, &rej) {
				return fmt.Errorf("apply %s: %w", it.ev.Type, err)
			}
			pt.log.Debug("rejected", "id", it.ev.ID, "source", it.ev.Source, "type", it.ev.Type, "agent", id, "code", rej.Code, "seq", it.ev.Seq)
			pt.reject(s, it, rej)
			continue
		}
		e.seen = append(e.seen, state.Seen{Key: key, At: it.ev.Stored})
		e.agent = next
		if !pt.replaying { // a replay's changes were published the first time
			e.outbox = append(e.outbox, outgoing(changes)...)
		}
		applied[id] = true
		pt.count(it.ev.Type, "applied")
	}
	s.commits = make([]state.Commit, 0, len(work))
	for id, e := range work {
		pt.plan(s, cfg, pt.agents[id], e, applied[id], false)
	}
	return pt.finish(ctx, s)
}

// plan queues what one agent's work in a step needs: its commit when an input
// was applied to it (the commit stores its dedupe entries too) or its durable
// state changed, its index moves, and its outbox to publish.
func (pt *partition) plan(s *step, cfg handlers.Config, before, e *agentEntry, applied, removed bool) {
	e.prune(pt.w.cfg.DedupeWindow)
	commit := applied || removed || !sameDurable(before.agent, e.agent)
	if !commit {
		e.agent.AppliedSeq = before.agent.AppliedSeq // nothing written: the store keeps its sequence
	} else {
		e.agent.AppliedSeq = e.seq
		// before is not changed once planned (finish replaces it by e), so the
		// commit can point at its state.
		s.commits = append(s.commits, state.Commit{Agent: e.agent, Expect: before.agent.AppliedSeq, Before: &before.agent,
			Removed: removed, Outbox: e.outbox, Seen: e.seen[e.saved:], DropOutbox: before.outboxStored})
		e.outboxStored = len(e.outbox) > 0 || len(e.seen) > e.saved
		if removed {
			e.agent = handlers.Agent{ID: e.agent.ID, Version: e.agent.Version, AppliedSeq: e.agent.AppliedSeq}
		}
		pt.dirty[e.agent.ID] = true
	}
	s.index = append(s.index, indexMoves(cfg, before, e, time.Now())...)
	e.indexed = true
	s.after[e.agent.ID] = e
	if len(e.outbox) > 0 && !pt.replaying {
		s.emit(e.agent.ID, e.outbox...)
	}
	for _, o := range e.outbox {
		if o.Status.Reason == events.ReasonAgentRemoved {
			s.purge = append(s.purge, o.Status.AgentID)
		}
	}
}

// sameDurable reports whether two states of an agent differ at most in the
// input sequence: an input that changed nothing needs no commit (a redelivery
// judges it again, on the same state, the same way).
func sameDurable(a, b handlers.Agent) bool {
	return a.ID == b.ID && a.Version == b.Version && a.PresenceID == b.PresenceID && a.Name == b.Name &&
		a.Text == b.Text && a.BaseStatus == b.BaseStatus && a.SignedIn == b.SignedIn && a.Since.Equal(b.Since) &&
		a.Origin == b.Origin && a.Reason == b.Reason && a.Actor == b.Actor && a.DefaultPresenceID == b.DefaultPresenceID &&
		slices.EqualFunc(a.Sessions, b.Sessions, func(x, y handlers.Session) bool { return x.ID == y.ID && x.Deadline.Equal(y.Deadline) }) &&
		equalPtr(a.Capacity, b.Capacity, func(x, y handlers.Capacity) bool { return x == y }) &&
		equalPtr(a.Held, b.Held, func(x, y handlers.Held) bool {
			return x.PresenceID == y.PresenceID && x.BaseStatus == y.BaseStatus && x.Origin == y.Origin && x.ExpiredAt.Equal(y.ExpiredAt)
		})
}

func equalPtr[T any](a, b *T, eq func(T, T) bool) bool {
	if a == nil || b == nil {
		return a == b
	}
	return eq(*a, *b)
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

// indexMoves returns the index entries that move an agent from before to after:
// only what changed, or all of them the first time an owner writes the agent
// (what a previous owner wrote may be incomplete).
func indexMoves(cfg handlers.Config, before, after *agentEntry, now time.Time) []state.IndexEntry {
	b, a := before.agent, after.agent
	all := !before.indexed
	var out []state.IndexEntry
	if d := a.NextDeadline(); all || leaseIndexMoves(before.leaseIndexed, d, now) {
		out = append(out, state.IndexEntry{AgentID: a.ID, Lease: true, Deadline: d})
		after.leaseIndexed = d
	}
	from, to := b.PresenceID, customID(cfg, a.PresenceID)
	if _, builtin := events.Builtin(from); builtin {
		from = "" // built-in presences are never indexed
	}
	if all || from != to {
		out = append(out, state.IndexEntry{AgentID: a.ID, From: from, To: to})
	}
	if df, dt := defaultsIndex(b.DefaultPresenceID), defaultsIndex(a.DefaultPresenceID); all || df != dt {
		out = append(out, state.IndexEntry{AgentID: a.ID, From: df, To: dt})
	}
	return out
}

// leaseIndexMoves reports whether the lease index must move from the deadline
// it holds for an agent (indexed) to the agent's next one. An entry earlier than
// the deadline only has the sweep look at the agent early and put the entry
// right (the agent's own deadline decides an expiry); a later one would end a
// session late. So the entry moves at once when the deadline comes earlier or
// appears or goes, and when it comes later only once the entry has fallen
// behind the halfway point from now to it. Every heartbeat moves the deadline
// later: an agent that heartbeats more often than every half lease is never
// looked at early, and most of its heartbeats leave the index alone.
func leaseIndexMoves(indexed, next, now time.Time) bool {
	switch {
	case indexed.IsZero() || next.IsZero():
		return !indexed.Equal(next)
	case next.Before(indexed):
		return true
	}
	return indexed.Before(now.Add(next.Sub(now) / 2))
}

func (pt *partition) handleConfig(ctx context.Context, it item) error {
	w := pt.w
	ev := it.ev
	rec := pt.rec
	if ev.Seq <= rec.Config.Seq {
		return nil
	}
	s := newStep()
	next := state.Partition{Config: rec.Config.Clone(), Seen: map[string]time.Time{}, Seq: rec.Seq, Marker: rec.Marker}
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
		pt.reject(s, it, rej)
	case next.Seen[key] != (time.Time{}):
		pt.count(ev.Type, "duplicate")
	case errors.As(err, &rej):
		pt.reject(s, it, rej)
	case err != nil:
		return fmt.Errorf("configure %s: %w", ev.Type, err)
	default:
		if err := pt.reconfigureAgents(ctx, s, rec.Config, cfg, ev); err != nil {
			return err
		}
		next.Config = cfg
		next.Seen[key] = ev.Stored
		pt.count(ev.Type, "applied")
	}
	next.Config.Seq = ev.Seq
	// Saved before the status changes go out, so a client that saw them finds the
	// new configuration on the presences query.
	if _, err := w.store.SaveConfig(ctx, next.Config); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if err := pt.finish(ctx, s); err != nil {
		return err
	}
	pt.rec = next
	pt.pos = max(pt.pos, ev.Seq)
	pt.configDirty = true
	return nil
}

func dedupeKey(ev events.Event) string { return ev.Source + "\x00" + ev.ID }

// reconfigureAgents applies an accepted configuration event to the agents of this
// partition it concerns.
func (pt *partition) reconfigureAgents(ctx context.Context, s *step, before, after handlers.Config, ev events.Event) error {
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
	slices.Sort(ids)
	ids = slices.Compact(ids)
	timer := prometheus.NewTimer(w.metrics.stepLoad)
	if err := pt.load(ctx, ids); err != nil {
		return err
	}
	timer.ObserveDuration()
	for _, id := range ids {
		cur := pt.agents[id]
		e := cur.clone()
		applied := ev.Seq > e.seq
		if applied {
			var changes []events.StatusChanged
			e.agent, changes = w.rules.Reconfigure(before, after, e.agent, ev)
			e.seq = ev.Seq
			if !pt.replaying {
				e.outbox = append(e.outbox, outgoing(changes)...)
			}
		}
		pt.plan(s, after, cur, e, false, applied && ev.Type == events.AgentRemoved)
	}
	return nil
}

// finish commits, publishes and acknowledges what a step produced, in that
// order: a failure anywhere before the end leaves the messages unacknowledged,
// and the step's retry (or the next owner) finds the commit done and the outbox
// still to publish.
func (pt *partition) finish(ctx context.Context, s *step) error {
	w := pt.w
	if len(s.commits) > 0 || len(s.index) > 0 {
		timer := prometheus.NewTimer(w.metrics.stepCommit)
		ok, err := w.store.Commit(ctx, pt.p, s.commits, s.index)
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		timer.ObserveDuration()
		for i, applied := range ok {
			if !applied {
				c := s.commits[i]
				pt.log.Warn("state store does not hold what this owner wrote", "agent", c.Agent.ID, "expected_seq", c.Expect)
				pt.markLost(ctx)
				return fmt.Errorf("partition %d: agent %s: %w", pt.p, c.Agent.ID, errStoreChanged)
			}
		}
	}
	for id, e := range s.after {
		pt.agents[id] = e
		if !e.outboxStored {
			delete(pt.drop, id) // its commit dropped the stored outbox
		}
	}
	if err := w.hooks.afterCommit(ctx); err != nil {
		return err
	}
	if pt.replaying {
		return nil // everything a replay reaches was published when it was first handled
	}
	timer := prometheus.NewTimer(w.metrics.stepPublish)
	if err := pt.publish(ctx, s); err != nil {
		return err
	}
	timer.ObserveDuration()
	if s.last != nil {
		timer := prometheus.NewTimer(w.metrics.stepAck)
		// The consumer acknowledges all up to the last message (AckAll).
		if err := s.last.Ack(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			return w.natsFailed("ack", fmt.Errorf("ack: %w", err))
		}
		timer.ObserveDuration()
	}
	return nil
}

// published records that an agent's outbox is out: it is forgotten in memory
// now, and in the store by the agent's next commit (which writes its own) or
// the next checkpoint, whichever comes first; deleting it at once would cost a
// write per change.
func (pt *partition) published(id string) {
	e := pt.agents[id]
	if e == nil {
		return
	}
	e.outbox, e.uncertain = nil, false
	if e.outboxStored {
		pt.drop[id] = e.agent.AppliedSeq
	}
}

// publish sends a step's dead letters and status changes. Status changes go out
// in waves: an agent's k-th change of the step in wave k, each wave acknowledged
// before the next. Published all at once, a change lost in transit (a stream
// leader changing) could be stored after a later change of the same agent that
// got through.
func (pt *partition) publish(ctx context.Context, s *step) error {
	w := pt.w
	waves := [][]*nats.Msg{s.rejected}
	var uncertain []string
	for _, id := range s.order {
		if e := pt.agents[id]; e != nil && e.uncertain && len(s.out[id]) > 0 {
			uncertain = append(uncertain, id)
		}
	}
	published, err := pt.lastVersions(ctx, uncertain)
	if err != nil {
		return err
	}
	for _, id := range s.order {
		out := s.out[id]
		if v, ok := published[id]; ok {
			// After a takeover or a failed publish an outbox may be partly out,
			// and JetStream's duplicate window alone cannot be trusted to drop
			// a copy sent much later.
			for len(out) > 0 && out[0].Status.Version <= v {
				out = out[1:]
			}
		}
		for k, o := range out {
			st := o.Status
			st.TraceParent = o.TraceParent
			if k >= len(waves)-1 {
				waves = append(waves, nil)
			}
			if o.Data == nil { // read back from the store
				o.Data = events.MarshalStatus(&st)
			}
			waves[k+1] = append(waves[k+1], w.names.Subjects.StatusMsg(w.cfg.Source, o.ID, st, o.Data))
		}
	}
	n := 0
	for _, wave := range waves {
		if _, err := w.publishAll(ctx, wave); err != nil {
			// A retry may meet changes that made it: check before sending again.
			for _, id := range s.order {
				if e := pt.agents[id]; e != nil {
					e.uncertain = true
				}
			}
			return err
		}
		n += len(wave)
	}
	w.metrics.published.Add(float64(n - len(s.rejected)))
	for _, id := range s.order {
		pt.published(id)
	}
	if len(s.purge) > 0 {
		stream, err := w.js.Stream(ctx, w.names.StatusStream())
		if err != nil {
			return w.natsFailed("purge", fmt.Errorf("status stream: %w", err))
		}
		for _, id := range s.purge {
			if err := stream.Purge(ctx, jetstream.WithPurgeSubject(w.names.Subjects.Status(id)), jetstream.WithPurgeKeep(1)); err != nil {
				return w.natsFailed("purge", fmt.Errorf("purge status of %s: %w", id, err))
			}
		}
	}
	return nil
}

// lastVersions returns the version of each agent's last published status (0:
// none): from one multi-subject direct get per thousand agents, or one read per
// agent where the server cannot answer those. After a takeover every agent a
// lost consumer may have seen is uncertain, and a read each, one after the
// other, would hold a batch up for as many round trips.
func (pt *partition) lastVersions(ctx context.Context, ids []string) (map[string]uint64, error) {
	w := pt.w
	if len(ids) == 0 {
		return nil, nil
	}
	out := make(map[string]uint64, len(ids))
	for start := 0; start < len(ids) && w.gets.usable(); start += multiLastMax {
		chunk := ids[start:min(start+multiLastMax, len(ids))]
		bySubject := make(map[string]string, len(chunk))
		subjects := make([]string, len(chunk))
		for i, id := range chunk {
			subjects[i] = w.names.Subjects.Status(id)
			bySubject[subjects[i]] = id
		}
		got := make(map[string]uint64, len(chunk))
		_, _, err := w.gets.lastMessages(ctx, w.names.StatusStream(), subjects, func(m *nats.Msg) error {
			id, ok := bySubject[lastHeader(m, jetstream.SubjectHeader)]
			if !ok {
				return nil
			}
			v, err := statusVersion(m.Data)
			if err != nil {
				return fmt.Errorf("last status of %s: %w", id, err)
			}
			got[id] = v
			return nil
		})
		if errors.Is(err, errNoMultiLast) || errors.Is(err, errPartialAnswer) {
			break // read one agent at a time
		}
		if err != nil {
			return nil, w.natsFailed("read_status", fmt.Errorf("last statuses: %w", err))
		}
		for _, id := range chunk {
			out[id] = got[id]
		}
	}
	if len(out) == len(ids) {
		return out, nil
	}
	stream, err := w.js.Stream(ctx, w.names.StatusStream())
	if err != nil {
		return nil, w.natsFailed("read_status", fmt.Errorf("status stream: %w", err))
	}
	for _, id := range ids {
		if _, ok := out[id]; ok {
			continue
		}
		m, err := stream.GetLastMsgForSubject(ctx, w.names.Subjects.Status(id))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			out[id] = 0
			continue
		}
		if err != nil {
			return nil, w.natsFailed("read_status", fmt.Errorf("last status of %s: %w", id, err))
		}
		if out[id], err = statusVersion(m.Data); err != nil {
			return nil, fmt.Errorf("last status of %s: %w", id, err)
		}
	}
	return out, nil
}

// statusVersion is the version of a published agent.status.changed.
func statusVersion(data []byte) (uint64, error) {
	var st struct {
		Version uint64 `json:"version"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return 0, err
	}
	return st.Version, nil
}

// publishStallWait bounds how long a publish waits for acknowledgements to
// make room before the batch fails and is retried.
const publishStallWait = 10 * time.Second

// publishAll publishes msgs and waits for every acknowledgement; it returns the
// highest stream sequence they got. On a failure the caller retries; JetStream
// drops the copies that already made it by their Nats-Msg-Id.
func (w *Worker) publishAll(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	top, err := w.pub.publishAll(ctx, msgs)
	if err != nil && ctx.Err() == nil {
		return 0, w.natsFailed("publish", err)
	}
	return top, err
}
