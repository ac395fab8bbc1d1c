// Package router is the library routing engines build on: it rebuilds every
// agent's status from the status stream, follows it live, holds the workstreams
// with their allowed base statuses, and answers which agents may take a
// workstream's work now.
package router

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
)

// Config configures a Router; zero values mean the defaults named.
type Config struct {
	// Prefix starts every subject. Default "presence".
	Prefix string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Agent is what a router knows of an agent: its last status.
type Agent struct {
	AgentID    string            `json:"agentId"`
	PresenceID string            `json:"presenceId"`
	BaseStatus events.BaseStatus `json:"baseStatus"`
	Since      time.Time         `json:"since"`
	SignedIn   bool              `json:"-"`
	Version    uint64            `json:"-"`
}

// ErrUnknownWorkstream is returned for a workstream never configured or removed.
var ErrUnknownWorkstream = errors.New("unknown workstream")

// ErrNotReady is returned by Eligible until the snapshot is loaded: a list built
// from half the statuses, or before the workstreams are read, would leave out
// agents who may take the work, or call a configured workstream unknown.
var ErrNotReady = errors.New("router still loading statuses and workstreams")

// LagUnknown is what Lag reports before the router has opened both streams
// and so cannot yet tell how much it has to read.
const LagUnknown = math.MaxUint64

// Router holds the picture. Its methods are safe for concurrent use.
type Router struct {
	cfg  Config
	subj events.Subjects
	js   jetstream.JetStream
	nc   *nats.Conn
	log  *slog.Logger

	mu          sync.RWMutex
	agents      map[string]Agent
	byStatus    map[events.BaseStatus]map[string]struct{} // signed-in agents only
	workstreams map[string]events.Workstream
	changed     chan struct{} // closed and replaced on every change

	statusReady, wsReady atomic.Bool
	statusLag, wsLag     atomic.Uint64

	// applyHook, when a test sets it, runs before each message of either
	// stream is applied, so the test can hold the router mid-load.
	applyHook func()
}

// New builds a router on nc; Run fills it.
func New(nc *nats.Conn, cfg Config) (*Router, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "presence"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	r := &Router{cfg: cfg, subj: events.Subjects{Prefix: cfg.Prefix}, js: js, nc: nc, log: cfg.Logger,
		agents: map[string]Agent{}, byStatus: map[events.BaseStatus]map[string]struct{}{}, workstreams: map[string]events.Workstream{}, changed: make(chan struct{})}
	r.statusLag.Store(LagUnknown)
	r.wsLag.Store(LagUnknown)
	return r, nil
}

// RoutingStream is the stream of workstream configuration, last message per workstream.
func RoutingStream(prefix string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(prefix)) + "_ROUTING"
}

// EnsureRoutingStream creates the workstream stream if it is missing; routers and
// admin tools both call it, so whichever starts first creates it.
func EnsureRoutingStream(ctx context.Context, js jetstream.JetStream, prefix string) error {
	name := RoutingStream(prefix)
	if _, err := js.Stream(ctx, name); err == nil {
		return nil
	}
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:              name,
		Description:       "presenced workstreams, last message per workstream",
		Subjects:          []string{prefix + ".routing.workstream.*"},
		MaxMsgsPerSubject: 1,
		Storage:           jetstream.FileStorage,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create stream %s: %w", name, err)
	}
	return nil
}

// Ready reports whether the snapshot of statuses and workstreams is loaded.
// Once true it stays true.
func (r *Router) Ready() bool { return r.statusReady.Load() && r.wsReady.Load() }

// Lag is how many messages of the status and workstream streams the router
// has still to read: while it loads the snapshot, how much of the snapshot is
// left; afterwards, how far it is behind live changes. Before Run has opened
// both streams it reports LagUnknown, never 0, so 0 always means caught up.
func (r *Router) Lag() uint64 {
	s, w := r.statusLag.Load(), r.wsLag.Load()
	if s == LagUnknown || w == LagUnknown {
		return LagUnknown
	}
	return s + w
}

