package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// publisher publishes to JetStream and collects the acknowledgements of a wave
// of publishes over one reply subscription, as the client's PublishMsgAsync
// does, with one difference that counts on the hot path: the client decodes
// every acknowledgement with encoding/json, under a lock every partition's
// publishes take, which was 7% of the worker's CPU preloaded (a profile of
// 2026-12-07). The server writes an acknowledgement in one fixed form, which
// pubAckSeq reads by hand; anything else (an error, another shape) goes to
// encoding/json.
type publisher struct {
	nc *nats.Conn
	// room holds a token for each publish awaiting its acknowledgement: past
	// its capacity a publish waits for room, for at most stallWait.
	room      chan struct{}
	stallWait time.Duration

	mu      sync.Mutex
	prefix  string // of the reply subjects: prefix + a base-36 number per publish
	sub     *nats.Subscription
	status  chan nats.Status
	closed  bool
	next    uint64
	waiting map[uint64]pending
}

// pending is a publish awaiting its acknowledgement. Where no stream answers
// it (a clustered stream electing its leader) it is sent again with the
// client's default wait and attempts before its wave fails, as the client's
// PublishMsgAsync would.
type pending struct {
	wv      *wave
	m       *nats.Msg
	retries int
}

var errPublisherClosed = errors.New("publisher closed: the worker stopped")

// wave is the acknowledgements one publishAll waits for; its fields are the
// publisher's to change, under its lock.
type wave struct {
	left int
	top  uint64
	err  error
	done chan struct{} // closed when left reaches 0 or on the first error
}

func (wv *wave) settle(seq uint64, err error) {
	if wv.left == 0 || (wv.err != nil) {
		return // already closed
	}
	wv.top = max(wv.top, seq)
	wv.left--
	if err != nil {
		wv.err = err
	}
	if wv.left == 0 || err != nil {
		close(wv.done)
	}
}

func newPublisher(nc *nats.Conn, maxPending int, stallWait time.Duration) *publisher {
	return &publisher{nc: nc, room: make(chan struct{}, maxPending), stallWait: stallWait, waiting: map[uint64]pending{}}
}

// open subscribes to the replies and to the connection's reconnects once.
func (p *publisher) open() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		// A write still running as the worker stops (a checkpoint given up
		// on) must not subscribe again behind its back.
		return errPublisherClosed
	}
	if p.sub != nil {
		return nil
	}
	if p.prefix == "" { // set once: route reads it without the lock
		p.prefix = p.nc.NewInbox() + "."
	}
	sub, err := p.nc.Subscribe(p.prefix+"*", p.route)
	if err != nil {
		return fmt.Errorf("subscribe to publish acknowledgements: %w", err)
	}
	p.sub = sub
	// A publish or its acknowledgement caught in a reconnect never comes back:
	// its wave fails at once, as the client's futures do, and is retried.
	p.status = p.nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	go p.failOnReconnect(p.status)
	return nil
}

// close stops listening for good; waves still waiting end with their context.
func (p *publisher) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.sub == nil {
		return
	}
	_ = p.sub.Unsubscribe()
	p.nc.RemoveStatusListener(p.status)
	p.sub = nil
}

func (p *publisher) failOnReconnect(status chan nats.Status) {
	for s := range status {
		if s == nats.CLOSED {
			return
		}
		p.mu.Lock()
		for id, pd := range p.waiting {
			p.forgetLocked(id)
			pd.wv.settle(0, nats.ErrDisconnected)
		}
		p.mu.Unlock()
	}
}

// forgetLocked drops a publish awaiting its acknowledgement and frees its room.
func (p *publisher) forgetLocked(id uint64) {
	if _, ok := p.waiting[id]; !ok {
		return
	}
	delete(p.waiting, id)
	<-p.room
}

// route settles the publish an acknowledgement answers; one no longer awaited
// (its wave gave up) is dropped.
func (p *publisher) route(m *nats.Msg) {
	if len(m.Subject) <= len(p.prefix) {
		return
	}
	id, err := strconv.ParseUint(m.Subject[len(p.prefix):], 36, 64)
	if err != nil {
		return
	}
	seq, ackErr := pubAckSeq(m)
	p.mu.Lock()
	defer p.mu.Unlock()
	pd, ok := p.waiting[id]
	if !ok {
		return
	}
	if errors.Is(ackErr, jetstream.ErrNoStreamResponse) && pd.retries < jetstream.DefaultPubRetryAttempts {
		pd.retries++
		p.waiting[id] = pd
		time.AfterFunc(jetstream.DefaultPubRetryWait, func() { p.resend(id) })
		return
	}
	p.forgetLocked(id)
	pd.wv.settle(seq, ackErr)
}

// resend sends a publish no stream answered again, unless its wave gave up.
func (p *publisher) resend(id uint64) {
	p.mu.Lock()
	pd, ok := p.waiting[id]
	p.mu.Unlock()
	if !ok {
		return
	}
	if err := p.nc.PublishMsg(pd.m); err != nil {
		p.mu.Lock()
		if _, ok := p.waiting[id]; ok {
			p.forgetLocked(id)
			pd.wv.settle(0, fmt.Errorf("publish %s again: %w", pd.m.Subject, err))
		}
		p.mu.Unlock()
	}
}

