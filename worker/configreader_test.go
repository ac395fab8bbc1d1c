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
// after what a read proved is found by the next question that reaches it.
func TestConfigReaderShared(t *testing.T) {
	t.Parallel()
	js, _, _ := streamsSetup(t)
	ctx := context.Background()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CR", Subjects: []string{"cr.>"}})
	if err != nil {
		t.Fatal(err)
	}
	const subject = "cr.config"
	var configs []uint64
	publish := func(n int) uint64 {
		var last uint64
		for i := range n {
			subj := "cr.agent"
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
		got, err := c.upTo(ctx, stream, from, upTo)
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
	c := newConfigReader(subject)
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
}
