package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// errNoMultiLast is returned by lastMessages from a server that reads no
// multi_last (older than 2.11: the request looks empty to it).
var errNoMultiLast = errors.New("the server answers no multi-subject direct gets")

// errPartialAnswer is returned by lastMessages for an answer the server cut
// short (its byte limit, or a message it could not load).
var errPartialAnswer = errors.New("the direct get's answer is incomplete")

// perRequest bounds the wait for one answer: a reply lost in a reconnect is
// then asked again by the retry, instead of holding every waiting partition.
const perRequest = 5 * time.Second

// multiLastMax is how many subjects one request names: the server answers at
// most 1 024 messages per request.
const multiLastMax = 1000

// directGets makes multi-subject direct gets, whose answers are streams of
// messages, over one reply subscription: a subscription per request would add
// and remove an interest for every read, which a cluster spreads to every
// server (on one server, live at 10 000/s, the two measured the same).
type directGets struct {
	nc  *nats.Conn
	api string

	// refused is set once the server answered that it reads no multi_last
	// (older than 2.11): it is not asked again.
	refused atomic.Bool

	mu      sync.Mutex
	prefix  string // of the reply subjects: prefix + a number per request
	sub     *nats.Subscription
	next    uint64
	waiting map[string]chan *nats.Msg
}

// usable reports whether multi-subject direct gets are worth asking for.
func (g *directGets) usable() bool { return g != nil && !g.refused.Load() }

func newDirectGets(nc *nats.Conn) *directGets {
	return &directGets{nc: nc, api: jetstream.DefaultAPIPrefix, waiting: map[string]chan *nats.Msg{}}
}

// open registers a request: its reply subject, where its answer arrives, and
// the function that forgets it.
func (g *directGets) open() (string, chan *nats.Msg, func(), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.sub == nil {
		prefix := g.nc.NewInbox() + "."
		sub, err := g.nc.Subscribe(prefix+"*", g.route)
		if err != nil {
			return "", nil, nil, err
		}
		g.prefix, g.sub = prefix, sub
	}
	g.next++
	reply := g.prefix + strconv.FormatUint(g.next, 10)
	// Room for a whole answer (at most a message per subject, and its end), so
	// that routing never waits for a reader.
	ch := make(chan *nats.Msg, multiLastMax+2)
	g.waiting[reply] = ch
	return reply, ch, func() {
		g.mu.Lock()
		delete(g.waiting, reply)
		g.mu.Unlock()
	}, nil
}

// route hands a message to the request it answers; one for a request no longer
// waiting (given up on) is dropped.
func (g *directGets) route(m *nats.Msg) {
	g.mu.Lock()
	ch := g.waiting[m.Subject]
	g.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- m:
	default: // more than a whole answer: not one the server sends
	}
}

// lastMessages asks the stream, in one direct get (nats-server 2.11 or newer),
// for the last message of each subject (at most multiLastMax) and hands each to
// fn; errNoMultiLast (remembered: see usable) when the server cannot answer. It returns the stream's last sequence when the server read it (every
// message up to there is in the answer's reach) and false when none of the
// subjects has a message, as the server then does not say.
func (g *directGets) lastMessages(ctx context.Context, stream string, subjects []string, fn func(*nats.Msg) error) (uint64, bool, error) {
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{subjects})
	if err != nil {
		return 0, false, err
	}
	reply, answers, done, err := g.open()
	if err != nil {
		return 0, false, err
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, perRequest)
	defer cancel()
	if err := g.nc.PublishRequest(g.api+"DIRECT.GET."+stream, reply, req); err != nil {
		return 0, false, err
	}
	upTo, ok, err := g.answer(ctx, answers, fn)
	if errors.Is(err, errNoMultiLast) {
		g.refused.Store(true)
	}
	return upTo, ok, err
}

// answer reads one request's answer; see lastMessages.
func (g *directGets) answer(ctx context.Context, answers chan *nats.Msg, fn func(*nats.Msg) error) (uint64, bool, error) {
	got := 0
	for {
		var m *nats.Msg
		select {
		case m = <-answers:
		case <-ctx.Done():
			return 0, false, ctx.Err()
		}
		switch status := m.Header.Get("Status"); status {
		case "":
			got++
			if err := fn(m); err != nil {
				return 0, false, err
			}
		case "204": // end of the answer
			upTo, err := strconv.ParseUint(m.Header.Get("Nats-UpTo-Sequence"), 10, 64)
			if err != nil {
				return 0, false, errNoMultiLast // an end without the sequence: not the answer of 2.11+
			}
			if np := m.Header.Get("Nats-Num-Pending"); np != "" && np != "0" {
				return 0, false, errPartialAnswer // stopped at the server's byte limit
			}
			return upTo, true, nil
		case "404":
			if got > 0 { // a message that failed to load after others went out
				return 0, false, errPartialAnswer
			}
			return 0, false, nil
		case "400", "408":
			return 0, false, errNoMultiLast
		case "503":
			return 0, false, nats.ErrNoResponders
		default:
			return 0, false, fmt.Errorf("direct get: status %s %s", status, m.Header.Get("Description"))
		}
	}
}

// lastHeader is the last value of a header: the server appends its own
// Nats-Subject and Nats-Sequence after the headers the message was stored
// with, which may hold the same names.
func lastHeader(m *nats.Msg, key string) string {
	v := m.Header.Values(key)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// messageSeq is the stream sequence of a direct get's answer.
func messageSeq(m *nats.Msg) (uint64, error) {
	seq, err := strconv.ParseUint(lastHeader(m, jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("direct get: sequence: %w", err)
	}
	return seq, nil
}
