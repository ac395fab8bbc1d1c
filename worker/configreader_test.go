package worker

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestConfigReaderShared: partitions asking at once get exactly the
// configuration events of their own range, the way a read of their own would
// find them, from fewer reads than questions; and a configuration event stored
// after what a read proved is found by the next question that reaches it. Run
// on a stream that answers multi-subject direct gets and on one that does not
// (direct gets off, as with stream replicas), where reads walk the subject.
func TestConfigReaderShared(t *testing.T) {
	t.Parallel()
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			t.Parallel()
			testConfigReader(t, direct)
		})
	}
}

func testConfigReader(t *testing.T, direct bool) {
	js, _, _ := streamsSetup(t)
	nc := js.Conn()
	ctx := context.Background()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CR", Subjects: []string{"cr.>"}, AllowDirect: direct})
	if err != nil {
		t.Fatal(err)
	}
	const subject, anchor = "cr.config", "cr.agent"
	var configs []uint64
	publish := func(n int) uint64 {
		var last uint64
		for i := range n {
			subj := anchor
			if i%7 == 3 {
				subj = subject
			}
			ack, err := js.Publish(ctx, subj, fmt.Appendf(nil, "%d", i))
			if err != nil {
				t.Fatal(err)
			}
			if subj == subject {
				configs = append(configs, ack.Sequence)
			}
			last = ack.Sequence
		}
		return last
	}
	want := func(from, upTo uint64) []uint64 {
		var out []uint64
		for _, s := range configs {
			if s >= from && s <= upTo {
				out = append(out, s)
			}
		}
		return out
	}
	check := func(c *configReader, from, upTo uint64) error {
		got, err := c.upTo(ctx, stream, from, upTo, anchor)
		if err != nil {
			return err
		}
		var seqs []uint64
		for _, m := range got {
			seqs = append(seqs, m.Sequence)
		}
		if w := want(from, upTo); fmt.Sprint(seqs) != fmt.Sprint(w) {
			return fmt.Errorf("[%d, %d]: got %v, want %v", from, upTo, seqs, w)
		}
		return nil
	}

	last := publish(200)
	c := newConfigReader(subject, newDirectGets(nc))
	c.maxKept = 8 // so that old ranges are forgotten and read again
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			from := uint64(1 + (i*37)%int(last))
			upTo := min(last, from+uint64((i*13)%50))
			errs <- check(c, from, upTo)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if c.reads >= 64 {
		t.Errorf("%d reads for 64 questions asked together", c.reads)
	}
	if !c.gets.usable() {
		t.Errorf("multi-subject gets refused by a current server")
	}

	// Known up to last now: a question inside that range needs no read.
	if err := check(c, last-20, last); err != nil {
		t.Fatal(err)
	}
	before := c.reads
	if err := check(c, last-10, last-1); err != nil {
		t.Fatal(err)
	}
	if c.reads != before {
		t.Errorf("a question inside what is known made a read")
	}
	// Past what is known: a new event is found.
	newest := publish(10)
	if err := check(c, last-20, newest); err != nil {
		t.Fatal(err)
	}
	if err := check(c, 1, newest); err != nil { // further back than is kept
		t.Fatal(err)
	}

	// A read that asked only about the first messages proves the whole stream
	// where the server names its last sequence, and only the range asked where
	// it does not.
	fresh := newConfigReader(subject, newDirectGets(nc))
	if err := check(fresh, 1, 5); err != nil {
		t.Fatal(err)
	}
	if err := check(fresh, 6, newest); err != nil {
		t.Fatal(err)
	}
	if wantReads := map[bool]uint64{true: 1, false: 2}[direct]; fresh.reads != wantReads {
		t.Errorf("%d reads for a question past the first one's range, want %d", fresh.reads, wantReads)
	}
	// The same when no configuration event came since what is known.
	quiet := publish(3) // none of the three is a configuration event
	if err := check(fresh, newest+1, newest+1); err != nil {
		t.Fatal(err)
	}
	if err := check(fresh, newest+2, quiet); err != nil {
		t.Fatal(err)
	}
	if wantReads := map[bool]uint64{true: 2, false: 4}[direct]; fresh.reads != wantReads {
		t.Errorf("%d reads after a quiet stretch, want %d", fresh.reads, wantReads)
	}
}
