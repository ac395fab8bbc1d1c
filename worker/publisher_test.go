package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/internal/testenv"
)

// TestPubAckSeq: the acknowledgement's sequence is read by hand only from the
// form the server writes; every other reply is decoded in full, so an error or
// an odd shape is never taken for a stored message.
func TestPubAckSeq(t *testing.T) {
	t.Parallel()
	noResponders := nats.Header{}
	noResponders.Set("Status", "503")
	for _, tc := range []struct {
		name   string
		data   string
		header nats.Header
		seq    uint64
		err    error // errors.Is; nil: success
		code   jetstream.ErrorCode
	}{
		{name: "plain", data: `{"stream":"PRESENCE_STATUS","seq":5}`, seq: 5},
		{name: "duplicate", data: `{"stream":"S","seq":7,"duplicate":true}`, seq: 7},
		{name: "domain after", data: `{"stream":"S","seq":9,"domain":"hub"}`, seq: 9},
		{name: "domain before", data: `{"stream":"S","domain":"hub","seq":9}`, seq: 9},
		{name: "domain escaped", data: `{"stream":"S","domain":"h\"b","seq":9}`, seq: 9},
		{name: "domain then error", data: `{"stream":"S","domain":"hub","seq":9,"error":{"code":500,"err_code":10000,"description":"x"}}`, code: 10000},
		{name: "spaces", data: `{ "stream": "S", "seq": 11 }`, seq: 11},
		{name: "largest", data: `{"stream":"S","seq":9007199254740993}`, seq: 9007199254740993},
		{name: "escaped name", data: `{"stream":"A\"B","seq":1}`, seq: 1},
		{name: "error", data: `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}`, code: 10077},
		{name: "error after", data: `{"stream":"S","seq":3,"error":{"code":400,"err_code":10071,"description":"wrong last sequence"}}`, code: 10071},
		{name: "no stream", data: `{"stream":"","seq":3}`, err: jetstream.ErrInvalidJSAck},
		{name: "no number", data: `{"stream":"S","seq":}`, err: jetstream.ErrInvalidJSAck},
		{name: "truncated", data: `{"stream":"S","seq":123`, err: jetstream.ErrInvalidJSAck},
		{name: "too long", data: `{"stream":"S","seq":123456789012345678901}`, err: jetstream.ErrInvalidJSAck},
		{name: "not json", data: `+OK`, err: jetstream.ErrInvalidJSAck},
		{name: "no responders", header: noResponders, err: jetstream.ErrNoStreamResponse},
		{name: "empty", err: jetstream.ErrInvalidJSAck},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq, err := pubAckSeq(&nats.Msg{Data: []byte(tc.data), Header: tc.header})
			switch {
			case tc.code != 0:
				var api *jetstream.APIError
				if !errors.As(err, &api) || api.ErrorCode != tc.code {
					t.Fatalf("got %d, %v; want API error %d", seq, err, tc.code)
				}
			case tc.err != nil:
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %d, %v; want %v", seq, err, tc.err)
				}
			case err != nil || seq != tc.seq:
				t.Fatalf("got %d, %v; want %d", seq, err, tc.seq)
			}
		})
	}
}

// pubEnv is a server with a stream on pub.>, a JetStream client, and a
// publisher with room for room outstanding publishes.
func pubEnv(t *testing.T, room int) (*testenv.NATS, jetstream.JetStream, jetstream.Stream, *publisher) {
	t.Helper()
	srv := testenv.StartNATS(t)
	js, err := jetstream.New(srv.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "PUB", Subjects: []string{"pub.>"}})
	if err != nil {
		t.Fatal(err)
	}
	p := newPublisher(js.Conn(), room, 200*time.Millisecond)
	t.Cleanup(p.close)
	return srv, js, s, p
}

// silent takes the messages on subject (no stream does) and never answers
// them, so a test can answer by hand or not at all.
func silent(t *testing.T, nc *nats.Conn, subject string) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return sub
}

// roomFree fails the test unless every publish has given its room back, once
// the waves it names returned.
func roomFree(t *testing.T, p *publisher, after string) {
	t.Helper()
	if n := len(p.room); n != 0 {
		t.Fatalf("%d publishes still hold room after %s", n, after)
	}
}

func pubMsgs(subject string, n int) []*nats.Msg {
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		msgs[i] = nats.NewMsg(fmt.Sprintf("%s.%d", subject, i))
		msgs[i].Data = []byte("x")
	}
	return msgs
}

// TestPublisherWaves: waves larger than the room wait for it and come back
// with the highest sequence; every message is stored once; the room is all
// free again afterwards.
func TestPublisherWaves(t *testing.T) {
	t.Parallel()
	_, _, s, p := pubEnv(t, 7)
	ctx := t.Context()
	var top uint64
	for range 3 {
		got, err := p.publishAll(ctx, pubMsgs("pub.a", 100))
		if err != nil {
			t.Fatal(err)
		}
		if got <= top {
			t.Fatalf("wave came back with sequence %d after %d", got, top)
		}
		top = got
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 300 || top != 300 {
		t.Fatalf("stream holds %d messages, last wave's top %d; want 300 and 300", info.State.Msgs, top)
	}
	roomFree(t, p, "every wave returned")
}

// TestPublisherErrors: a subject no stream takes, and a stream that refuses
// the message, fail the wave with the server's reason.
func TestPublisherErrors(t *testing.T) {
	t.Parallel()
	_, js, s, p := pubEnv(t, 100)
	ctx := t.Context()
	if _, err := p.publishAll(ctx, pubMsgs("nostream", 3)); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("publish where no stream listens: %v, want %v", err, jetstream.ErrNoStreamResponse)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 1, jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	_, err := p.publishAll(ctx, pubMsgs("pub.full", 2))
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		t.Fatalf("publish past a full stream: %v, want the server's error", err)
	}
	roomFree(t, p, "the failed waves")
}