// Readiness is nil once the router is Ready, else ErrNotReady wrapped with how
// much is left to read, for health checks and error replies.
func (r *Router) Readiness() error {
	if r.Ready() {
		return nil
	}
	if lag := r.Lag(); lag != LagUnknown {
		return fmt.Errorf("%w (%d messages to read)", ErrNotReady, lag)
	}
	return fmt.Errorf("%w (streams not opened yet)", ErrNotReady)
}

// Run reads the last status of every agent and every workstream, then follows
// both live until ctx ends.
func (r *Router) Run(ctx context.Context) error {
	if err := EnsureRoutingStream(ctx, r.js, r.cfg.Prefix); err != nil {
		return err
	}
	statusStream := strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(r.cfg.Prefix)) + "_STATUS"
	// Both streams are opened, and their pending counts taken, before either
	// is read, so Lag counts the whole snapshot from the first message on.
	statuses, err := r.open(ctx, statusStream, r.cfg.Prefix+".status.>", &r.statusReady, &r.statusLag)
	if err != nil {
		return err
	}
	workstreams, err := r.open(ctx, RoutingStream(r.cfg.Prefix), r.cfg.Prefix+".routing.workstream.*", &r.wsReady, &r.wsLag)
	if err != nil {
		return err
	}
	stop1, err := r.follow(statuses, statusStream, &r.statusReady, &r.statusLag, r.onStatus)
	if err != nil {
		return err
	}
	defer stop1()
	stop2, err := r.follow(workstreams, RoutingStream(r.cfg.Prefix), &r.wsReady, &r.wsLag, r.onWorkstream)
	if err != nil {
		return err
	}
	defer stop2()
	<-ctx.Done()
	return nil
}

// open creates a consumer of a stream's last message per subject and then
// every new one, and records how many messages the snapshot holds. The ordered
// consumer recreates itself on gaps, so nothing is skipped.
func (r *Router) open(ctx context.Context, stream, filter string, ready *atomic.Bool, lag *atomic.Uint64) (jetstream.Consumer, error) {
	cons, err := r.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("follow %s: %w", stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("follow %s: %w", stream, err)
	}
	r.progress(info.NumPending, ready, lag)
	return cons, nil
}

// follow applies every message of an opened consumer until the returned stop.
func (r *Router) follow(cons jetstream.Consumer, stream string, ready *atomic.Bool, lag *atomic.Uint64, apply func(jetstream.Msg)) (func(), error) {
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if r.applyHook != nil {
			r.applyHook()
		}
		apply(m)
		if meta, err := m.Metadata(); err == nil {
			r.progress(meta.NumPending, ready, lag)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("follow %s: %w", stream, err)
	}
	return cc.Stop, nil
}

// progress records how much of a stream is left to read. Ready is stored
// before the lag, so whoever reads a lag of 0 also finds the router Ready;
// becoming Ready is announced on Changed, so a waiter need not poll for it.
func (r *Router) progress(pending uint64, ready *atomic.Bool, lag *atomic.Uint64) {
	if pending == 0 && !ready.Load() {
		ready.Store(true)
		if r.Ready() {
			r.mu.Lock()
			r.notifyLocked()
			r.mu.Unlock()
		}
	}
	lag.Store(pending)
}

func (r *Router) onStatus(m jetstream.Msg) {
	st, err := events.DecodeStatus(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
	if err != nil {
		r.log.Warn("unreadable status event", "subject", m.Subject(), "err", err)
		return
	}
	r.Apply(st)
}

// Apply takes a status into the picture unless the router already holds one at
// least as new, and reports whether it did.
func (r *Router) Apply(st events.StatusChanged) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.agents[st.AgentID]
	if ok && cur.Version >= st.Version {
		return false
	}
	if ok && cur.SignedIn {
		delete(r.byStatus[cur.BaseStatus], cur.AgentID)
	}
	a := Agent{AgentID: st.AgentID, PresenceID: st.PresenceID, BaseStatus: st.BaseStatus, Since: st.Since, SignedIn: st.SignedIn, Version: st.Version}
	r.agents[a.AgentID] = a
	if a.SignedIn {
		set := r.byStatus[a.BaseStatus]
		if set == nil {
			set = map[string]struct{}{}
			r.byStatus[a.BaseStatus] = set
		}
		set[a.AgentID] = struct{}{}
	}
	r.notifyLocked()
	return true
}

