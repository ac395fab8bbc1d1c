package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/events"
	cmdline "github.com/presenced/presenced/internal/cli"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/internal/workertest"
	"github.com/presenced/presenced/state"
	"github.com/presenced/presenced/worker"
)

// ctl runs presencectl against a real server and a running worker.
type ctl struct {
	t   *testing.T
	url string
}

func newCtl(t *testing.T) *ctl {
	n := testenv.StartNATS(t)
	workertest.Start(t, n.Conn(t), state.NewMemory(), worker.Config{Partitions: 2, SweepInterval: 100 * time.Millisecond})
	return &ctl{t: t, url: n.ClientURL()}
}

func (c *ctl) run(args ...string) (string, error) {
	var out bytes.Buffer
	err := run(context.Background(), args, func(k string) (string, bool) {
		if k == "PRESENCED_NATS_URL" {
			return c.url, true
		}
		return "", false
	}, &out)
	return out.String(), err
}

func (c *ctl) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("presencectl %v: %v\n%s", args, err, out)
	}
	return out
}

// eventually repeats a read until it shows what a published command caused.
func (c *ctl) eventually(what string, ok func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond) // the worker applies commands asynchronously
	}
}

func TestCommands(t *testing.T) {
	t.Parallel()
	c := newCtl(t)
	c.must("presence", "set", "training", "--name", "Away – in training", "--base", "away")
	c.eventually("training listed", func() bool { return strings.Contains(c.must("presences"), "training") })
	var list []events.Presence
	if err := json.Unmarshal([]byte(c.must("--json", "presences")), &list); err != nil || len(list) != 7 {
		t.Fatalf("presences --json: %v %v", list, err)
	}

	c.must("agent", "default", "a-1", "training")
	c.must("agent", "login", "a-1", "--session", "desk")
	c.eventually("a-1 in training", func() bool {
		out, err := c.run("get", "a-1")
		return err == nil && strings.Contains(out, "training (away)")
	})
	var st events.StatusChanged
	if err := json.Unmarshal([]byte(c.must("--json", "get", "a-1")), &st); err != nil || st.Version != 1 || !st.SignedIn {
		t.Fatalf("get --json: %+v %v", st, err)
	}

	// A rejected command shows up among the dead letters and can be replayed after a fix.
	c.must("agent", "set", "a-1", "wrapup")
	var rows []struct {
		Seq  uint64 `json:"seq"`
		Code string `json:"code"`
	}
	c.eventually("a dead letter", func() bool {
		_ = json.Unmarshal([]byte(c.must("--json", "rejected")), &rows)
		return len(rows) == 1
	})
	if rows[0].Code != "unknown_presence" {
		t.Fatalf("rejected = %+v", rows)
	}
	if out := c.must("rejected", "show", "1"); !strings.Contains(out, `"presenceId": "wrapup"`) {
		t.Fatalf("show:\n%s", out)
	}
	c.must("presence", "set", "wrapup", "--name", "Wrap-up", "--base", "busy")
	c.eventually("wrapup listed", func() bool { return strings.Contains(c.must("presences"), "wrapup") })
	c.must("rejected", "replay", "1")
	c.eventually("a-1 in wrapup", func() bool { out, _ := c.run("get", "a-1"); return strings.Contains(out, "wrapup (busy)") })

	c.must("workstream", "set", "chat", "--allowed", "available,busy")
	c.eventually("chat listed", func() bool { return strings.Contains(c.must("workstreams"), "available,busy") })
	c.must("workstream", "remove", "chat")
	c.eventually("chat gone", func() bool { return !strings.Contains(c.must("workstreams"), "chat") })

	c.must("settings", "--session-ttl", "0", "--missed", "off")
	c.must("agent", "remove", "a-1")
	c.eventually("a-1 removed", func() bool {
		_, err := c.run("get", "a-1")
		return err != nil && strings.Contains(err.Error(), "404")
	})
}

func TestErrorsSayWhatToFix(t *testing.T) {
	t.Parallel()
	c := newCtl(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"settings", "--missed", "maybe"}, "use on, off or null"},
		{[]string{"settings"}, "needs at least one of"},
		{[]string{"presence", "set", "x", "--name", "X", "--base", "sleepy"}, "--base (available"},
		{[]string{"workstream", "set", "chat", "--allowed", "idle"}, "--allowed \"idle\""},
		{[]string{"rejected", "show", "abc"}, "sequence number"},
		{[]string{"get", "nobody"}, "404"},
	} {
		if _, err := c.run(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("presencectl %v: error %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--nats-url", "nats://127.0.0.1:1", "presences"}, cmdline.NoEnv, &out)
	if err == nil || !strings.Contains(err.Error(), "PRESENCED_NATS_URL") {
		t.Fatalf("no server: %v", err)
	}
}

func TestApplyDemoSetup(t *testing.T) {
	t.Parallel()
	c := newCtl(t)
	c.must("apply", "../../deploy/demo.json")
	c.eventually("custom presences listed", func() bool {
		out := c.must("presences")
		return strings.Contains(out, "chat-only") && strings.Contains(out, "training") && strings.Contains(out, "wrapup")
	})
	c.eventually("workstreams listed", func() bool {
		out := c.must("workstreams")
		return strings.Contains(out, "chat") && strings.Contains(out, "voice")
	})

	// A mistake anywhere in the file publishes nothing and says where it is.
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"presences":[{"id":"ok-1","name":"OK","text":"ok","baseStatus":"away"},
		{"id":"bad","name":"Bad","text":"bad","baseStatus":"sleeping"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := c.run("apply", bad)
	if err == nil || !strings.Contains(err.Error(), "presence.configured #2") || !strings.Contains(err.Error(), "invalid_data") {
		t.Fatalf("apply of a bad file: %v", err)
	}
	if out := c.must("presences"); strings.Contains(out, "ok-1") {
		t.Fatalf("a file with a mistake was partly applied:\n%s", out)
	}
}
