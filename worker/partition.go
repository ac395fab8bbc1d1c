package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/state"
)

// partition runs one owned input partition: a durable consumer created for this
// lease, read in stream order, one batch at a time. The owner keeps every agent
// it touched in memory, exactly as it last wrote it, so the hot path never reads
// the store: each write is a compare-and-set on the sequence the owner holds.
type partition struct {
	w   *Worker
	p   int
	rev uint64
	log *slog.Logger

	// rec is the partition's record as of pos: its configuration and the
	// checkpoint; stored is the record as last written to the store.
	rec, stored state.Partition
	// pos is the input sequence up to which every message of the partition is
	// handled, published and acknowledged.
	pos         uint64
	configDirty bool // the configuration changed since the last checkpoint
	cons        jetstream.Consumer
	input       jetstream.Stream

	agents map[string]*agentEntry
	// dirty holds the agents changed since the last checkpoint.
	dirty map[string]bool
	// drop holds agents whose stored outbox is published, with the sequence it
	// was stored at: the agent's next commit replaces it, or the next checkpoint
	// deletes it if the store still holds that sequence.
	drop           map[string]uint64
	lastCheckpoint time.Time
	// sinceCheckpoint counts the inputs handled since the last checkpoint;
	// lastBatch is when the last batch was handled.
	sinceCheckpoint int
	lastBatch       time.Time
	// writing is the checkpoint being written in the background; failures
	// counts the writes failed in a row, and retryCheckpoint fires when the
	// next one may start.
	writing         *pendingCheckpoint
	failures        int
	retryCheckpoint <-chan time.Time
	// floor is the last input the previous owner had acknowledged when this one
	// took over; uncertainUpTo the last it was given: it may have published
	// changes for inputs up to there that the store no longer shows.
	floor, uncertainUpTo uint64
	// lastDelivery is the consumer sequence of the last message, to notice one
	// lost on its way (a reconnect): acknowledging past it would skip it.
	lastDelivery uint64
	replaying    bool
	// stallSince is when a consumer check first found the partition holding
	// inputs it does not receive; zero when the last check did not.
	stallSince time.Time

	// fired remembers expiry events already published by this run, so the sweeper
	// does not republish them every tick while they wait in the input stream.
	fired map[string]time.Time
}

func newPartition(w *Worker, p int, rev uint64) *partition {
	return &partition{w: w, p: p, rev: rev, log: w.log.With("partition", p),
		agents: map[string]*agentEntry{}, dirty: map[string]bool{}, drop: map[string]uint64{}, fired: map[string]time.Time{}}
}

// agentEntry is what an owner knows of one agent.
type agentEntry struct {
	// agent is the state as stored (agent.AppliedSeq is the stored sequence).
	agent handlers.Agent
	// seq is the last input handled for the agent, which may be past what is
	// stored: an input that changed nothing is not written.
	seq uint64
	// seen holds the dedupe entries inside the window, oldest first; the first
	// saved of them are in the store as of the last checkpoint (SaveSeen), the
	// rest go with each commit.
	seen  []state.Seen
	saved int
	// outbox holds committed changes not yet known to be published.
	outbox       []state.Outgoing
	outboxStored bool // the store holds an outbox for the agent
	// uncertain: some of outbox may be out already (a previous owner or a failed
	// publish): the status stream is checked before publishing it.
	uncertain bool
	// indexed: this owner wrote the agent's index entries.
	indexed bool
	// leaseIndexed is the deadline the lease index holds for the agent, as this
	// owner last wrote it (when indexed): it may lag the agent's own (see
	// leaseIndexMoves).
	leaseIndexed time.Time
}

// clone returns a copy to work on, which replaces e once its step is committed
// or is dropped when the step fails. The two share seen's and outbox's arrays:
// they are only ever appended to and resliced, never written in place, so an
// append by the copy lands past what e can see (and one by a retry's copy, after
// a failed step, over what only the dropped copy saw).
func (e *agentEntry) clone() *agentEntry {
	c := *e
	return &c
}

