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

func TestLogicalSubject(t *testing.T) {
	for _, c := range []struct {
		stored, want string
		part         int
	}{
		{"presence.in.agent.7.ag-1", "presence.in.agent.ag-1", 7},
		{"presence.in.router.15.ag_2", "presence.in.router.ag_2", 15},
		{"presence.in.config", "presence.in.config", -1},         // no partition token
		{"presence.in.agent.ag-1", "presence.in.agent.ag-1", -1}, // as published, untransformed
		{"presence.in.agent.x.ag-1", "presence.in.agent.x.ag-1", -1},
		{"presence.in.agent.1.ag.1", "presence.in.agent.1.ag.1", -1}, // one token too many
		{"other.in.agent.1.ag-1", "other.in.agent.1.ag-1", -1},
		// Odd shapes keep what the transform's reading always gave them (the
		// decoder rejects them afterwards).
		{"presence.in.agent..x", "presence.in.agent..x", -1}, // empty partition token
		{"presence.in..1.x", "presence.in..x", 1},            // empty role
		{"presence.in.agent.1.", "presence.in.agent.", 1},    // empty agent
	} {
		got, part := logicalSubject("presence", c.stored)
		if got != c.want || part != c.part {
			t.Errorf("logicalSubject(%q) = %q, %d; want %q, %d", c.stored, got, part, c.want, c.part)
		}
	}
}
