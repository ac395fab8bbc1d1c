package worker

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/internal/testenv"
)

// TestStreamsUnchangedOnRestart: what the server reports back compares equal to
// what presenced asks for, so a replica starting beside running ones sends no
// stream update (nats-server races a stream update against consumer creation).
func TestStreamsUnchangedOnRestart(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	js, err := jetstream.New(n.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := Config{Partitions: 4}.withDefaults()
	names := NamesFor("presence")
	ctx := context.Background()
	if _, err := ensureStreams(ctx, js, cfg, names); err != nil {
		t.Fatal(err)
	}
	for _, want := range streamConfigs(cfg, names) {
		s, err := js.Stream(ctx, want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !sameStream(s.CachedInfo().Config, want) {
			t.Errorf("stream %s as stored differs from its config: a restart would update it", want.Name)
		}
	}

	cfg.Partitions = 8
	_, err = ensureStreams(ctx, js, cfg, names)
	if err == nil || !strings.Contains(err.Error(), "--partitions 4") {
		t.Fatalf("changing the partition count: %v", err)
	}
}
