package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/state"
)

// serveQueries answers the request/reply subjects from state, in a queue group so
// each request is answered by one replica.
func (w *Worker) serveQueries() ([]*nats.Subscription, error) {
	const queue = "presenced"
	s := w.names.Subjects
	agentPrefix := s.QueryAgent("")
	a, err := w.nc.QueueSubscribe(s.QueryAgent("*"), queue, func(m *nats.Msg) {
		id := strings.TrimPrefix(m.Subject, agentPrefix)
		if !events.ValidAgentID(id) {
			respondError(m, 400, "invalid agent id: use 1-128 of A-Z a-z 0-9 _ -")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ag, err := w.store.Agent(ctx, id)
		switch {
		case errors.Is(err, state.ErrNotFound):
			respondError(m, 404, "agent "+id+" has no status")
		case err != nil:
			respondError(m, 503, "state unavailable")
		default:
			b, _ := json.Marshal(ag.Status())
			_ = m.Respond(b)
		}
	})
	if err != nil {
		return nil, err
	}
	p, err := w.nc.QueueSubscribe(s.QueryPresences(), queue, func(m *nats.Msg) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cfg, err := w.store.Config(ctx)
		if err != nil {
			respondError(m, 503, "state unavailable")
			return
		}
		list := events.Builtins()
		custom := make([]events.Presence, 0, len(cfg.Custom))
		for _, p := range cfg.Custom {
			custom = append(custom, p)
		}
		sort.Slice(custom, func(i, j int) bool { return custom[i].ID < custom[j].ID })
		b, _ := json.Marshal(append(list, custom...))
		_ = m.Respond(b)
	})
	if err != nil {
		_ = a.Unsubscribe()
		return nil, err
	}
	return []*nats.Subscription{a, p}, nil
}

// respondError follows the NATS services convention for errors.
func respondError(m *nats.Msg, code int, msg string) {
	r := nats.NewMsg(m.Reply)
	r.Header.Set("Nats-Service-Error", msg)
	r.Header.Set("Nats-Service-Error-Code", itoa(code))
	_ = m.RespondMsg(r)
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
