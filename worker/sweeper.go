package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/state"
)

// sweep publishes a session.expired event for every session of the partition
// whose lease ran out. The event goes through the input stream like any other, so
// it is applied in order after every input stored before it (a heartbeat still
// waiting there wins), and its deterministic id lets JetStream drop copies sent by
// a previous owner.
func (pt *partition) sweep(ctx context.Context) error {
	w := pt.w
	now := time.Now()
	ids, err := w.store.DueAgents(ctx, pt.p, now, 500)
	if err != nil || len(ids) == 0 {
		return err
	}
	reqs := make([]state.LoadRequest, len(ids))
	for i, id := range ids {
		reqs[i] = state.LoadRequest{AgentID: id}
	}
	snaps, err := w.store.Load(ctx, reqs)
	if err != nil {
		return fmt.Errorf("load due agents: %w", err)
	}
	for id, at := range pt.fired {
		if now.Sub(at) > 2*w.cfg.DedupeWindow {
			delete(pt.fired, id)
		}
	}
	for _, s := range snaps {
		for _, sess := range s.Agent.Sessions {
			if sess.Deadline.IsZero() || sess.Deadline.After(now) {
				continue
			}
			id := events.ExpiryCauseID(s.Agent.ID, sess.ID, sess.Deadline)
			if _, ok := pt.fired[id]; ok {
				continue
			}
			m, err := events.NewInput(w.names.Subjects, events.SessionExpired, s.Agent.ID, id, w.cfg.Source,
				events.SessionExpiredData{SessionID: sess.ID, Deadline: sess.Deadline})
			if err != nil {
				return fmt.Errorf("build expiry: %w", err)
			}
			if _, err := w.js.PublishMsg(ctx, m); err != nil {
				return fmt.Errorf("publish expiry of %s/%s: %w", s.Agent.ID, sess.ID, err)
			}
			pt.fired[id] = now
		}
	}
	return nil
}
