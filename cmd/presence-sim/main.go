// Command presence-sim simulates a contact centre floor for demos and soak
// runs: agents who sign in, send heartbeats, answer offers, finish their work
// and take breaks; agents who ignore every offer and, once made Inactive, stay
// so; and a stream of incoming work items.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "presence-sim:", err)
		os.Exit(1)
	}
}

type config struct {
	agents      []string
	ignore      map[string]bool
	decline     float64
	handleTime  time.Duration
	workRate    float64
	workstreams []string
	breakEvery  time.Duration
	breakFor    time.Duration
	returnAfter time.Duration
	heartbeat   time.Duration
	seed        uint64
}

func run(ctx context.Context, args []string, env cli.Env, out io.Writer) error {
	f := cli.NewFlags("presence-sim", "SIM", env)
	natsOpts := cli.AddNATS(f, nats.DefaultURL)
	logging := cli.AddLogging(f)
	prefix := f.String("subject-prefix", "presence", "prefix of every NATS subject")
	n := f.Int("agents", 6, 0, "how many agents (agent-01 …)")
	ignore := f.String("ignore", "agent-06", "comma-separated agents who never answer offers, take no breaks and never pick a presence (once Inactive they stay so)")
	decline := f.Float("decline", 0.1, 0, 1, "probability that an agent declines an offer")
	handle := f.Duration("handle-time", 6*time.Second, time.Millisecond, "mean time an agent spends on a work item")
	rate := f.Float("work-rate", 1, 0, 10000, "work items submitted per second (0: none)")
	ws := f.String("workstreams", "chat,voice", "comma-separated workstreams to submit work to")
	breakEvery := f.Duration("break-every", 45*time.Second, 0, "mean time between an answering agent's breaks (0: no breaks)")
	breakFor := f.Duration("break-for", 10*time.Second, time.Millisecond, "how long a break lasts")
	returnAfter := f.Duration("return-after", 20*time.Second, 0, "an answering agent made Inactive picks available again after this (0: never)")
	hb := f.Duration("heartbeat", 20*time.Second, 100*time.Millisecond, "heartbeat interval (keep it under the session TTL)")
	seed := f.Int("seed", 1, 0, "random seed")
	duration := f.Duration("duration", 0, 0, "stop after this long (0: until interrupted)")
	if err := f.Parse(args); err != nil {
		return err
	}
	log, err := logging.Logger(out)
	if err != nil {
		return err
	}
	cfg := config{ignore: map[string]bool{}, decline: *decline, handleTime: *handle, workRate: *rate,
		breakEvery: *breakEvery, breakFor: *breakFor, returnAfter: *returnAfter, heartbeat: *hb, seed: uint64(*seed)}
	for i := 1; i <= *n; i++ {
		cfg.agents = append(cfg.agents, fmt.Sprintf("agent-%02d", i))
	}
	for _, a := range strings.Split(*ignore, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.ignore[a] = true
		}
	}
	for _, w := range strings.Split(*ws, ",") {
		if w = strings.TrimSpace(w); w != "" {
			if !events.ValidWorkstreamID(w) {
				return fmt.Errorf("--workstreams: %q is not a workstream id (A-Z a-z 0-9 _ -)", w)
			}
			cfg.workstreams = append(cfg.workstreams, w)
		}
	}
	if cfg.workRate > 0 && len(cfg.workstreams) == 0 {
		return errors.New("--work-rate needs at least one workstream in --workstreams")
	}
	nc, err := natsOpts.Connect("presence-sim", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	s, err := newSim(nc, events.Subjects{Prefix: *prefix}, cfg, log)
	if err != nil {
		return err
	}
	return s.run(ctx)
}

type sim struct {
	cfg   config
	nc    *nats.Conn
	js    jetstream.JetStream
	subj  events.Subjects
	log   *slog.Logger
	runID string

	mu  sync.Mutex
	rnd *rand.Rand
	seq int
	// presence of each simulated agent, from the status stream
	presence map[string]string
}

func newSim(nc *nats.Conn, subj events.Subjects, cfg config, log *slog.Logger) (*sim, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &sim{cfg: cfg, nc: nc, js: js, subj: subj, log: log, rnd: rand.New(rand.NewPCG(cfg.seed, 7)),
		runID: strconv.FormatInt(time.Now().UnixMilli(), 36), presence: map[string]string{}}, nil
}

func (s *sim) nextID(kind string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("%s-%s-%d", kind, s.runID, s.seq)
}

func (s *sim) float() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rnd.Float64()
}

// jitter spreads d over [0.5d, 1.5d).
func (s *sim) jitter(d time.Duration) time.Duration {
	return time.Duration((0.5 + s.float()) * float64(d))
}

func (s *sim) send(ctx context.Context, typ events.Type, agent string, data any) {
	m, err := events.NewInput(s.subj, typ, agent, s.nextID("sim"), "presence-sim", data)
	if err == nil {
		_, err = s.js.PublishMsg(ctx, m)
	}
	if err != nil && ctx.Err() == nil {
		s.log.Warn("publish failed", "type", typ, "agent", agent, "err", err)
	}
}