// seenWithin reports whether key was applied less than window before at.
func (e *agentEntry) seenWithin(key state.SeenKey, at time.Time, window time.Duration) bool {
	for _, s := range e.seen {
		if s.Key == key && at.Sub(s.At) < window {
			return true
		}
	}
	return false
}

// prune forgets dedupe entries that left the window of the newest one.
func (e *agentEntry) prune(window time.Duration) {
	if len(e.seen) == 0 {
		return
	}
	newest := e.seen[len(e.seen)-1].At
	i := 0
	for i < len(e.seen) && newest.Sub(e.seen[i].At) >= window {
		i++
	}
	e.seen = e.seen[i:]
	e.saved = max(0, e.saved-i)
}

// load makes sure the agents are in memory, reading the missing ones from the
// store in one call.
func (pt *partition) load(ctx context.Context, ids []string) error {
	var missing []string
	for _, id := range ids {
		if _, ok := pt.agents[id]; !ok && !contains(missing, id) {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	recs, err := pt.w.store.Load(ctx, missing)
	if err != nil {
		return fmt.Errorf("load agents: %w", err)
	}
	// Read after loading, so agents read from a store that lost its data are never used.
	if err := pt.verifyStore(ctx); err != nil {
		return err
	}
	for _, r := range recs {
		stored := r.HasOutbox
		e := &agentEntry{agent: r.Agent, seq: r.Agent.AppliedSeq, seen: r.Seen, outbox: r.Outbox, outboxStored: stored}
		if stored {
			// Its dedupe entries may be in the outbox only: the next checkpoint
			// saves them before the outbox goes.
			pt.dirty[r.Agent.ID] = true
		}
		switch {
		case len(r.Outbox) == 0:
			if stored {
				pt.drop[r.Agent.ID] = r.Agent.AppliedSeq
			}
		case r.Agent.AppliedSeq <= pt.floor:
			// Its inputs were acknowledged, which happens only once it is published.
			e.outbox = nil
			pt.drop[r.Agent.ID] = r.Agent.AppliedSeq
		default:
			// A previous owner may have published part of it.
			e.uncertain = true
		}
		pt.agents[r.Agent.ID] = e
	}
	return nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// takeOver prepares a freshly claimed partition. JetStream redelivers a dead
// owner's unacknowledged messages only after their ack wait and interleaved with
// new ones, which would break per-agent order; so instead of inheriting the old
// consumer, a new one is created that starts right after the old one's ack floor
// and delivers everything from there in stream order.
//
// Before that the store is brought up to the ack floor: from the checkpoint the
// store's record names, or, when the store lost or rewound the partition (its
// record is missing or behind the one kept in JetStream), from the agents'
// durable copies, by replaying the inputs since the checkpoint through the rules.
func (pt *partition) takeOver(ctx context.Context) error {
	w := pt.w
	stream, err := w.js.Stream(ctx, w.names.InputStream())
	if err != nil {
		return fmt.Errorf("input stream: %w", err)
	}
	pt.input = stream
	stored, found, err := w.store.LoadPartition(ctx, pt.p)
	if err != nil {
		return fmt.Errorf("load partition %d: %w", pt.p, err)
	}
	durable, hasDurable, err := pt.durablePartition(ctx)
	if err != nil {
		return err
	}
	pt.stored, pt.rec = stored, stored
	rebuild := hasDurable && (!found || strings.HasPrefix(stored.Marker, rebuildMarker) || stored.Seq < durable.Seq)
	if rebuild {
		pt.log.Warn("state store is behind JetStream: rebuilding", "store_checkpoint", stored.Seq, "durable_checkpoint", durable.Seq,
			"store_marker", stored.Marker)
		if err := pt.restore(ctx, durable); err != nil {
			return err
		}
	}

	// Where the previous owner got to.
	prefix := w.names.consumerPrefix(pt.p)
	var old []string
	var floor, delivered, newest uint64
	for name := range stream.ConsumerNames(ctx).Name() {
		r, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		rv, err := strconv.ParseUint(r, 10, 64)
		if err != nil || rv == pt.rev {
			continue
		}
		old = append(old, name)
		if rv < newest {
			continue
		}
		c, err := stream.Consumer(ctx, name)
		if err != nil {
			return fmt.Errorf("consumer %s: %w", name, err)
		}
		info := c.CachedInfo()
		newest, floor, delivered = rv, info.AckFloor.Stream, info.Delivered.Stream
	}
	if len(old) == 0 && pt.rec.Marker != "" {
		// An owner ran, but its consumer is gone (held in the server's memory, it
		// does not survive a restart): what it was given is not known, so every
		// input stored so far may have had its changes published, unless none
		// ever was (each agent found uncertain costs a read of its last status).
		status, err := w.js.Stream(ctx, w.names.StatusStream())
		if err != nil {
			return fmt.Errorf("status stream: %w", err)
		}
		if status.CachedInfo().State.Msgs > 0 {
			// Read now, after the consumers were listed: whatever the lost one
			// delivered is stored by now.
			info, err := stream.Info(ctx)
			if err != nil {
				return fmt.Errorf("input stream: %w", err)
			}
			delivered = info.State.LastSeq
		}
	}
	floor = max(floor, pt.rec.Seq)
	pt.floor, pt.uncertainUpTo = floor, delivered
	if err := pt.replay(ctx, pt.rec.Seq, floor); err != nil {
		return err
	}
	if rebuild {
		if err := pt.freshLeases(ctx); err != nil {
			return err
		}
		w.metrics.rebuilds.Inc()
	}

	cc := jetstream.ConsumerConfig{
		Durable:           w.names.consumerName(pt.p, pt.rev),
		Description:       fmt.Sprintf("presenced partition %d, lease %s", pt.p, w.cfg.InstanceID),
		FilterSubject:     fmt.Sprintf("%s.in.*.%d.*", w.cfg.Prefix, pt.p),
		AckPolicy:         jetstream.AckAllPolicy,
		AckWait:           w.cfg.AckWait,
		MaxAckPending:     4 * w.cfg.BatchSize,
		MaxDeliver:        -1,
		InactiveThreshold: 24 * time.Hour,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		// Its state in memory, not in a file the server rewrites ten times a
		// second per consumer: a consumer lost with a server restart is noticed
		// by run, and the next owner starts from the partition's checkpoint, whose
		// inputs the agents' sequences recognise.
		MemoryStorage: true,
	}
	if floor > 0 {
		cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, floor+1
	}
	cons, err := w.js.CreateOrUpdateConsumer(ctx, w.names.InputStream(), cc)
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", cc.Durable, err)
	}
	for _, name := range old {
		if err := stream.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("delete consumer %s: %w", name, err)
		}
	}
	pt.cons = cons
	// Claim the store's record: from now on a record with another marker means
	// another owner, or a store that lost this one's data.
	pt.rec.Marker = fmt.Sprintf("%s/%d", w.cfg.InstanceID, pt.rev)
	if err := pt.checkpoint(ctx, true); err != nil {
		return err
	}
	// Partitions taken over together would otherwise all come due for their
	// next checkpoint together, and write them at the same moment.
	n := w.cfg.Partitions
	pt.lastCheckpoint = pt.lastCheckpoint.Add(-w.cfg.CheckpointInterval * time.Duration(pt.p) / time.Duration(n))
	pt.sinceCheckpoint = w.cfg.CheckpointInputs * pt.p / n
	pt.log.Info("partition taken over", "start", floor+1, "previous_consumers", len(old), "rebuilt", rebuild)
	return nil
}

// run consumes the partition until ctx ends, then finishes the batch in hand and
// leaves a checkpoint, so the next owner has little to replay.
func (pt *partition) run(ctx context.Context) error {
	w := pt.w
	msgs := make(chan jetstream.Msg, w.cfg.BatchSize)
	// A pull that finds no consumer (gone with a server restart) makes the
	// partition check whether its consumer still exists; one deleted ends the
	// consumption for good, and the partition with it.
	suspect := make(chan error, 1)
	// Closed as the partition stops: a delivery still coming then is dropped
	// (the next owner's consumer delivers it again), instead of blocking the
	// client's delivery goroutine on a channel nobody reads any more.
	stopped := make(chan struct{})
	cc, err := pt.cons.Consume(func(m jetstream.Msg) {
		if w.hooks.loseDelivery(m) {
			return
		}
		select {
		case msgs <- m:
		case <-stopped:
		}
	},
		jetstream.PullMaxMessages(w.cfg.BatchSize),
		// A pull the server no longer serves is noticed by its missing
		// heartbeats, after twice the heartbeat (half the expiry), and only then
		// pulled again: at the client's default of 30 s a partition could stand
		// still for as long.
		jetstream.PullExpiry(pullExpiry),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, nats.ErrNoResponders) {
				select {
				case suspect <- err:
				default:
				}
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				pt.log.Warn("no heartbeat from the partition's consumer: pulling again")
				return
			}
			pt.log.Debug("consume", "err", err)
		}))
	if err != nil {
		return fmt.Errorf("consume partition %d: %w", pt.p, err)
	}
	defer func() {
		// Consumption stopped (the deferred calls below run first): what was
		// delivered and not handled goes to the next owner, from the ack floor.
		// Bounded, so a store that hangs cannot hold up a shutdown.
		if pt.writing != nil {
			select {
			case err := <-pt.writing.done:
				pt.checkpointWritten(err)
			case <-time.After(5 * time.Second):
				// Its writes may still be under way, and a final checkpoint
				// would race them for the record: the next owner replays from
				// the last one that landed.
				pt.writing.cancel()
				pt.log.Warn("checkpoint still being written as the partition stops: left to the next owner's replay")
				if pt.failures > 0 {
					w.retrying.Add(-1)
				}
				return
			}
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := pt.checkpoint(cctx, false); err != nil && !errors.Is(err, errStoreChanged) {
			pt.log.Warn("final checkpoint", "err", err)
		}
		if pt.failures > 0 {
			w.retrying.Add(-1) // a stopped partition retries nothing
		}
	}()
	defer cc.Stop()
	defer close(stopped)
	sweep := time.NewTicker(w.cfg.SweepInterval)
	defer sweep.Stop()
	batch := make([]jetstream.Msg, 0, w.cfg.BatchSize)
	lastCheck := time.Now()
	for {
		var written <-chan error // none while no checkpoint is being written
		if pt.writing != nil {
			written = pt.writing.done
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sweep.C:
			if err := pt.idle(ctx, msgs, &lastCheck); err != nil {
				return err
			}
			continue
		case err := <-written:
			if err := pt.checkpointWritten(err); err != nil {
				return err
			}
			continue
		case <-pt.retryCheckpoint:
			pt.retryCheckpoint = nil
			pt.startCheckpoint(ctx)
			continue
		case err := <-suspect:
			if errors.Is(err, jetstream.ErrConsumerDeleted) {
				pt.log.Warn("partition consumer deleted: taking the partition over again")
				return errConsumerLost
			}
			if _, err := pt.consumerInfo(ctx); err != nil {
				return err
			}
			continue
		case m := <-msgs:
			batch = append(batch[:0], m)
		}
	fill:
		for len(batch) < w.cfg.BatchSize {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		items := make([]item, 0, len(batch))
		for _, m := range batch {
			// Parsed once: both need it, and each parse allocates.
			meta, metaErr := m.Metadata()
			if metaErr == nil {
				if err := pt.inOrder(meta); err != nil {
					return err
				}
			}
			items = append(items, w.decode(m, meta, metaErr))
		}
		w.metrics.pending.WithLabelValues(strconv.Itoa(pt.p)).Set(float64(items[len(items)-1].pending))
		if err := pt.handleWithRetry(ctx, items, items[len(items)-1].ev.Seq); err != nil {
			return err
		}
		pt.sinceCheckpoint += len(items)
		pt.lastBatch = time.Now()
		if pt.sinceCheckpoint >= w.cfg.CheckpointInputs || time.Since(pt.lastCheckpoint) >= w.cfg.CheckpointInterval {
			pt.startCheckpoint(ctx)
		}
	}
}

// startCheckpoint takes a checkpoint and writes it on a goroutine of its own,
// unless one is being written or a failed one waits for its retry.
func (pt *partition) startCheckpoint(ctx context.Context) {
	if pt.writing != nil || pt.retryCheckpoint != nil || ctx.Err() != nil {
		return // stopping: the final checkpoint follows
	}
	c := pt.takeCheckpoint(false)
	if c == nil {
		return
	}
	// Work in hand is finished even while shutting down: it is cheaper than
	// having the next owner redo it; run's end bounds the wait.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	c.done, c.cancel = make(chan error, 1), cancel
	pt.writing = c
	go func() {
		defer cancel()
		c.done <- pt.writeCheckpoint(wctx, c)
	}()
}

// checkpointWritten lands the checkpoint whose write ended with err. A failed
// one is taken again after a back-off, while /readyz reports the partition as
// retrying; the partition handles on meanwhile, as its inputs are safe in the
// store and the stream. A store that changed under this owner ends it.
func (pt *partition) checkpointWritten(err error) error {
	w := pt.w
	c := pt.writing
	pt.writing = nil
	pt.landCheckpoint(c, err)
	if err == nil || errors.Is(err, errStoreChanged) {
		if pt.failures > 0 {
			w.retrying.Add(-1)
			if err == nil {
				pt.log.Info("checkpoint recovered", "attempts", pt.failures+1)
			}
		}
		pt.failures = 0
		return err
	}
	if pt.failures == 0 {
		w.retrying.Add(1)
	}
	pt.failures++
	w.metrics.retries.Inc()
	backoff := min(50*time.Millisecond<<min(pt.failures-1, 7), 5*time.Second)
	pt.log.Warn("checkpoint failed, retrying", "err", err, "attempt", pt.failures, "backoff", backoff)
	pt.retryCheckpoint = time.After(backoff)
	return nil
}

// pullExpiry is how long a partition's pull waits on the server.
const pullExpiry = 5 * time.Second

// errConsumerLost stops a partition whose consumer no longer exists; the
// takeover that follows creates another from the partition's checkpoint.
var errConsumerLost = errors.New("the partition's consumer no longer exists")

// consumerInfo returns what the server says of the partition's consumer, or
// errConsumerLost when it says the consumer is gone; nil, nil when it could not
// tell (a server still starting, a leader being elected), which leaves the
// partition to its consumer's own retries.
func (pt *partition) consumerInfo(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := pt.cons.Info(ictx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		pt.log.Warn("partition consumer lost: taking the partition over again")
		return nil, errConsumerLost
	}
	if err != nil {
		return nil, nil
	}
	return info, nil
}

// errConsumerStalled stops a partition whose consumer held inputs it did not
// receive for StallAfter; the takeover that follows creates another consumer
// from the partition's ack floor.
var errConsumerStalled = errors.New("the partition's consumer delivers nothing while it holds inputs")

// checkConsumer is consumerInfo, and also ends a partition that is stalled
// (see stallVerdict). Whatever the cause (a pull the server forgot, a message
// lost on its way with none after it to show the gap), a new consumer from the
// ack floor delivers the inputs again, where the server would redeliver a lost
// one only after the ack wait.
func (pt *partition) checkConsumer(ctx context.Context, buffered int) error {
	info, err := pt.consumerInfo(ctx)
	if err != nil || info == nil {
		pt.stallSince = time.Time{} // no answer (a reconnect): start again
		return err
	}
	now := time.Now()
	var stalled bool
	pt.stallSince, stalled = stallVerdict(stallCheck{
		now: now, since: pt.stallSince, lastBatch: pt.lastBatch, buffered: buffered, paused: info.Paused,
		pending: info.NumPending, delivered: info.Delivered.Consumer, received: pt.lastDelivery,
	}, pt.w.cfg.StallAfter)
	if !stalled {
		return nil
	}
	pt.w.metrics.stalls.Inc()
	pt.log.Warn("partition consumer stalled: taking the partition over again", "pending", info.NumPending,
		"ack_pending", info.NumAckPending, "waiting_pulls", info.NumWaiting, "delivered", info.Delivered.Consumer,
		"received", pt.lastDelivery, "delivered_seq", info.Delivered.Stream, "ack_floor", info.AckFloor.Stream,
		"held_for", now.Sub(pt.stallSince).Round(time.Millisecond))
	return errConsumerStalled
}

// stallCheck is what one consumer check knows.
type stallCheck struct {
	now, since, lastBatch time.Time
	buffered              int
	paused                bool
	// pending: inputs the consumer has still to deliver; delivered: the
	// consumer's last delivery; received: the last one the partition received.
	pending             uint64
	delivered, received uint64
}

// stallVerdict says whether a partition is stalled, and returns since for the
// next check. It holds inputs it does not receive when its consumer has some to
// deliver, or delivered some that never reached it, while none waits in the
// partition's channel; a consumer paused by an operator is left alone, and an
// acknowledgement that did not land (everything delivered was received) is
// left to the ack wait. It is stalled once that has held, with no batch
// handled, for stallAfter since the first check that saw it: at least two
// checks, so a process that was stopped for a while (a paused container) does
// not count the time it slept.
func stallVerdict(c stallCheck, stallAfter time.Duration) (time.Time, bool) {
	holding := c.buffered == 0 && !c.paused && (c.pending > 0 || c.delivered > c.received)
	if !holding {
		return time.Time{}, false
	}
	if c.since.IsZero() || c.lastBatch.After(c.since) {
		return c.now, false
	}
	return c.since, c.now.Sub(c.since) >= stallAfter
}

// errLostDelivery stops a partition whose consumer skipped a message on its way
// to this owner; the takeover that follows starts again from the ack floor.
var errLostDelivery = errors.New("a message was lost on its way from the consumer")

// inOrder checks that the message meta describes is the consumer's next
// delivery. A message lost on its way (a reconnect) comes back only after the
// ack wait, after later ones: with acknowledgements that cover everything
// before them, handling on would skip it.
func (pt *partition) inOrder(meta *jetstream.MsgMetadata) error {
	if meta.NumDelivered > 1 {
		pt.w.metrics.redeliveries.Inc()
	}
	if pt.lastDelivery != 0 && meta.Sequence.Consumer != pt.lastDelivery+1 {
		pt.log.Warn("consumer delivery out of order: restarting the partition from its ack floor",
			"delivery", meta.Sequence.Consumer, "expected", pt.lastDelivery+1, "seq", meta.Sequence.Stream)
		return errLostDelivery
	}
	pt.lastDelivery = meta.Sequence.Consumer
	return nil
}

// idle runs between batches on a timer: expiry sweep, cleanup, the store check,
// configuration events that arrived while the partition had nothing to do, and
// a due checkpoint.
func (pt *partition) idle(ctx context.Context, buffered chan jetstream.Msg, lastCheck *time.Time) error {
	w := pt.w
	// Bounded, so a store that hangs cannot keep the partition from its input.
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// This runs in the partition's loop, so the inputs that come meanwhile
	// wait for its round trips. A partition handling batches is neither stalled
	// nor idle, so the consumer and stream checks, JetStream API requests that
	// a busy server answers slowly, wait until it is quiet.
	quiet := time.Since(pt.lastBatch) >= w.cfg.SweepInterval
	if time.Since(*lastCheck) > 2*time.Second {
		*lastCheck = time.Now()
		if err := pt.verifyStore(tctx); errors.Is(err, errStoreChanged) {
			return err
		}
		// Also when the pulls said nothing, or the check they asked for could
		// not tell (a server slow to answer).
		if quiet {
			if err := pt.checkConsumer(tctx, len(buffered)); err != nil {
				return err
			}
		}
	}
	if err := pt.sweep(tctx); err != nil && ctx.Err() == nil {
		pt.log.Warn("sweep", "err", err)
	}
	if quiet {
		upTo, err := pt.idleUpTo(tctx, buffered)
		if err != nil && ctx.Err() == nil {
			pt.log.Debug("idle check", "err", err)
		}
		if upTo > pt.rec.Config.Seq {
			if err := pt.handleWithRetry(ctx, nil, upTo); err != nil {
				return err
			}
		}
	}
	if quiet || time.Since(pt.lastCheckpoint) >= w.cfg.CheckpointInterval {
		pt.startCheckpoint(ctx) // nothing to write is cheap
	}
	return nil
}

// idleUpTo returns the stream sequence up to which configuration events can be
// applied while the partition has nothing to do, or 0: once every message of the
// partition stored up to the stream's last sequence has been handled, no agent
// event can be stored before a configuration event that comes later.
func (pt *partition) idleUpTo(ctx context.Context, buffered chan jetstream.Msg) (uint64, error) {
	if len(buffered) > 0 {
		return 0, nil
	}
	info, err := pt.input.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("input stream: %w", err)
	}
	last := info.State.LastSeq
	if last <= pt.rec.Config.Seq {
		return 0, nil
	}
	ci, err := pt.cons.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer: %w", err)
	}
	if ci.NumPending > 0 || ci.NumAckPending > 0 || len(buffered) > 0 {
		return 0, nil
	}
	return last, nil
}

