package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/state"
)

// Hooks inject faults for tests that kill a real worker process at a precise point.
type Hooks struct {
	// AfterCommit runs after state is committed and before the outbox is published.
	AfterCommit func(ctx context.Context) error
	// BeforeCheckpoint runs before a checkpoint writes anything; an error fails
	// the checkpoint, which is retried.
	BeforeCheckpoint func(ctx context.Context) error
	// LoseDelivery, when it returns true for an input message (by its stream
	// sequence), drops it on its way from the consumer to its partition, as a
	// connection could.
	LoseDelivery func(seq uint64) bool
}

func (h Hooks) loseDelivery(m jetstream.Msg) bool {
	if h.LoseDelivery == nil {
		return false
	}
	meta, err := m.Metadata()
	return err == nil && h.LoseDelivery(meta.Sequence.Stream)
}

func (h Hooks) afterCommit(ctx context.Context) error {
	if h.AfterCommit == nil {
		return nil
	}
	return h.AfterCommit(ctx)
}

func (h Hooks) beforeCheckpoint(ctx context.Context) error {
	if h.BeforeCheckpoint == nil {
		return nil
	}
	return h.BeforeCheckpoint(ctx)
}

// Worker is one presenced replica.
type Worker struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream
	store    state.Store
	rules    handlers.Rules
	names    Names
	log      *slog.Logger
	metrics  *metrics
	hooks    Hooks
	kv       jetstream.KeyValue
	configs  *configReader
	gets     *directGets
	pub      *publisher
	retrying atomic.Int32
	started  atomic.Bool
}

// New builds a worker; Run starts it. reg receives its metrics (nil: none).
func New(nc *nats.Conn, store state.Store, cfg Config, reg prometheus.Registerer, hooks Hooks) (*Worker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := newMetrics(reg)
	names := NamesFor(cfg.Prefix)
	gets := newDirectGets(nc)
	configs := newConfigReader(names.Subjects.Config(), gets)
	configs.counted = func(how string) { m.configReads.WithLabelValues(how).Inc() }
	return &Worker{
		cfg: cfg, nc: nc, js: js, store: observeStore(store, m.backendErrors), rules: handlers.Rules{Source: cfg.Source},
		names: names, log: cfg.Logger, metrics: m, hooks: hooks, configs: configs, gets: gets,
		// Every partition can have a whole wave in flight at once, and a chunk
		// of its checkpoint's copies beside it (written in the background): at
		// room for 4 000 the sixteen partitions of a preloaded stream stalled,
		// and each stall failed a batch, whose retry then read every agent's
		// last status back from the stream. Room for two of each.
		pub: newPublisher(nc, max(4000, 4*cfg.Partitions*cfg.BatchSize), publishStallWait),
	}, nil
}

// Names returns the stream and subject names the worker uses.
func (w *Worker) Names() Names { return w.names }

// Ready reports why the worker cannot serve yet, or nil.
func (w *Worker) Ready(ctx context.Context) error {
	if !w.started.Load() {
		return errors.New("starting")
	}
	if !w.nc.IsConnected() {
		return errors.New("NATS not connected")
	}
	if err := w.store.Ping(ctx); err != nil {
		return fmt.Errorf("state store: %w", err)
	}
	if _, err := w.js.Stream(ctx, w.names.InputStream()); err != nil {
		return fmt.Errorf("input stream: %w", err)
	}
	if n := w.retrying.Load(); n > 0 {
		return fmt.Errorf("%d partitions retrying after transient failures", n)
	}
	return nil
}