func (s *sim) run(ctx context.Context) error {
	sub, err := s.nc.Subscribe(s.subj.StatusWildcard(), func(m *nats.Msg) {
		if st, err := events.DecodeStatus(m); err == nil {
			s.mu.Lock()
			s.presence[st.AgentID] = st.PresenceID
			s.mu.Unlock()
		}
	})
	if err != nil {
		return fmt.Errorf("follow statuses: %w", err)
	}
	defer sub.Unsubscribe()
	var wg sync.WaitGroup
	for _, a := range s.cfg.agents {
		wg.Go(func() { s.agent(ctx, a) })
	}
	if s.cfg.workRate > 0 {
		wg.Go(func() { s.produce(ctx) })
	}
	s.log.Info("simulation running", "agents", len(s.cfg.agents), "ignoring_offers", slices.Sorted(func(yield func(string) bool) {
		for a := range s.cfg.ignore {
			if !yield(a) {
				return
			}
		}
	}), "work_per_second", s.cfg.workRate)
	wg.Wait()
	return nil
}

// agent plays one agent until ctx ends, then signs it out.
func (s *sim) agent(ctx context.Context, id string) {
	log := s.log.With("agent", id)
	session := events.SessionData{SessionID: "desk"}
	sub, err := s.nc.Subscribe(s.subj.OfferSubject(id), func(m *nats.Msg) { s.onOffer(ctx, id, m, log) })
	if err != nil {
		log.Error("cannot listen for offers", "err", err)
		return
	}
	defer sub.Unsubscribe()
	s.send(ctx, events.AgentLogin, id, session)
	log.Info("signed in")
	hb := time.NewTicker(s.cfg.heartbeat)
	defer hb.Stop()
	// An agent who ignores offers has left its desk: it never picks a presence,
	// so once a missed offer makes it Inactive it stays Inactive and gets no
	// more work, which is the story the demo tells. A break would end with
	// "available" and undo that.
	var nextBreak <-chan time.Time
	if !s.cfg.ignore[id] {
		nextBreak = s.timer(s.cfg.breakEvery)
	}
	var inactiveSince time.Time
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			s.send(context.Background(), events.AgentLogout, id, session)
			log.Info("signed out")
			return
		case <-hb.C:
			s.send(ctx, events.AgentHeartbeat, id, session)
		case <-nextBreak:
			s.send(ctx, events.AgentPresenceSet, id, events.PresenceSetData{PresenceID: "away"})
			log.Info("on a break", "for", s.cfg.breakFor)
			select {
			case <-ctx.Done():
				continue
			case <-time.After(s.cfg.breakFor):
			}
			s.send(ctx, events.AgentPresenceSet, id, events.PresenceSetData{PresenceID: "available"})
			log.Info("back from break")
			nextBreak = s.timer(s.cfg.breakEvery)
		case <-check.C:
			// An attentive agent notices it was made Inactive and comes back.
			if s.cfg.ignore[id] || s.cfg.returnAfter == 0 {
				continue
			}
			s.mu.Lock()
			p := s.presence[id]
			s.mu.Unlock()
			switch {
			case p != "inactive":
				inactiveSince = time.Time{}
			case inactiveSince.IsZero():
				inactiveSince = time.Now()
			case time.Since(inactiveSince) >= s.cfg.returnAfter:
				s.send(ctx, events.AgentPresenceSet, id, events.PresenceSetData{PresenceID: "available"})
				log.Info("noticed being Inactive, available again")
				inactiveSince = time.Time{}
			}
		}
	}
}

func (s *sim) timer(mean time.Duration) <-chan time.Time {
	if mean <= 0 {
		return nil
	}
	return time.After(s.jitter(mean))
}

func (s *sim) onOffer(ctx context.Context, agent string, m *nats.Msg, log *slog.Logger) {
	var o events.Offer
	if _, rej := events.DecodeRouting(m.Header, m.Data, events.WorkOffered, &o); rej != nil {
		log.Warn("unreadable offer", "err", rej)
		return
	}
	if s.cfg.ignore[agent] {
		log.Info("offer ignored", "workItem", o.WorkItemID)
		return
	}
	accept := s.float() >= s.cfg.decline
	b, _ := json.Marshal(events.OfferReply{Accept: accept})
	if err := m.Respond(b); err != nil {
		log.Warn("cannot answer offer", "err", err)
		return
	}
	if !accept {
		log.Info("offer declined", "workItem", o.WorkItemID)
		return
	}
	took := s.jitter(s.cfg.handleTime)
	log.Info("working", "workItem", o.WorkItemID, "workstream", o.WorkstreamID, "for", took.Round(time.Millisecond))
	time.AfterFunc(took, func() {
		if ctx.Err() != nil {
			return
		}
		msg, err := events.NewRoutingEvent(s.subj.DoneSubject(agent), events.WorkCompleted, "done-"+o.WorkItemID, "presence-sim",
			events.WorkCompletedData{WorkItemID: o.WorkItemID})
		if err == nil {
			_, err = s.js.PublishMsg(ctx, msg)
		}
		if err != nil {
			log.Warn("completion not sent", "workItem", o.WorkItemID, "err", err)
			return
		}
		log.Info("done", "workItem", o.WorkItemID)
	})
}

// produce submits work at the configured rate to the workstreams in turn.
func (s *sim) produce(ctx context.Context) {
	t := time.NewTicker(time.Duration(float64(time.Second) / s.cfg.workRate))
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ws := s.cfg.workstreams[i%len(s.cfg.workstreams)]
		id := s.nextID("w")
		msg, err := events.NewRoutingEvent(s.subj.WorkSubject(ws), events.WorkSubmitted, "submit-"+id, "presence-sim", events.WorkItem{ID: id, WorkstreamID: ws})
		if err == nil {
			_, err = s.js.PublishMsg(ctx, msg)
		}
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("work not submitted (is the router running? it creates the work stream)", "err", err)
			}
			continue
		}
		s.log.Debug("work submitted", "workItem", id, "workstream", ws)
	}
}
