package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// configReader answers the configuration lookups of a worker's partitions
// together. A read of the configuration subject that starts after the message at
// sequence S was stored proves which configuration events the stream holds up to
// S, as sequences are given out in order. So one read answers every partition
// that asked before it started, and what it found answers later questions up to
// its highest S without asking the server again.
//
// Where the stream answers direct gets, a read first asks for the last message
// of the configuration subject (a multi-subject direct get, nats-server 2.11 or
// newer), whose reply names the stream's last sequence at the time it was read:
// when no configuration event came after what is known, that proves the whole
// stream up to there, not only up to the questions asked, so the questions that
// follow are mostly answered without a read.
type configReader struct {
	subject string
	// gets makes the multi-subject direct gets; nil: never.
	gets *directGets
	// maxKept bounds found; the oldest are forgotten past it.
	maxKept int

	mu sync.Mutex
	// Every configuration event with lo < seq <= hi is in found (ascending),
	// when known.
	known  bool
	lo, hi uint64
	found  []*jetstream.RawStreamMsg
	// The demand of the questions waiting for the next read; none when wantTo
	// is 0 (stream sequences start at 1). anchor is a stored subject known to
	// have a message at or before wantTo, so that a multi-subject get always
	// finds one and names the stream's last sequence.
	wantFrom, wantTo uint64
	anchor           string
	// A read is running when done is not nil; done is closed when it ends.
	done  chan struct{}
	reads uint64 // reads made: logged when the worker stops, and tested
	// counted, when set, counts each read by how it went: "stream" when the
	// server named its last sequence, "subject" when the subject was walked.
	counted func(how string)
}

func newConfigReader(subject string, gets *directGets) *configReader {
	return &configReader{subject: subject, gets: gets, maxKept: 256}
}

// covers reports whether the events of [from, upTo] are known.
func (c *configReader) covers(from, upTo uint64) bool {
	return c.known && c.lo < from && upTo <= c.hi
}

// between returns the known events of [from, upTo].
func (c *configReader) between(from, upTo uint64) []*jetstream.RawStreamMsg {
	var out []*jetstream.RawStreamMsg
	for _, m := range c.found {
		if m.Sequence >= from && m.Sequence <= upTo {
			out = append(out, m)
		}
	}
	return out
}

// upTo returns the configuration events stored at sequences from through upTo.
// The caller must hold the message at upTo (or know it stored): that is what
// makes a read started afterwards complete up to there; anchor is the stored
// subject of a message it holds, or "". The messages are shared between
// partitions: read them, never change them.
func (c *configReader) upTo(ctx context.Context, stream jetstream.Stream, from, upTo uint64, anchor string) ([]*jetstream.RawStreamMsg, error) {
	if from > upTo || upTo == 0 {
		return nil, nil
	}
	c.mu.Lock()
	for {
		if c.covers(from, upTo) {
			out := c.between(from, upTo)
			c.mu.Unlock()
			return out, nil
		}
		// Asked before the next read starts, so that read answers it.
		if c.wantTo == 0 {
			c.wantFrom, c.wantTo = from, upTo
		} else {
			c.wantFrom, c.wantTo = min(c.wantFrom, from), max(c.wantTo, upTo)
		}
		if anchor != "" {
			c.anchor = anchor
		}
		if c.done == nil {
			break
		}
		// A read is running: it answers the question if it started late
		// enough; if not, or if it fails, the next read does (made by this
		// caller if no other is first).
		done := c.done
		c.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, fmt.Errorf("read configuration: %w", ctx.Err())
		}
		c.mu.Lock()
	}
	// No read running: this caller makes the next one, for every question asked.
	wantFrom, wantTo, anchor := c.wantFrom, c.wantTo, c.anchor
	c.wantFrom, c.wantTo, c.anchor = 0, 0, ""
	multi := c.gets.usable() && stream.CachedInfo().Config.AllowDirect
	done := make(chan struct{})
	c.done = done
	start := wantFrom
	if c.known && c.lo < wantFrom {
		start = c.hi + 1 // extend what is known
	}
	c.reads++
	c.mu.Unlock()

	var got []*jetstream.RawStreamMsg
	top := wantTo
	var err error
	if start <= wantTo {
		if multi {
			got, top, multi, err = c.readMulti(ctx, stream, start, wantTo, anchor)
		}
		if !multi && err == nil {
			got, top, err = c.read(ctx, stream, start, wantTo)
		}
		if c.counted != nil && err == nil {
			c.counted(map[bool]string{true: "stream", false: "subject"}[multi])
		}
	}

	c.mu.Lock()
	c.done = nil
	close(done)
	if err != nil {
		c.mu.Unlock()
		return nil, err
	}
	c.learn(start, top, got)
	// The caller's own question was part of the demand: it is covered now.
	out := c.between(from, upTo)
	c.trim()
	c.mu.Unlock()
	return out, nil
}

