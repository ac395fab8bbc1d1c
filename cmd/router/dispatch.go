package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/router"
)

type dispatchConfig struct {
	Prefix       string
	Source       string
	OfferTimeout time.Duration
	// Hold keeps an agent who missed or declined an offer out of offers for a
	// while, since its status change may not have reached the router yet.
	Hold     time.Duration
	Capacity int // units an agent can hold at once
}

// Names of the router's own stream and bucket.
func workStream(prefix string) string   { return base(prefix) + "_WORK" }
func routerBucket(prefix string) string { return base(prefix) + "_ROUTER" }
func base(prefix string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(prefix))
}

// item is a work item the router holds: pending until an agent accepts it.
type item struct {
	events.WorkItem
	AgentID   string    `json:"agentId,omitempty"`
	Submitted time.Time `json:"submitted"`

	tried    map[string]bool
	offering bool
	attempts int
}

// dispatcher offers pending work to eligible agents and keeps their capacity.
// Work items and agents' loads live in a KV bucket, so a restarted router
// resumes the queue and re-announces every agent's capacity (contract §8).
type dispatcher struct {
	cfg  dispatchConfig
	r    *router.Router
	nc   *nats.Conn
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	subj events.Subjects
	log  *slog.Logger
	m    *routerMetrics

	// runID is new for every start of the router and goes into the id of every
	// event it publishes. Ids are otherwise built from what a run counts (an
	// offer's attempt, an announcement's number), which starts again after a
	// restart: without runID a restarted router would repeat an id of its
	// previous run, and JetStream's duplicate window or the worker's dedupe
	// would drop a new missed notification or capacity change as a copy.
	runID  string
	capSeq uint64 // capacity announcements of this run; guarded by capMu

	mu      sync.Mutex
	loads   map[string]load
	holds   map[string]hold
	pending []*item
	wake    chan struct{}

	// capMu orders every load change with the capacity event that announces
	// it, so an agent's capacity events leave in the order of its changes.
	capMu sync.Mutex
}

type routerMetrics struct {
	offers   *prometheus.CounterVec
	pending  prometheus.GaugeFunc
	assigned prometheus.Counter
	done     prometheus.Counter
}

func newDispatcher(r *router.Router, nc *nats.Conn, cfg dispatchConfig, log *slog.Logger, reg prometheus.Registerer) (*dispatcher, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	d := &dispatcher{cfg: cfg, r: r, nc: nc, js: js, subj: events.Subjects{Prefix: cfg.Prefix}, log: log, runID: newRunID(),
		loads: map[string]load{}, holds: map[string]hold{}, wake: make(chan struct{}, 1)}
	d.m = &routerMetrics{
		offers:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presence_router_offers_total", Help: "Offers by outcome (accepted, declined, missed)."}, []string{"outcome"}),
		assigned: prometheus.NewCounter(prometheus.CounterOpts{Name: "presence_router_assigned_total", Help: "Work items assigned."}),
		done:     prometheus.NewCounter(prometheus.CounterOpts{Name: "presence_router_completed_total", Help: "Work items completed."}),
	}
	d.m.pending = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "presence_router_pending", Help: "Work items waiting for an agent."}, func() float64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		return float64(len(d.pending))
	})
	if reg != nil {
		reg.MustRegister(d.m.offers, d.m.assigned, d.m.done, d.m.pending)
	}
	return d, nil
}

// newRunID is random rather than the start time, so two routers started in the
// same instant, or a clock set back, still never share one.
func newRunID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// run restores the queue and the loads, re-announces capacity, then consumes
// work and completions and dispatches until ctx ends.
func (d *dispatcher) run(ctx context.Context) error {
	if err := d.setup(ctx); err != nil {
		return err
	}
	if err := d.restore(ctx); err != nil {
		return err
	}
	cons, err := d.js.CreateOrUpdateConsumer(ctx, workStream(d.cfg.Prefix), jetstream.ConsumerConfig{
		Durable: "router", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 256,
	})
	if err != nil {
		return fmt.Errorf("work consumer: %w", err)
	}
	// A message being handled at shutdown is finished, not abandoned: an
	// abandoned one would only come back after the ack wait.
	handleCtx := context.WithoutCancel(ctx)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		hctx, cancel := context.WithTimeout(handleCtx, 10*time.Second)
		defer cancel()
		d.onWork(hctx, m)
	})
	if err != nil {
		return fmt.Errorf("consume work: %w", err)
	}
	d.loop(ctx)
	// Drain returns at once; the connection must stay open until the message in
	// hand is acknowledged, so wait until the consumer has really stopped.
	cc.Drain()
	select {
	case <-cc.Closed():
	case <-time.After(15 * time.Second):
		d.log.Warn("work consumer still draining at shutdown")
	}
	return nil
}