func (r *Router) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// WaitReady blocks until the router is Ready (its snapshot loaded) or ctx ends.
func (r *Router) WaitReady(ctx context.Context) error {
	for {
		ch := r.Changed()
		if r.Ready() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ctx.Err(), r.Readiness())
		}
	}
}

// Changed returns a channel closed at the next change of an agent or a
// workstream, and when the router becomes Ready, so a dispatcher can wait for
// eligibility to change instead of polling.
func (r *Router) Changed() <-chan struct{} {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.changed
}

func (r *Router) onWorkstream(m jetstream.Msg) {
	id := m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]
	ws, removed, rej := events.DecodeWorkstream(m.Headers(), m.Data(), id)
	if rej != nil {
		r.log.Warn("ignoring invalid workstream event", "subject", m.Subject(), "code", rej.Code, "err", rej.Message)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.notifyLocked()
	if removed {
		delete(r.workstreams, id)
		return
	}
	r.workstreams[id] = ws
}

// Agent returns what the router holds for an agent.
func (r *Router) Agent(id string) (Agent, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.agents[id]
	return a, ok
}

// Workstream returns a configured workstream.
func (r *Router) Workstream(id string) (events.Workstream, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ws, ok := r.workstreams[id]
	return ws, ok
}

// Eligible lists the signed-in agents whose base status the workstream allows,
// longest in their presence first. It reads only the agents of the allowed
// statuses, never all of them. Until the router is Ready it returns an error
// wrapping ErrNotReady.
func (r *Router) Eligible(workstreamID string) ([]Agent, error) {
	if err := r.Readiness(); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	ws, ok := r.workstreams[workstreamID]
	if !ok {
		return nil, ErrUnknownWorkstream
	}
	var out []Agent
	for _, b := range ws.AllowedBaseStatuses {
		for id := range r.byStatus[b] {
			out = append(out, r.agents[id])
		}
	}
	slices.SortFunc(out, func(a, b Agent) int {
		return cmp.Or(a.Since.Compare(b.Since), strings.Compare(a.AgentID, b.AgentID))
	})
	return out, nil
}

// EligibleReply is the reply of the eligibility query (contract §8).
type EligibleReply struct {
	WorkstreamID string  `json:"workstreamId"`
	Agents       []Agent `json:"agents"`
}

// Serve answers the eligibility query subject until the subscription is
// drained: the reply of contract §8, or by the NATS services convention 404 for
// an unknown workstream and 503 while the router is not Ready.
func (r *Router) Serve() (*nats.Subscription, error) {
	prefix := r.subj.Eligible("")
	return r.nc.QueueSubscribe(r.subj.Eligible("*"), "presence-router", func(m *nats.Msg) {
		reply, code, err := r.eligibleReply(strings.TrimPrefix(m.Subject, prefix))
		if err != nil {
			msg := nats.NewMsg(m.Reply)
			msg.Header.Set("Nats-Service-Error", err.Error())
			msg.Header.Set("Nats-Service-Error-Code", strconv.Itoa(code))
			_ = m.RespondMsg(msg)
			return
		}
		b, _ := json.Marshal(reply)
		_ = m.Respond(b)
	})
}

// eligibleReply is the answer to an eligibility query, or the error with the
// HTTP status code that says what kind it is.
func (r *Router) eligibleReply(id string) (EligibleReply, int, error) {
	agents, err := r.Eligible(id)
	switch {
	case errors.Is(err, ErrNotReady):
		return EligibleReply{}, http.StatusServiceUnavailable, err
	case errors.Is(err, ErrUnknownWorkstream):
		return EligibleReply{}, http.StatusNotFound, fmt.Errorf("unknown workstream %s", id)
	case err != nil:
		return EligibleReply{}, http.StatusInternalServerError, err
	}
	if agents == nil {
		agents = []Agent{}
	}
	return EligibleReply{WorkstreamID: id, Agents: agents}, http.StatusOK, nil
}
