package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
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
	out, _, err := c.exec(args...)
	return out, err
}

// exec is run that also returns what went to standard error.
func (c *ctl) exec(args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, func(k string) (string, bool) {
		if k == "PRESENCED_NATS_URL" {
			return c.url, true
		}
		return "", false
	}, &out, &errOut)
	return out.String(), errOut.String(), err
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
	// --json after the command works the same.
	list = nil
	if err := json.Unmarshal([]byte(c.must("presences", "--json")), &list); err != nil || len(list) != 7 {
		t.Fatalf("presences with --json last: %v %v", list, err)
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
		{[]string{"settings"}, "give at least one of"},
		{[]string{"presence", "set", "x", "--name", "X", "--base", "sleepy"}, "--base (available"},
		{[]string{"workstream", "set", "chat", "--allowed", "idle"}, "--allowed \"idle\""},
		{[]string{"rejected", "show", "abc"}, "sequence number"},
		{[]string{"get", "nobody"}, "404"},
	} {
		if _, err := c.run(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("presencectl %v: error %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	// Usage goes with the error (to stderr), never to stdout, which scripts read.
	for _, args := range [][]string{nil, {"frobnicate"}, {"get"}, {"--no-such-flag"}} {
		out, err := c.run(args...)
		if err == nil || !strings.Contains(err.Error(), "Usage: presencectl") || out != "" {
			t.Errorf("presencectl %v: stdout %q, error %v; want the usage in the error only", args, out, err)
		}
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--nats-url", "nats://127.0.0.1:1", "presences"}, cmdline.NoEnv, &out, io.Discard)
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

// TestJSONAnywhere: --json works before the command, after it and between its
// arguments, and only JSON reaches standard output.
func TestJSONAnywhere(t *testing.T) {
	t.Parallel()
	c := newCtl(t)
	c.must("agent", "login", "j-1")
	c.eventually("j-1 signed in", func() bool { _, err := c.run("get", "j-1"); return err == nil })
	for _, args := range [][]string{
		{"--json", "get", "j-1"},
		{"get", "j-1", "--json"},
		{"get", "--json", "j-1"},
		{"-json", "get", "j-1"},
		{"get", "j-1", "--json=true"},
	} {
		out, errOut, err := c.exec(args...)
		var st events.StatusChanged
		if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.AgentID != "j-1" || errOut != "" {
			t.Errorf("presencectl %v: err %v, stdout %q, stderr %q; want the status as JSON on stdout only", args, err, out, errOut)
		}
	}
	if out := c.must("get", "j-1", "--json=false"); !strings.HasPrefix(out, "j-1  available") {
		t.Errorf("--json=false printed %q, want the human line", out)
	}
	// A command that takes flags of its own, with --json among them.
	out := c.must("agent", "heartbeat", "j-1", "--json", "--session", "default")
	var sent struct {
		Type     string `json:"type"`
		Sequence uint64 `json:"sequence"`
	}
	if err := json.Unmarshal([]byte(out), &sent); err != nil || sent.Type != "agent.heartbeat" || sent.Sequence == 0 {
		t.Errorf("agent heartbeat … --json printed %q: %v", out, err)
	}
	if _, err := c.run("get", "j-1", "--json=maybe"); err == nil || !strings.Contains(err.Error(), "--json=true") {
		t.Errorf("--json=maybe: %v", err)
	}
}

// offline runs presencectl against an address nothing listens on: whatever it
// prints must not need a server.
func offline(args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	err = run(context.Background(), append([]string{"--nats-url", "nats://127.0.0.1:1"}, args...), cmdline.NoEnv, &out, &errOut)
	return out.String(), errOut.String(), err
}

// TestUsageGoesToStderr: help, a missing or unknown command and a bad global
// flag put the usage on standard error (written there, or in the error that
// main prints there) and nothing on standard output.
func TestUsageGoesToStderr(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		wantErr bool
	}{
		{[]string{"-h"}, false},
		{[]string{"--help"}, false},
		{[]string{"help"}, false},
		{[]string{"get", "a-1", "--help"}, false},
		{[]string{"--json", "-h"}, false},
		{[]string{"--subject-prefix", "p", "help"}, false},
		{nil, true},
		{[]string{"--json"}, true},
		{[]string{"frobnicate"}, true},
		{[]string{"--json", "frobnicate"}, true},
		{[]string{"--no-such-flag", "get", "a-1"}, true},
	} {
		out, stderr, err := offline(tc.args...)
		if err != nil {
			stderr += err.Error()
		}
		if out != "" || strings.Count(stderr, "Usage: presencectl") != 1 || (err != nil) != tc.wantErr {
			t.Errorf("presencectl %v: err %v, stdout %q, usage on stderr %d times, want once", tc.args, err, out, strings.Count(stderr, "Usage: presencectl"))
		}
	}
}

// TestWrongArgumentCounts: each command with too few or too many arguments
// names what is missing and its own usage, before trying to connect.
func TestWrongArgumentCounts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"get"}, "get: give an agent id: presencectl get <agentId>"},
		{[]string{"get", "a-1", "a-2"}, "get: give an agent id: presencectl get <agentId>"},
		{[]string{"presences", "all"}, "presences: takes no arguments: presencectl presences"},
		{[]string{"watch", "a-1"}, "watch: takes no arguments: presencectl watch"},
		{[]string{"workstreams", "chat"}, "workstreams: takes no arguments: presencectl workstreams"},
		{[]string{"apply"}, "apply: give the setup file: presencectl apply <file>"},
		{[]string{"presence", "set"}, "presence set: give a presence id first: presencectl presence set <presenceId> --name N --base STATUS"},
		{[]string{"presence", "set", "--name", "X"}, "presence set: give a presence id first: presencectl presence set <presenceId>"},
		{[]string{"presence", "remove"}, "presence remove: give a presence id: presencectl presence remove <presenceId>"},
		{[]string{"presence"}, "presence: use presencectl presence set <presenceId>"},
		{[]string{"agent", "set", "a-1"}, "agent set: give an agent id and a presence id: presencectl agent set <agentId> <presenceId>"},
		{[]string{"agent", "default", "a-1"}, "agent default: give an agent id and a presence id (or null to clear it): presencectl agent default <agentId> <presenceId>|null"},
		{[]string{"agent", "remove"}, "agent remove: give an agent id: presencectl agent remove <agentId>"},
		{[]string{"agent", "login"}, "agent login: give an agent id first: presencectl agent login <agentId> [--session S]"},
		{[]string{"agent", "logout", "--session", "s"}, "agent logout: give an agent id first: presencectl agent logout <agentId> [--session S]"},
		{[]string{"agent"}, "agent: use default, remove, login, logout, heartbeat or set"},
		{[]string{"workstream", "set"}, "workstream set: give a workstream id first: presencectl workstream set <workstreamId> --allowed available,busy"},
		{[]string{"workstream", "remove", "a", "b"}, "workstream remove: give a workstream id: presencectl workstream remove <workstreamId>"},
		{[]string{"work", "submit"}, "work submit: give a workstream id first: presencectl work submit <workstreamId> [--id ID] [--units N]"},
		{[]string{"work"}, "work: use presencectl work submit <workstreamId>"},
		{[]string{"rejected", "show"}, "rejected show: give the sequence number that presencectl rejected lists: presencectl rejected show <seq>"},
		{[]string{"rejected", "replay", "1", "2"}, "rejected replay: give the sequence number that presencectl rejected lists: presencectl rejected replay <seq>"},
		{[]string{"rejected", "everything"}, "rejected: use presencectl rejected [--limit N]"},
	} {
		out, _, err := offline(tc.args...)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || out != "" {
			t.Errorf("presencectl %v: error %v, stdout %q; want it to start %q", tc.args, err, out, tc.want)
		}
	}
}

// TestFlagMistakesNameTheUsage: a command's own flags, wrong or left over,
// are reported with that command's usage.
func TestFlagMistakesNameTheUsage(t *testing.T) {
	t.Parallel()
	c := newCtl(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "login", "a-1", "--sesion", "s"}, "agent login: flag provided but not defined: -sesion: presencectl agent login <agentId> [--session S]"},
		{[]string{"agent", "login", "a-1", "--session", "s", "extra"}, `agent login: unexpected "extra": presencectl agent login`},
		{[]string{"work", "submit", "chat", "--units"}, "work submit: flag needs an argument: -units: presencectl work submit"},
		{[]string{"rejected", "--limit", "x"}, "rejected: invalid value"},
	} {
		if _, err := c.run(tc.args...); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("presencectl %v: error %v, want it to start %q", tc.args, err, tc.want)
		}
	}
}

// TestUsageListsEveryCommand keeps the usage text and the per-command usage
// lines that errors quote the same.
func TestUsageListsEveryCommand(t *testing.T) {
	for cmd, line := range usageOf {
		if !strings.Contains(usage, "  "+line) {
			t.Errorf("the usage text lacks %s's line %q", cmd, line)
		}
	}
}