func (d *dispatcher) setup(ctx context.Context) error {
	_, err := d.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        workStream(d.cfg.Prefix),
		Description: "work items submitted to the reference router, and their completions",
		Subjects:    []string{d.cfg.Prefix + ".routing.work.*", d.cfg.Prefix + ".routing.done.*"},
		MaxAge:      24 * time.Hour,
		Storage:     jetstream.FileStorage,
		Duplicates:  2 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", workStream(d.cfg.Prefix), err)
	}
	kv, err := d.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      routerBucket(d.cfg.Prefix),
		Description: "reference router: pending and assigned work, agents' loads",
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("bucket %s: %w", routerBucket(d.cfg.Prefix), err)
	}
	d.kv = kv
	return nil
}

// restore reads the bucket back. An item named in an agent's load is assigned
// even if its own record says otherwise (the router stopped between the two writes).
func (d *dispatcher) restore(ctx context.Context) error {
	keys, err := d.kv.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("list %s: %w", routerBucket(d.cfg.Prefix), err)
	}
	var items []*item
	for k := range keys.Keys() {
		e, err := d.kv.Get(ctx, k)
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				continue
			}
			return fmt.Errorf("get %s: %w", k, err)
		}
		switch {
		case strings.HasPrefix(k, "agent."):
			var l load
			if err := json.Unmarshal(e.Value(), &l); err != nil {
				d.log.Warn("unreadable load record, ignored", "key", k, "err", err)
				continue
			}
			d.loads[strings.TrimPrefix(k, "agent.")] = l
		case strings.HasPrefix(k, "work."):
			it := &item{}
			if err := json.Unmarshal(e.Value(), it); err != nil {
				d.log.Warn("unreadable work record, ignored", "key", k, "err", err)
				continue
			}
			items = append(items, it)
		}
	}
	assigned := map[string]bool{}
	for _, l := range d.loads {
		for id := range l.Items {
			assigned[id] = true
		}
	}
	for _, it := range items {
		if it.AgentID == "" && !assigned[it.ID] {
			it.tried = map[string]bool{}
			d.pending = append(d.pending, it)
		}
	}
	sortItems(d.pending)
	d.capMu.Lock()
	defer d.capMu.Unlock()
	for agent, l := range d.loads {
		if err := d.announce(ctx, agent, l, "restart"); err != nil {
			return err
		}
	}
	d.log.Info("router state restored", "pending", len(d.pending), "agents", len(d.loads))
	return nil
}

// sortItems puts the oldest first, so a restart keeps the queue's order.
func sortItems(items []*item) {
	slices.SortStableFunc(items, func(a, b *item) int { return a.Submitted.Compare(b.Submitted) })
}