// ensureStreams retries while JetStream cannot answer yet (a cluster electing
// its leaders, a server starting); a stream that contradicts the configuration
// is an error at once.
func (w *Worker) ensureStreams(ctx context.Context) (jetstream.KeyValue, error) {
	backoff := 100 * time.Millisecond
	for {
		kv, err := ensureStreams(ctx, w.js, w.cfg, w.names)
		if err == nil || errors.Is(err, errStreamConflict) || ctx.Err() != nil {
			return kv, err
		}
		w.log.Warn("streams not ready yet, retrying", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// leaseContext bounds an operation on the owners bucket without letting a
// shutdown abandon it on its way: a claim whose reply is not awaited would
// leave a lease that nobody releases, and a renewal one whose revision the
// release no longer matches, either holding its partition from every replica
// for a lease TTL; the release and the member's removal run as the worker stops.
func leaseContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

// Run creates the streams, serves queries and owns partitions until ctx ends;
// then it finishes the batches in hand, releases its partitions and returns.
func (w *Worker) Run(ctx context.Context) error {
	kv, err := w.ensureStreams(ctx)
	if err != nil {
		return err
	}
	w.kv = kv
	subs, err := w.serveQueries()
	if err != nil {
		return err
	}
	defer func() {
		for _, s := range subs {
			_ = s.Drain()
		}
	}()
	defer w.pub.close() // after the partitions' last publishes, deferred below
	w.started.Store(true)
	w.log.Info("worker started", "instance", w.cfg.InstanceID, "partitions", w.cfg.Partitions, "prefix", w.cfg.Prefix)

	type running struct {
		cancel  context.CancelFunc
		done    chan struct{}
		rev     uint64
		started time.Time
	}
	owned := map[int]*running{}
	// A partition that ends on its own (its consumer lost or stalled, the store
	// changed under it) wakes the loop, which claims it again at once if it ran
	// for a lease TTL at least; one that ended sooner (a takeover failing) waits
	// for the next tick, so a takeover that keeps failing does not spin.
	ended := make(chan struct{}, 1)
	var wg sync.WaitGroup
	stop := func(p int, r *running, releaseLease bool) {
		r.cancel()
		<-r.done
		delete(owned, p)
		w.metrics.owned.Set(float64(len(owned)))
		if releaseLease {
			rctx, cancel := leaseContext(ctx)
			if err := release(rctx, w.kv, p, r.rev); err != nil {
				w.log.Warn("release", "partition", p, "err", err)
			}
			cancel()
		}
	}
	defer func() {
		for p, r := range owned {
			stop(p, r, true)
		}
		wg.Wait()
		dctx, cancel := leaseContext(ctx)
		_ = w.kv.Delete(dctx, memberKey(w.cfg.InstanceID))
		cancel()
		w.log.Info("worker stopped", "instance", w.cfg.InstanceID, "config_reads", w.configs.reads)
	}()

	tick := time.NewTicker(w.cfg.LeaseTTL / 4)
	defer tick.Stop()
	for {
		if _, err := w.kv.Put(ctx, memberKey(w.cfg.InstanceID), []byte(time.Now().UTC().Format(time.RFC3339))); err != nil && ctx.Err() == nil {
			w.log.Warn("register member", "err", err)
		}
		members, err := liveMembers(ctx, w.kv)
		if err != nil && ctx.Err() == nil {
			w.log.Warn("members", "err", err)
		}
		for p := 0; p < w.cfg.Partitions && err == nil && ctx.Err() == nil; p++ {
			mine := winner(members, p) == w.cfg.InstanceID
			r, have := owned[p]
			if have {
				select {
				case <-r.done: // the run ended on its own (an error): give the lease back
					stop(p, r, true)
					if !mine || time.Since(r.started) < w.cfg.LeaseTTL {
						continue
					}
					have = false // and claim it again below
				default:
				}
			}
			if have {
				if !mine {
					stop(p, r, true)
					continue
				}
				lctx, lcancel := leaseContext(ctx)
				rev, err := renew(lctx, w.kv, p, w.cfg.InstanceID, r.rev)
				lcancel()
				if err != nil {
					w.log.Warn("lost partition", "partition", p, "err", err)
					stop(p, r, false)
					continue
				}
				r.rev = rev
				continue
			}
			if !mine {
				continue
			}
			lctx, lcancel := leaseContext(ctx)
			rev, err := claim(lctx, w.kv, p, w.cfg.InstanceID)
			lcancel()
			if err != nil {
				continue // held by another replica until it releases or its lease expires
			}
			pctx, cancel := context.WithCancel(ctx)
			r = &running{cancel: cancel, done: make(chan struct{}), rev: rev, started: time.Now()}
			owned[p] = r
			w.metrics.owned.Set(float64(len(owned)))
			pt := newPartition(w, p, rev)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					if pctx.Err() != nil {
						return // stopped by this loop
					}
					select {
					case ended <- struct{}{}:
					default:
					}
				}()
				defer close(r.done)
				defer w.metrics.pending.DeleteLabelValues(strconv.Itoa(p))
				if err := pt.takeOver(pctx); err != nil {
					if pctx.Err() == nil {
						pt.log.Error("take over", "err", err)
					}
					return
				}
				if err := pt.run(pctx); err != nil {
					pt.log.Error("partition stopped", "err", err)
				}
			}()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-ended:
		}
	}
}