// read walks the configuration subject from start; it returns what it found and
// the sequence up to which that is complete (at least upTo).
func (c *configReader) read(ctx context.Context, stream jetstream.Stream, start, upTo uint64) ([]*jetstream.RawStreamMsg, uint64, error) {
	var got []*jetstream.RawStreamMsg
	for next := start; ; {
		m, err := stream.GetMsg(ctx, next, jetstream.WithGetMsgSubject(c.subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return got, upTo, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read configuration after %d: %w", next-1, err)
		}
		got = append(got, m)
		if m.Sequence >= upTo {
			return got, m.Sequence, nil
		}
		next = m.Sequence + 1
	}
}

// readMulti reads like read, but asks first for the configuration subject's last
// message and the stream's last sequence; it returns false when the server
// cannot answer that way, and read is to be used.
func (c *configReader) readMulti(ctx context.Context, stream jetstream.Stream, start, upTo uint64, anchor string) ([]*jetstream.RawStreamMsg, uint64, bool, error) {
	last, streamLast, ok, err := c.lastConfig(ctx, stream.CachedInfo().Config.Name, anchor)
	if err != nil || !ok {
		return nil, 0, ok, err
	}
	if streamLast < upTo {
		// The stream holds less than a message the caller holds: it was
		// replaced, and the partition's consumer with it. The partition is
		// taken over again, from the new stream.
		return nil, 0, true, fmt.Errorf("read configuration: the input stream ends at %d, before %d: %w", streamLast, upTo, errConsumerLost)
	}
	if last < start {
		return nil, streamLast, true, nil
	}
	got, _, err := c.read(ctx, stream, start, last)
	return got, streamLast, true, err
}

// lastConfig returns the sequence of the configuration subject's last message
// (0: none) and the stream's last sequence when it was read; false when the
// server gave no such answer (too old for multi-subject gets, no message under
// either subject, or an answer it does not document).
func (c *configReader) lastConfig(ctx context.Context, stream, anchor string) (uint64, uint64, bool, error) {
	filters := []string{c.subject}
	if anchor != "" && anchor != c.subject {
		filters = append(filters, anchor)
	}
	var last uint64
	upTo, ok, err := c.gets.lastMessages(ctx, stream, filters, func(m *nats.Msg) error {
		if lastHeader(m, jetstream.SubjectHeader) != c.subject {
			return nil
		}
		var err error
		last, err = messageSeq(m)
		return err
	})
	switch {
	case errors.Is(err, errNoMultiLast):
		return 0, 0, false, nil
	case errors.Is(err, nats.ErrNoResponders): // the stream is not there right now
		return 0, 0, false, fmt.Errorf("read configuration: %w", err)
	case err != nil && ctx.Err() != nil:
		return 0, 0, false, fmt.Errorf("read configuration: %w", err)
	case err != nil || !ok:
		return 0, 0, false, nil // read the subject instead
	}
	return last, upTo, true, nil
}

// learn records that got holds every configuration event of [start, top].
func (c *configReader) learn(start, top uint64, got []*jetstream.RawStreamMsg) {
	switch {
	case c.known && start == c.hi+1:
		c.found = append(c.found, got...)
		c.hi = max(c.hi, top)
	case c.known && start-1 < c.lo && top >= c.lo:
		// Read from further back, over what was known: the read holds all of it
		// up to top, the older knowledge what lies past top.
		var rest []*jetstream.RawStreamMsg
		for _, m := range c.found {
			if m.Sequence > top {
				rest = append(rest, m)
			}
		}
		c.found = append(got, rest...)
		c.lo, c.hi = start-1, max(c.hi, top)
	default:
		c.found, c.lo, c.hi, c.known = got, start-1, top, true
	}
}

// trim forgets the oldest events past maxKept.
func (c *configReader) trim() {
	if n := len(c.found) - c.maxKept; n > 0 {
		c.lo = c.found[n-1].Sequence
		c.found = append([]*jetstream.RawStreamMsg(nil), c.found[n:]...)
	}
}