// handleWithRetry retries a batch in place on transient failures, holding back
// everything after it, and keeps its messages from being redelivered meanwhile.
func (pt *partition) handleWithRetry(ctx context.Context, items []item, upTo uint64) error {
	var last uint64
	for _, it := range items {
		last = it.ev.Seq
	}
	return pt.retry(ctx, items, func(hctx context.Context) error {
		return pt.handle(hctx, items, max(upTo, last))
	})
}

// retry runs f until it succeeds, with back-off, while /readyz reports the
// partition as retrying; a store that changed under this owner ends it.
func (pt *partition) retry(ctx context.Context, items []item, f func(context.Context) error) error {
	w := pt.w
	backoff := 50 * time.Millisecond
	lastProgress := time.Now()
	for attempt := 0; ; attempt++ {
		// Work in hand is finished even while shutting down: it is cheaper than
		// having the next owner redo it.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err := f(hctx)
		cancel()
		if err == nil || errors.Is(err, errStoreChanged) || errors.Is(err, errConsumerLost) {
			if attempt > 0 {
				w.retrying.Add(-1)
				if err == nil {
					pt.log.Info("batch recovered", "attempts", attempt+1)
				}
			}
			return err
		}
		if attempt == 0 {
			w.retrying.Add(1)
		}
		w.metrics.retries.Inc()
		pt.log.Warn("batch failed, retrying", "err", err, "attempt", attempt+1, "backoff", backoff)
		if time.Since(lastProgress) > w.cfg.AckWait/3 {
			for _, it := range items {
				if it.msg != nil {
					_ = it.msg.InProgress()
				}
			}
			lastProgress = time.Now()
		}
		select {
		case <-ctx.Done():
			w.retrying.Add(-1)
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}