// TestPublisherRetriesNoResponders: a publish answered "no responders" (a
// clustered stream electing its leader) is sent again, with the same reply
// subject, and its wave succeeds once a stream answers; after two such answers
// more the wave fails with the reason. The answers are made by hand on a
// subject no stream takes.
func TestPublisherRetriesNoResponders(t *testing.T) {
	t.Parallel()
	_, js, _, p := pubEnv(t, 10)
	nc := js.Conn()
	sub := silent(t, nc, "fake.>")
	noResponders := func(m *nats.Msg) {
		t.Helper()
		r := nats.NewMsg(m.Reply)
		r.Header.Set("Status", "503")
		if err := nc.PublishMsg(r); err != nil {
			t.Fatal(err)
		}
	}
	next := func(reply string) *nats.Msg {
		t.Helper()
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if reply != "" && m.Reply != reply {
			t.Fatalf("sent again with reply %q, want %q", m.Reply, reply)
		}
		return m
	}
	type result struct {
		top uint64
		err error
	}
	run := func() chan result {
		c := make(chan result, 1)
		go func() {
			top, err := p.publishAll(t.Context(), pubMsgs("fake", 1))
			c <- result{top, err}
		}()
		return c
	}

	got := run()
	m := next("")
	noResponders(m)
	m = next(m.Reply)
	if err := nc.Publish(m.Reply, []byte(`{"stream":"FAKE","seq":42}`)); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || r.top != 42 {
		t.Fatalf("wave after one retry: %d, %v; want 42", r.top, r.err)
	}

	got = run()
	m = next("")
	for range jetstream.DefaultPubRetryAttempts {
		noResponders(m)
		m = next(m.Reply)
	}
	noResponders(m)
	if r := <-got; !errors.Is(r.err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("wave after %d retries: %v, want %v", jetstream.DefaultPubRetryAttempts, r.err, jetstream.ErrNoStreamResponse)
	}
	roomFree(t, p, "the waves returned")
}

// TestPublisherStops: nothing goes out for a caller that gave up, and nothing
// once the publisher is closed (a checkpoint still writing as its worker stops
// must not subscribe again behind its back).
func TestPublisherStops(t *testing.T) {
	t.Parallel()
	_, _, _, p := pubEnv(t, 10)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.publishAll(ctx, pubMsgs("pub.gone", 5)); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish for a caller that gave up: %v, want %v", err, context.Canceled)
	}
	p.close()
	if _, err := p.publishAll(t.Context(), pubMsgs("pub.closed", 1)); !errors.Is(err, errPublisherClosed) {
		t.Fatalf("publish after close: %v, want %v", err, errPublisherClosed)
	}
	// Sequence 1 for the next message stored proves none came before it.
	p2 := newPublisher(p.nc, 10, time.Second)
	defer p2.close()
	if top, err := p2.publishAll(t.Context(), pubMsgs("pub.after", 1)); err != nil || top != 1 {
		t.Fatalf("first message stored got %d (%v), want sequence 1", top, err)
	}
}

// TestPublisherNoAcknowledgement: a publish nobody acknowledges holds its wave
// until the context ends and then frees its room; with the room full, the next
// publish gives up after the stall wait instead of hanging.
func TestPublisherNoAcknowledgement(t *testing.T) {
	t.Parallel()
	_, js, _, p := pubEnv(t, 1)
	silent(t, js.Conn(), "silent.>")
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := p.publishAll(ctx, pubMsgs("silent", 1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered publish: %v, want its context's end", err)
	}
	roomFree(t, p, "their wave gave up")
	if _, err := p.publishAll(t.Context(), pubMsgs("silent", 2)); !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
		t.Fatalf("publish past the room: %v, want %v", err, jetstream.ErrTooManyStalledMsgs)
	}
	if _, err := p.publishAll(t.Context(), pubMsgs("pub.after", 1)); err != nil {
		t.Fatalf("publish once the stalled wave gave up: %v", err)
	}
}

// TestPublisherReconnect: a wave whose acknowledgements a reconnect swallowed
// fails at once with ErrDisconnected (and is retried by its caller), rather
// than waiting out its context; after the reconnect publishing works again.
func TestPublisherReconnect(t *testing.T) {
	t.Parallel()
	srv, js, _, p := pubEnv(t, 10)
	sub := silent(t, js.Conn(), "silent.>")
	errc := make(chan error, 1)
	go func() {
		_, err := p.publishAll(t.Context(), pubMsgs("silent", 1))
		errc <- err
	}()
	// The message reached the subscriber, so the wave is waiting for its
	// acknowledgement when the server goes.
	if _, err := sub.NextMsg(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	if err := <-errc; !errors.Is(err, nats.ErrDisconnected) {
		t.Fatalf("wave caught in a reconnect: %v, want %v", err, nats.ErrDisconnected)
	}
	roomFree(t, p, "the reconnect failed them")
	top, err := p.publishAll(t.Context(), pubMsgs("pub.after", 1))
	if err != nil || top == 0 {
		t.Fatalf("publish after the reconnect: %d, %v", top, err)
	}
}

// BenchmarkPubAck reads an acknowledgement by hand and, side by side, the way
// the client's PublishMsgAsync does (encoding/json into its response type).
func BenchmarkPubAck(b *testing.B) {
	m := &nats.Msg{Data: []byte(`{"stream":"PRESENCE_STATUS","seq":1234567}`)}
	b.Run("by-hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pubAckSeq(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var ack pubAckReply
			if err := json.Unmarshal(m.Data, &ack); err != nil {
				b.Fatal(err)
			}
		}
	})
}