// onWork handles one message of the work stream: a submission or a completion.
func (d *dispatcher) onWork(ctx context.Context, m jetstream.Msg) {
	subject := m.Subject()
	token := subject[strings.LastIndexByte(subject, '.')+1:]
	var err error
	if strings.HasPrefix(subject, d.cfg.Prefix+".routing.done.") {
		err = d.completed(ctx, token, m)
	} else {
		err = d.submitted(ctx, token, m)
	}
	if err != nil {
		d.log.Warn("work message not handled yet, will come again", "subject", subject, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	_ = m.Ack()
}

func (d *dispatcher) submitted(ctx context.Context, workstream string, m jetstream.Msg) error {
	var w events.WorkItem
	if _, rej := events.DecodeRouting(m.Headers(), m.Data(), events.WorkSubmitted, &w); rej != nil {
		d.log.Warn("invalid work item dropped", "subject", m.Subject(), "code", rej.Code, "err", rej.Message)
		return nil
	}
	if rej := w.Validate(workstream); rej != nil {
		d.log.Warn("invalid work item dropped", "subject", m.Subject(), "code", rej.Code, "err", rej.Message)
		return nil
	}
	it := &item{WorkItem: w, Submitted: time.Now().UTC(), tried: map[string]bool{}}
	if meta, err := m.Metadata(); err == nil {
		it.Submitted = meta.Timestamp.UTC()
	}
	b, _ := json.Marshal(it)
	if _, err := d.kv.Create(ctx, "work."+w.ID, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil // a redelivery or a repeated submission
		}
		return fmt.Errorf("store work item %s: %w", w.ID, err)
	}
	d.mu.Lock()
	d.pending = append(d.pending, it)
	d.mu.Unlock()
	d.poke()
	d.log.Debug("work item queued", "workItem", w.ID, "workstream", w.WorkstreamID)
	return nil
}

func (d *dispatcher) completed(ctx context.Context, agent string, m jetstream.Msg) error {
	var c events.WorkCompletedData
	if _, rej := events.DecodeRouting(m.Headers(), m.Data(), events.WorkCompleted, &c); rej != nil {
		d.log.Warn("invalid completion dropped", "subject", m.Subject(), "code", rej.Code, "err", rej.Message)
		return nil
	}
	d.capMu.Lock()
	defer d.capMu.Unlock()
	d.mu.Lock()
	l, ok := d.loads[agent]
	_, holds := l.Items[c.WorkItemID]
	d.mu.Unlock()
	if !ok || !holds {
		d.log.Warn("completion of a work item the agent does not hold, ignored", "agent", agent, "workItem", c.WorkItemID)
		return nil
	}
	next := load{Total: l.Total, Items: map[string]int{}, LastWork: time.Now().UTC()}
	for id, u := range l.Items {
		if id != c.WorkItemID {
			next.Items[id] = u
		}
	}
	if err := d.setLoad(ctx, agent, next, "completed"); err != nil {
		return err
	}
	if err := d.kv.Delete(ctx, "work."+c.WorkItemID); err != nil {
		d.log.Warn("work record not deleted", "workItem", c.WorkItemID, "err", err)
	}
	d.m.done.Inc()
	d.poke()
	return nil
}

// setLoad stores an agent's new load and announces its capacity. Callers hold capMu.
func (d *dispatcher) setLoad(ctx context.Context, agent string, l load, why string) error {
	b, _ := json.Marshal(l)
	if _, err := d.kv.Put(ctx, "agent."+agent, b); err != nil {
		return fmt.Errorf("store load of %s: %w", agent, err)
	}
	d.mu.Lock()
	d.loads[agent] = l
	d.mu.Unlock()
	return d.announce(ctx, agent, l, why)
}

// announce publishes an agent's capacity. Callers hold capMu.
func (d *dispatcher) announce(ctx context.Context, agent string, l load, why string) error {
	data := events.CapacityData{Used: l.used(), Total: l.Total}
	d.capSeq++
	id := fmt.Sprintf("capacity-%s-%d-%s", d.runID, d.capSeq, agent)
	msg, err := events.NewInput(d.subj, events.AgentCapacityChanged, agent, id, d.cfg.Source, data)
	if err != nil {
		return err
	}
	if err := d.publish(ctx, msg); err != nil {
		return fmt.Errorf("announce capacity of %s: %w", agent, err)
	}
	d.log.Debug("capacity announced", "agent", agent, "used", data.Used, "total", data.Total, "why", why)
	return nil
}

// publish sends to JetStream, retrying while NATS is away, until ctx ends.
func (d *dispatcher) publish(ctx context.Context, msg *nats.Msg) error {
	backoff := 100 * time.Millisecond
	for {
		_, err := d.js.PublishMsg(ctx, msg)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("publish %s: %w", msg.Subject, err)
		}
		d.log.Warn("publish failed, retrying", "subject", msg.Subject, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("publish %s: %w", msg.Subject, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (d *dispatcher) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// loop makes offers whenever something may have changed: new work, a finished
// offer, a completion, a status change, or a hold running out.
func (d *dispatcher) loop(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		changed := d.r.Changed()
		next := d.round(ctx, &wg)
		timer := time.NewTimer(next)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-d.wake:
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// round starts an offer for every pending item that has a candidate, oldest
// item first, and returns when the next hold runs out.
func (d *dispatcher) round(ctx context.Context, wg *sync.WaitGroup) time.Duration {
	next := time.Second
	if !d.r.Ready() {
		return 100 * time.Millisecond
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.holds {
		if !h.offering && h.until.After(now) {
			next = min(next, h.until.Sub(now))
		}
	}
	for _, it := range d.pending {
		if it.offering {
			continue
		}
		cands, err := d.r.Eligible(it.WorkstreamID)
		if err != nil {
			continue // unknown workstream: the item waits for it to be configured
		}
		a, ok := pick(cands, d.loads, d.cfg.Capacity, it.Units, d.holds, it.tried, now)
		if !ok && len(it.tried) > 0 {
			// Everyone eligible has been offered this item: start over with
			// them (holds still space the offers out).
			it.tried = map[string]bool{}
			a, ok = pick(cands, d.loads, d.cfg.Capacity, it.Units, d.holds, it.tried, now)
		}
		if !ok {
			continue
		}
		it.offering = true
		it.attempts++
		h := d.holds[a.AgentID]
		h.offering = true
		d.holds[a.AgentID] = h
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.offer(ctx, it, a)
		}()
	}
	return next
}

type outcome string

const (
	accepted outcome = "accepted"
	declined outcome = "declined"
	missed   outcome = "missed"
)

// offer asks one agent to take one item and acts on the answer.
func (d *dispatcher) offer(ctx context.Context, it *item, a router.Agent) {
	res := d.ask(ctx, it, a)
	if ctx.Err() != nil {
		d.release(it, a.AgentID, false)
		return
	}
	d.m.offers.WithLabelValues(string(res)).Inc()
	log := d.log.With("workItem", it.ID, "workstream", it.WorkstreamID, "agent", a.AgentID, "attempt", it.attempts)
	switch res {
	case accepted:
		if err := d.assign(ctx, it, a.AgentID); err != nil {
			log.Error("accepted work could not be recorded; it is offered again", "err", err)
			d.release(it, a.AgentID, false)
			return
		}
		log.Info("work assigned")
		d.release(it, a.AgentID, false)
		return
	case declined, missed:
		typ := events.NotificationMissed
		if res == declined {
			typ = events.NotificationRejected
		}
		id := fmt.Sprintf("%s-%s-%s-%s-%d", res, d.runID, it.ID, a.AgentID, it.attempts)
		msg, err := events.NewInput(d.subj, typ, a.AgentID, id, d.cfg.Source, events.NotificationData{WorkItemID: it.ID, WorkstreamID: it.WorkstreamID})
		if err == nil {
			err = d.publish(ctx, msg)
		}
		if err != nil {
			log.Warn("notification not published", "type", typ, "err", err)
		}
		log.Info("offer "+string(res), "published", typ)
		d.mu.Lock()
		it.tried[a.AgentID] = true
		d.mu.Unlock()
		d.release(it, a.AgentID, true)
	}
}

func (d *dispatcher) ask(ctx context.Context, it *item, a router.Agent) outcome {
	id := fmt.Sprintf("offer-%s-%s-%s-%d", d.runID, it.ID, a.AgentID, it.attempts)
	msg, err := events.NewRoutingEvent(d.subj.OfferSubject(a.AgentID), events.WorkOffered, id, d.cfg.Source, events.Offer{
		WorkItemID: it.ID, WorkstreamID: it.WorkstreamID, Units: it.Units, AgentVersion: a.Version, TimeoutMs: d.cfg.OfferTimeout.Milliseconds(),
	})
	if err != nil {
		return missed
	}
	rctx, cancel := context.WithTimeout(ctx, d.cfg.OfferTimeout)
	defer cancel()
	reply, err := d.nc.RequestMsgWithContext(rctx, msg)
	if err != nil {
		// No answer in time, or no client listening: the agent missed it.
		return missed
	}
	var r events.OfferReply
	if err := json.Unmarshal(reply.Data, &r); err != nil {
		d.log.Warn("unreadable offer reply counts as missed", "agent", a.AgentID, "err", err)
		return missed
	}
	if r.Accept {
		return accepted
	}
	return declined
}

// assign records an accepted item: the agent's load first, so a restart in
// between still counts the item as the agent's.
func (d *dispatcher) assign(ctx context.Context, it *item, agent string) error {
	d.capMu.Lock()
	defer d.capMu.Unlock()
	d.mu.Lock()
	l, ok := d.loads[agent]
	d.mu.Unlock()
	next := load{Total: d.cfg.Capacity, Items: map[string]int{}, LastWork: time.Now().UTC()}
	if ok {
		next.Total = l.Total
		for id, u := range l.Items {
			next.Items[id] = u
		}
	}
	next.Items[it.ID] = it.Units
	if err := d.setLoad(ctx, agent, next, "assigned"); err != nil {
		return err
	}
	rec := *it
	rec.AgentID = agent
	b, _ := json.Marshal(&rec)
	if _, err := d.kv.Put(ctx, "work."+it.ID, b); err != nil {
		d.log.Warn("work record not updated; the agent's load still holds it", "workItem", it.ID, "err", err)
	}
	d.mu.Lock()
	it.AgentID = agent
	for i, p := range d.pending {
		if p == it {
			d.pending = append(d.pending[:i], d.pending[i+1:]...)
			break
		}
	}
	d.mu.Unlock()
	d.m.assigned.Inc()
	return nil
}

// release ends an offer; holdAgent keeps the agent out of offers for cfg.Hold.
func (d *dispatcher) release(it *item, agent string, holdAgent bool) {
	d.mu.Lock()
	it.offering = false
	h := d.holds[agent]
	h.offering = false
	if holdAgent {
		h.until = time.Now().Add(d.cfg.Hold)
	}
	d.holds[agent] = h
	d.mu.Unlock()
	d.poke()
}
