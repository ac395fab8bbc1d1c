package testenv_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testenv"
)

func TestRedisStartAndURL(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	if !strings.HasPrefix(r.URL(), "redis://127.0.0.1:") || !strings.HasSuffix(r.URL(), "/0") {
		t.Fatalf("URL = %q", r.URL())
	}
	opts, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	if opts.Addr != r.Addr() {
		t.Fatalf("URL addr %q, Addr %q", opts.Addr, r.Addr())
	}
	ctx := context.Background()
	c := r.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Without AOF a restart comes back empty.
	r.Kill()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after Kill")
	}
	r.Restart()
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after restart without AOF: err = %v, want redis.Nil", err)
	}
}

func TestRedisAOFSurvivesKill(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t, testenv.WithAOF())
	ctx := context.Background()
	c := r.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.Kill()
	r.Restart()
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET after kill+restart = %q, %v; want v", got, err)
	}
	r.Stop()
	r.Restart()
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET after stop+restart = %q, %v; want v", got, err)
	}
}

func TestNATSJetStreamSurvivesRestart(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	if !strings.HasPrefix(n.ClientURL(), "nats://127.0.0.1:") {
		t.Fatalf("ClientURL = %q", n.ClientURL())
	}
	url := n.ClientURL()
	nc := n.Conn(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "t.a", []byte("hello")); err != nil {
		t.Fatal(err)
	}

	n.Restart()
	if n.ClientURL() != url {
		t.Fatalf("ClientURL changed across restart: %q -> %q", url, n.ClientURL())
	}
	// A fresh connection sees the stream and its message.
	js2, err := jetstream.New(n.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js2.Stream(ctx, "T")
	if err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
	msg, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatalf("message after restart: %v", err)
	}
	if string(msg.Data) != "hello" {
		t.Fatalf("message = %q", msg.Data)
	}
	// The first connection reconnects by itself.
	if _, err := js.Publish(ctx, "t.b", []byte("again")); err != nil {
		t.Fatalf("publish on the reconnected connection: %v", err)
	}

	n.Shutdown()
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("connected after Shutdown")
	}
}
