package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/state"
)

// partition runs one owned input partition: a durable consumer created for this
// lease, read in stream order, one batch at a time.
type partition struct {
	w     *Worker
	p     int
	rev   uint64
	log   *slog.Logger
	rec   state.Partition
	cons  jetstream.Consumer
	input jetstream.Stream
	// fired remembers expiry events already published by this run, so the sweeper
	// does not republish them every tick while they wait in the input stream.
	fired map[string]time.Time
}

// takeOver prepares a freshly claimed partition. JetStream redelivers a dead
// owner's unacknowledged messages only after their ack wait and interleaved with
// new ones, which would break per-agent order; so instead of inheriting the old
// consumer, a new one is created that starts right after the old one's ack floor
// and delivers everything from there in stream order. Messages already applied
// are recognised by the agent's applied sequence.
func (pt *partition) takeOver(ctx context.Context) error {
	w := pt.w
	rec, err := w.store.LoadPartition(ctx, pt.p)
	if err != nil {
		return fmt.Errorf("load partition %d: %w", pt.p, err)
	}
	loaded := rec
	drec, ok, err := pt.durablePartition(ctx)
	if err != nil {
		return err
	}
	if ok && stale(rec, drec) {
		pt.log.Warn("state store is behind JetStream: rebuilding", "store_floor", rec.Floor, "durable_floor", drec.Floor, "store_marker", rec.Marker)
		if err := pt.rebuild(ctx, drec); err != nil {
			return err
		}
		rec = drec
	}
	pt.rec = rec
	stream, err := w.js.Stream(ctx, w.names.InputStream())
	if err != nil {
		return fmt.Errorf("input stream: %w", err)
	}
	pt.input = stream
	prefix := w.names.consumerPrefix(pt.p)
	var old []string
	var start uint64
	var newest uint64
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
		newest, start = rv, c.CachedInfo().AckFloor.Stream+1
	}
	// The partition record also keeps a floor, for when the consumers are gone
	// (removed after long inactivity): starting lower only costs skipped messages.
	if start == 0 && rec.Floor > 0 {
		start = rec.Floor + 1
	}
	cc := jetstream.ConsumerConfig{
		Durable:           w.names.consumerName(pt.p, pt.rev),
		Description:       fmt.Sprintf("presenced partition %d, lease %s", pt.p, w.cfg.InstanceID),
		FilterSubject:     fmt.Sprintf("%s.in.*.%d.*", w.cfg.Prefix, pt.p),
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           w.cfg.AckWait,
		MaxAckPending:     4 * w.cfg.BatchSize,
		MaxDeliver:        -1,
		InactiveThreshold: 24 * time.Hour,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
	}
	if start > 1 {
		cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
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
	pt.rec = loaded // the takeover's record replaces the one it judged, or nothing
	rec.Marker = fmt.Sprintf("%s/%d", w.cfg.InstanceID, pt.rev)
	if start > 1 && start-1 > rec.Floor {
		rec.Floor = start - 1
	}
	if err := pt.savePartition(ctx, rec); err != nil {
		return err
	}
	pt.log.Info("partition taken over", "start", start, "previous_consumers", len(old))
	return nil
}

// run consumes the partition until ctx ends, then finishes the batch in hand.
func (pt *partition) run(ctx context.Context) error {
	w := pt.w
	msgs := make(chan jetstream.Msg, w.cfg.BatchSize)
	cc, err := pt.cons.Consume(func(m jetstream.Msg) { msgs <- m },
		jetstream.PullMaxMessages(w.cfg.BatchSize),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, jetstream.ErrNoHeartbeat) {
				pt.log.Debug("consume", "err", err)
			}
		}))
	if err != nil {
		return fmt.Errorf("consume partition %d: %w", pt.p, err)
	}
	defer cc.Stop()
	sweep := time.NewTicker(w.cfg.SweepInterval)
	defer sweep.Stop()
	batch := make([]jetstream.Msg, 0, w.cfg.BatchSize)
	lastCheck := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sweep.C:
			// Bounded, so a store that hangs cannot keep the partition from its input.
			tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if time.Since(lastCheck) > 3*time.Second {
				lastCheck = time.Now()
				if err := pt.verifyStore(tctx); errors.Is(err, errStoreChanged) {
					cancel()
					return err
				}
			}
			if err := pt.sweep(tctx); err != nil && ctx.Err() == nil {
				pt.log.Warn("sweep", "err", err)
			}
			upTo, err := pt.idleUpTo(tctx, msgs)
			cancel()
			if err != nil && ctx.Err() == nil {
				pt.log.Debug("idle check", "err", err)
			}
			if upTo > pt.rec.Config.Seq {
				if err := pt.handleWithRetry(ctx, nil, upTo); err != nil {
					return err
				}
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
		items := make([]item, len(batch))
		for i, m := range batch {
			items[i] = w.decode(m)
		}
		if err := pt.handleWithRetry(ctx, items, items[len(items)-1].ev.Seq); err != nil {
			return err
		}
	}
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
	w := pt.w
	backoff := 50 * time.Millisecond
	lastProgress := time.Now()
	for attempt := 0; ; attempt++ {
		// A batch in hand is finished even while shutting down: it is cheaper than
		// having the next owner redo it.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err := pt.handle(hctx, items, upTo)
		cancel()
		if errors.Is(err, errStoreChanged) {
			if attempt > 0 {
				w.retrying.Add(-1)
			}
			return err
		}
		if err == nil {
			if attempt > 0 {
				w.retrying.Add(-1)
				pt.log.Info("batch recovered", "attempts", attempt+1)
			}
			return nil
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