// publishAll publishes msgs (setting their reply subjects) and waits for every
// acknowledgement; it returns the highest stream sequence they got.
func (p *publisher) publishAll(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := p.open(); err != nil {
		return 0, err
	}
	wv := &wave{left: len(msgs), done: make(chan struct{})}
	ids := make([]uint64, 0, len(msgs))
	defer func() {
		// Whatever is still awaited (a failure, a context ended) is forgotten:
		// its acknowledgement, if it comes, is dropped.
		p.mu.Lock()
		for _, id := range ids {
			p.forgetLocked(id)
		}
		p.mu.Unlock()
	}()
	for _, m := range msgs {
		// Nothing more goes out once the caller gave up (a checkpoint given up
		// on as its partition stops) or the wave already failed.
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("publish: %w", err)
		}
		select {
		case <-wv.done:
			return p.result(wv)
		default:
		}
		if err := p.reserve(ctx); err != nil {
			return 0, err
		}
		p.mu.Lock()
		p.next++
		id := p.next
		p.waiting[id] = pending{wv: wv, m: m}
		p.mu.Unlock()
		ids = append(ids, id)
		m.Reply = p.prefix + strconv.FormatUint(id, 36)
		if err := p.nc.PublishMsg(m); err != nil {
			return 0, fmt.Errorf("publish %s: %w", m.Subject, err)
		}
	}
	select {
	case <-wv.done:
		return p.result(wv)
	case <-ctx.Done():
		return 0, fmt.Errorf("publish: %w", ctx.Err())
	}
}

// result is how a settled wave ended.
func (p *publisher) result(wv *wave) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if wv.err != nil {
		return 0, fmt.Errorf("publish: %w", wv.err)
	}
	return wv.top, nil
}

// reserve takes room for one more publish awaiting its acknowledgement. Waiting
// is flow control (a checkpoint publishes a copy per changed agent at once), not
// a failure, until acknowledgements stop coming for stallWait.
func (p *publisher) reserve(ctx context.Context) error {
	select {
	case p.room <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(p.stallWait)
	defer t.Stop()
	select {
	case p.room <- struct{}{}:
		return nil
	case <-t.C:
		return fmt.Errorf("publish: %d acknowledgements outstanding for %s: %w", cap(p.room), p.stallWait, jetstream.ErrTooManyStalledMsgs)
	case <-ctx.Done():
		return fmt.Errorf("publish: %w", ctx.Err())
	}
}

var (
	pubAckStream = []byte(`{"stream":"`)
	pubAckSeqKey = []byte(`,"seq":`)
	pubAckDomain = []byte(`,"domain":"`)
	pubAckError  = []byte(`"error"`)
)

// pubAckSeq reads the stream sequence from a publish acknowledgement, which the
// server writes as {"stream":"<name>",["domain":"<domain>",]"seq":<n>, with
// optional fields after. That form is read by hand; an error, an empty reply or
// any other shape is decoded in full, into the client's own types.
func pubAckSeq(m *nats.Msg) (uint64, error) {
	d := m.Data
	if len(d) == 0 {
		if m.Header.Get("Status") == "503" {
			return 0, jetstream.ErrNoStreamResponse
		}
		return 0, jetstream.ErrInvalidJSAck
	}
	if rest, ok := bytes.CutPrefix(d, pubAckStream); ok {
		// A stream name holds no quote or backslash, so its end is the next quote.
		if end := bytes.IndexByte(rest, '"'); end > 0 && bytes.IndexByte(rest[:end], '\\') < 0 {
			after := rest[end+1:]
			// A server in a JetStream domain names it between the two.
			if d, ok := bytes.CutPrefix(after, pubAckDomain); ok {
				if dend := bytes.IndexByte(d, '"'); dend >= 0 && bytes.IndexByte(d[:dend], '\\') < 0 {
					after = d[dend+1:]
				}
			}
			if num, ok := bytes.CutPrefix(after, pubAckSeqKey); ok {
				var seq uint64
				n := 0
				for n < len(num) && n < 19 && num[n] >= '0' && num[n] <= '9' {
					seq = seq*10 + uint64(num[n]-'0')
					n++
				}
				// What follows (duplicate, domain) must not hold an error.
				if n > 0 && n < len(num) && (num[n] == ',' || num[n] == '}') && !bytes.Contains(num[n:], pubAckError) {
					return seq, nil
				}
			}
		}
	}
	var ack pubAckReply
	if err := json.Unmarshal(d, &ack); err != nil {
		return 0, fmt.Errorf("%w: %w", jetstream.ErrInvalidJSAck, err)
	}
	if ack.Error != nil {
		return 0, ack.Error
	}
	if ack.PubAck == nil || ack.Stream == "" {
		return 0, jetstream.ErrInvalidJSAck
	}
	return ack.Sequence, nil
}

// pubAckReply is an acknowledgement decoded in full, as the client decodes it.
type pubAckReply struct {
	Error *jetstream.APIError `json:"error"`
	*jetstream.PubAck
}
