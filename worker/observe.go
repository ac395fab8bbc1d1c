package worker

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/handlers"
	"github.com/presenced/presenced/state"
)

// observedStore counts the state store's failures by operation, so an operator
// sees which backend a retrying worker is waiting for.
type observedStore struct {
	state.Store
	backend string
	errs    *prometheus.CounterVec
}

func observeStore(s state.Store, errs *prometheus.CounterVec) state.Store {
	backend := "redis"
	if _, ok := s.(*state.Memory); ok {
		backend = "memory"
	}
	return observedStore{Store: s, backend: backend, errs: errs}
}

func (s observedStore) count(op string, err error) error {
	if err != nil && !errors.Is(err, state.ErrNotFound) && !errors.Is(err, context.Canceled) {
		s.errs.WithLabelValues(s.backend, op).Inc()
	}
	return err
}

func (s observedStore) Load(ctx context.Context, ids []string) ([]state.Record, error) {
	out, err := s.Store.Load(ctx, ids)
	return out, s.count("load", err)
}

func (s observedStore) Commit(ctx context.Context, p int, commits []state.Commit, index []state.IndexEntry) ([]bool, error) {
	out, err := s.Store.Commit(ctx, p, commits, index)
	return out, s.count("commit", err)
}

func (s observedStore) DropOutbox(ctx context.Context, published map[string]uint64) error {
	return s.count("drop_outbox", s.Store.DropOutbox(ctx, published))
}

func (s observedStore) SaveSeen(ctx context.Context, seen map[string][]state.Seen, expire map[string]time.Time) error {
	return s.count("save_seen", s.Store.SaveSeen(ctx, seen, expire))
}

func (s observedStore) Verify(ctx context.Context, seqs map[string]uint64) ([]string, error) {
	bad, err := s.Store.Verify(ctx, seqs)
	return bad, s.count("verify", err)
}

func (s observedStore) Agent(ctx context.Context, agentID string) (handlers.Agent, error) {
	a, err := s.Store.Agent(ctx, agentID)
	return a, s.count("agent", err)
}

func (s observedStore) LoadPartition(ctx context.Context, p int) (state.Partition, bool, error) {
	rec, found, err := s.Store.LoadPartition(ctx, p)
	return rec, found, s.count("load_partition", err)
}

func (s observedStore) SwapPartition(ctx context.Context, p int, old, rec state.Partition) (bool, error) {
	ok, err := s.Store.SwapPartition(ctx, p, old, rec)
	return ok, s.count("swap_partition", err)
}

func (s observedStore) Config(ctx context.Context) (handlers.Config, error) {
	c, err := s.Store.Config(ctx)
	return c, s.count("config", err)
}

func (s observedStore) SaveConfig(ctx context.Context, cfg handlers.Config) (bool, error) {
	ok, err := s.Store.SaveConfig(ctx, cfg)
	return ok, s.count("save_config", err)
}

func (s observedStore) DueAgents(ctx context.Context, p int, now time.Time, limit int) ([]string, error) {
	ids, err := s.Store.DueAgents(ctx, p, now, limit)
	return ids, s.count("due_agents", err)
}

func (s observedStore) AgentsIn(ctx context.Context, p int, presenceID string) ([]string, error) {
	ids, err := s.Store.AgentsIn(ctx, p, presenceID)
	return ids, s.count("agents_in", err)
}

func (s observedStore) Ping(ctx context.Context) error {
	return s.count("ping", s.Store.Ping(ctx))
}

// natsFailed counts a failed NATS operation and returns err.
func (w *Worker) natsFailed(op string, err error) error {
	if err != nil && !errors.Is(err, context.Canceled) {
		w.metrics.backendErrors.WithLabelValues("nats", op).Inc()
	}
	return err
}
