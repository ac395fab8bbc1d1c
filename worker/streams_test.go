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
	js, cfg, names := streamsSetup(t)
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
	_, err := ensureStreams(ctx, js, cfg, names)
	if err == nil || !strings.Contains(err.Error(), "--partitions 4") {
		t.Fatalf("changing the partition count: %v", err)
	}
}

// TestInputStreamDirectGet: the input stream allows direct gets (the per-batch
// configuration lookup), also once it was created without them, and only with one
// replica, where no lagging follower can answer one.
func TestInputStreamDirectGet(t *testing.T) {
	t.Parallel()
	js, cfg, names := streamsSetup(t)
	ctx := context.Background()
	old := streamConfigs(cfg, names)[0]
	old.AllowDirect = false
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := ensureStreams(ctx, js, cfg, names); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, names.InputStream())
	if err != nil {
		t.Fatal(err)
	}
	if !s.CachedInfo().Config.AllowDirect {
		t.Error("input stream created without direct gets was not updated to allow them")
	}
	cfg.StreamReplicas = 3
	if streamConfigs(cfg, names)[0].AllowDirect {
		t.Error("direct gets allowed on a replicated input stream")
	}
}

// streamsSetup starts a NATS server and returns JetStream on it with a
// four-partition configuration and the default names.
func streamsSetup(t *testing.T) (jetstream.JetStream, Config, Names) {
	n := testenv.StartNATS(t)
	js, err := jetstream.New(n.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := Config{Partitions: 4}.withDefaults()
	return js, cfg, NamesFor("presence")
}
