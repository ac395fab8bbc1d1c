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
	if err := pt.load(ctx, ids); err != nil {
		return fmt.Errorf("load due agents: %w", err)
	}
	for id, at := range pt.fired {
		if now.Sub(at) > 2*w.cfg.DedupeWindow {
			delete(pt.fired, id)
		}
	}
	var repair []state.IndexEntry
	for _, agentID := range ids {
		a := pt.agents[agentID].agent
		if d := a.NextDeadline(); d.IsZero() || d.After(now) {
			// The index says due, the agent does not: an entry a heartbeat left
			// behind on purpose (leaseIndexMoves), or one left by a write that
			// did not finish or by an older layout. Left alone, it would be read
			// again every sweep and take a place among the limit's 500.
			repair = append(repair, state.IndexEntry{AgentID: agentID, Lease: true, Deadline: d})
			continue
		}
		for _, sess := range a.Sessions {
			if sess.Deadline.IsZero() || sess.Deadline.After(now) {
				continue
			}
			id := events.ExpiryCauseID(agentID, sess.ID, sess.Deadline)
			if _, ok := pt.fired[id]; ok {
				continue
			}
			m, err := events.NewInput(w.names.Subjects, events.SessionExpired, agentID, id, w.cfg.Source,
				events.SessionExpiredData{SessionID: sess.ID, Deadline: sess.Deadline})
			if err != nil {
				return fmt.Errorf("build expiry: %w", err)
			}
			if _, err := w.js.PublishMsg(ctx, m); err != nil {
				return w.natsFailed("publish", fmt.Errorf("publish expiry of %s/%s: %w", agentID, sess.ID, err))
			}
			pt.fired[id] = now
		}
	}
	if len(repair) > 0 {
		if _, err := w.store.Commit(ctx, pt.p, nil, repair); err != nil {
			return fmt.Errorf("repair lease index: %w", err)
		}
		// Bookkeeping only, which no checkpoint copy reads: the entries
		// themselves stay as they are.
		for _, r := range repair {
			if e := pt.agents[r.AgentID]; e != nil && e.indexed {
				e.leaseIndexed = r.Deadline
			}
		}
	}
	return nil
}
