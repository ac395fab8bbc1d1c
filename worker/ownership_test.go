package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// A worker stopped while it is still claiming its partitions (a replica shut
// down right after it started) gives back every lease it got: one left behind
// would keep its partition from every other replica for a lease TTL. Stopped
// right after it reports ready, a worker is in the middle of its claims often
// enough that fifty rounds meet it (a claim abandoned on its way left a lease
// in about one round of ten).
func TestStoppedWhileClaimingLeavesNoLease(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc := n.Conn(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for round := range 50 {
		w, err := worker.New(nc, state.NewMemory(), worker.Config{Logger: quietLogger(), Partitions: 16, LeaseTTL: time.Hour}, nil, worker.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		for w.Ready(ctx) != nil {
			time.Sleep(time.Millisecond) // polling the readiness probe
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("round %d: Run: %v", round, err)
		}
		kv, err := js.KeyValue(ctx, worker.NamesFor("presence").OwnersBucket())
		if err != nil {
			t.Fatal(err)
		}
		keys, err := kv.ListKeysFiltered(ctx, "partition.*")
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for k := range keys.Keys() {
			left = append(left, k)
		}
		if len(left) > 0 {
			t.Fatalf("round %d: the stopped worker left leases %v", round, left)
		}
	}
}
