package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/worker"
)

type sess = events.SessionData

func expectStatus(t *testing.T, st events.StatusChanged, presence string, reason events.Reason, signedIn bool) {
	t.Helper()
	if st.PresenceID != presence || st.Reason != reason || st.SignedIn != signedIn {
		t.Fatalf("status v%d = %s/%s signedIn=%v, want %s/%s signedIn=%v", st.Version, st.PresenceID, st.Reason, st.SignedIn, presence, reason, signedIn)
	}
}

// TestAgentLifecycle drives the agent and router rows of the contract through
// NATS and checks the status stream, the query subject and the Redis read model.
func TestAgentLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	const a = "a-17"

	if _, code := e.queryAgent(a); code != "404" {
		t.Fatalf("query of an unknown agent: code %q, want 404", code)
	}
	if _, code := e.query(e.subj.QueryAgent("not$valid")); code != "400" {
		t.Fatalf("query of an invalid agent id: code %q, want 400", code)
	}
	e.publish(events.AgentLogin, a, sess{SessionID: "desk"})
	st := e.waitVersion(a, 1)
	expectStatus(t, st, "available", events.ReasonLogin, true)
	if st.Previous != nil || st.Actor != "agent" || st.Cause.Type != events.AgentLogin {
		t.Fatalf("first status = %+v", st)
	}
	e.publish(events.AgentLogin, a, sess{SessionID: "phone"}) // second session: no change
	e.publish(events.AgentPresenceSet, a, events.PresenceSetData{PresenceID: "busy"})
	st = e.waitVersion(a, 2)
	expectStatus(t, st, "busy", events.ReasonManual, true)
	if st.Previous == nil || st.Previous.PresenceID != "available" {
		t.Fatalf("previous = %+v", st.Previous)
	}
	e.publish(events.NotificationMissed, a, events.NotificationData{WorkItemID: "w1"})
	st = e.waitVersion(a, 3)
	expectStatus(t, st, "inactive", events.ReasonMissedNotification, true)
	if st.Actor != "router" || st.BaseStatus != events.Away {
		t.Fatalf("missed = %+v", st)
	}
	e.publish(events.NotificationMissed, a, events.NotificationData{}) // already inactive
	e.publish(events.AgentPresenceSet, a, events.PresenceSetData{PresenceID: "available"})
	expectStatus(t, e.waitVersion(a, 4), "available", events.ReasonManual, true)
	e.publish(events.AgentCapacityChanged, a, events.CapacityData{Used: 2, Total: 2})
	expectStatus(t, e.waitVersion(a, 5), "busy_dnd", events.ReasonCapacity, true)
	e.publish(events.AgentCapacityChanged, a, events.CapacityData{Used: 1, Total: 2})
	expectStatus(t, e.waitVersion(a, 6), "busy", events.ReasonCapacity, true)
	e.publish(events.AgentLogout, a, sess{SessionID: "desk"}) // phone still live
	e.publish(events.AgentLogout, a, sess{SessionID: "phone"})
	expectStatus(t, e.waitVersion(a, 7), "offline", events.ReasonLogout, false)
	e.publish(events.AgentHeartbeat, a, sess{SessionID: "phone"}) // never signs in
	e.publish(events.AgentLogin, a, sess{})
	st = e.waitVersion(a, 8)
	// Capacity 1/2 is remembered while signed out and applied at sign-in.
	expectStatus(t, st, "busy", events.ReasonLogin, true)

	got, code := e.queryAgent(a)
	if code != "" || got.Version != 8 || got.PresenceID != "busy" || !got.SignedIn || got.Reason != events.ReasonLogin || got.Actor != "agent" {
		t.Fatalf("query = %+v code %q", got, code)
	}
	rm := e.readModel(a)
	if rm["presenceId"] != "busy" || rm["baseStatus"] != "busy" || rm["signedIn"] != "true" || rm["version"] != "8" || rm["text"] != "Busy" {
		t.Fatalf("read model = %v", rm)
	}
	if since, err := time.Parse(time.RFC3339Nano, rm["since"]); err != nil || !since.Equal(st.Since) {
		t.Fatalf("read model since %q, status since %s", rm["since"], st.Since)
	}
	if n := len(e.status.get(a)); n != 8 {
		t.Fatalf("published %d statuses, want 8 (no event when nothing changed): %s", n, describe(e.status.get(a)))
	}
}

func TestConfigurationRows(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	training := events.PresenceConfiguredData{ID: "training", Name: "Away – in training", Text: "In training", BaseStatus: events.Away, Selectable: true}
	e.publish(events.PresenceConfigured, "", training)
	e.publish(events.AgentConfigured, "", events.AgentConfiguredData{AgentID: "b-1", DefaultPresenceID: ptr("training")})
	// Read-your-writes: the login right after the configuration sees it.
	e.publish(events.AgentLogin, "b-1", sess{})
	st := e.waitVersion("b-1", 1)
	expectStatus(t, st, "training", events.ReasonLogin, true)
	if st.Name != "Away – in training" || st.Text != "In training" || st.BaseStatus != events.Away {
		t.Fatalf("status = %+v", st)
	}
	e.publish(events.AgentLogin, "b-2", sess{})
	e.waitVersion("b-2", 1)
	e.publish(events.AgentPresenceSet, "b-2", events.PresenceSetData{PresenceID: "training"})
	e.waitVersion("b-2", 2)

	// Editing the text republishes for everyone in it, keeping since.
	training.Text = "In training until 14:00"
	e.publish(events.PresenceConfigured, "", training)
	for a, v := range map[string]uint64{"b-1": 2, "b-2": 3} {
		st := e.waitVersion(a, v)
		expectStatus(t, st, "training", events.ReasonPresenceUpdated, true)
		if st.Text != "In training until 14:00" || !st.Since.Equal(e.waitVersion(a, v-1).Since) || st.Actor != "admin" {
			t.Fatalf("%s updated = %+v", a, st)
		}
	}
	data, code := e.query(e.subj.QueryPresences())
	var list []events.Presence
	if err := json.Unmarshal(data, &list); err != nil || code != "" || len(list) != 7 || list[6].ID != "training" || list[6].Text != "In training until 14:00" {
		t.Fatalf("presences = %s (%q)", data, code)
	}

	// Removing it moves agents to the built-in of its base status and clears defaults.
	e.publish(events.PresenceRemoved, "", events.PresenceRemovedData{ID: "training"})
	expectStatus(t, e.waitVersion("b-1", 3), "away", events.ReasonPresenceRemoved, true)
	expectStatus(t, e.waitVersion("b-2", 4), "away", events.ReasonPresenceRemoved, true)
	e.publish(events.AgentLogout, "b-1", sess{})
	e.waitVersion("b-1", 4)
	e.publish(events.AgentLogin, "b-1", sess{})
	expectStatus(t, e.waitVersion("b-1", 5), "available", events.ReasonLogin, true)

	// Organisation default and rejected-notification handling.
	e.publish(events.SettingsConfigured, "", map[string]any{"defaultPresenceId": "busy", "rejectedNotification": true})
	e.publish(events.AgentLogin, "b-3", sess{})
	expectStatus(t, e.waitVersion("b-3", 1), "busy", events.ReasonLogin, true)
	e.publish(events.NotificationRejected, "b-3", events.NotificationData{})
	expectStatus(t, e.waitVersion("b-3", 2), "busy_dnd", events.ReasonRejectedNotification, true)

	// Removing an agent publishes a final offline, purges its history and answers 404.
	e.publish(events.AgentRemoved, "", events.AgentRemovedData{AgentID: "b-3"})
	st = e.waitVersion("b-3", 3)
	expectStatus(t, st, "offline", events.ReasonAgentRemoved, false)
	if _, code := e.queryAgent("b-3"); code != "404" {
		t.Fatalf("query of a removed agent: %q", code)
	}
	if rm := e.readModel("b-3"); len(rm) != 0 {
		t.Fatalf("read model kept: %v", rm)
	}
	// The purge follows the publish of the final status.
	stream, _ := e.js.Stream(context.Background(), e.names.StatusStream())
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := stream.Info(context.Background(), jetstream.WithSubjectFilter(e.subj.Status("b-3")))
		if err == nil && info.State.Subjects[e.subj.Status("b-3")] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status subject of a removed agent keeps %v messages (err %v), want 1", info.State.Subjects, err)
		}
		time.Sleep(20 * time.Millisecond) // polling the stream: the purge announces nothing
	}
	e.publish(events.AgentLogin, "b-3", sess{})
	if st := e.waitVersion("b-3", 4); st.Previous != nil {
		t.Fatalf("a returning agent continues its versions with no previous: %+v", st)
	}
}

func ptr(s string) *string { return &s }

// TestRejections sends one input per rejection code and checks the dead letters
// and that a neighbour event behind them is still applied.
func TestRejections(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	raw := func(subject string, hdr map[string]string, data string) {
		m := nats.NewMsg(subject)
		for k, v := range hdr {
			m.Header.Set(k, v)
		}
		m.Data = []byte(data)
		e.publishMsg(m)
	}
	bin := func(typ, subject, ceSubject string) map[string]string {
		h := map[string]string{"ce-specversion": "1.0", "ce-id": fmt.Sprint(time.Now().UnixNano()), "ce-source": "test", "ce-type": typ}
		if ceSubject != "" {
			h["ce-subject"] = ceSubject
		}
		return h
	}
	s := e.subj
	raw(s.AgentIn("c-1"), nil, "{not json")                                                                        // malformed
	raw(s.AgentIn("c-1"), bin("agent.dance", "", "c-1"), "{}")                                                     // unsupported_type
	raw(s.AgentIn("c-1"), bin("notification.missed", "", "c-1"), "{}")                                             // wrong_subject
	raw(s.RouterIn("c-1"), bin("agent.capacity.changed", "", "c-1"), `{"used":1,"total":0}`)                       // invalid_data
	raw(s.AgentIn("c-1"), bin("agent.login", "", "c-2"), "{}")                                                     // agent_mismatch
	raw(s.AgentIn("c-1"), bin("agent.presence.set", "", "c-1"), `{"presenceId":"busy"}`)                           // not_signed_in
	raw(s.Config(), bin("presence.removed", "", ""), `{"id":"nope"}`)                                              // unknown_presence
	raw(s.Config(), bin("presence.configured", "", ""), `{"id":"away","name":"x","text":"x","baseStatus":"away"}`) // builtin_immutable
	raw(s.AgentIn("c-1"), bin("agent.login", "", "c-1"), strings.Repeat(" ", 70000))                               // too_large
	e.publish(events.AgentLogin, "c-1", sess{})
	e.publish(events.AgentPresenceSet, "c-1", events.PresenceSetData{PresenceID: "inactive"}) // not_selectable
	e.publish(events.AgentPresenceSet, "c-1", events.PresenceSetData{PresenceID: "nope"})     // unknown_presence
	e.publish(events.AgentPresenceSet, "c-1", events.PresenceSetData{PresenceID: "away"})
	expectStatus(t, e.waitVersion("c-1", 2), "away", events.ReasonManual, true)

	got := e.rejections(11)
	want := []events.Code{"malformed", "unsupported_type", "wrong_subject", "invalid_data", "agent_mismatch", "not_signed_in",
		"unknown_presence", "builtin_immutable", "too_large", "not_selectable", "unknown_presence"}
	seen := map[events.Code]int{}
	for _, r := range got {
		seen[r.Code]++
		if r.Message == "" || r.Subject == "" {
			t.Errorf("rejection without message or subject: %+v", r)
		}
	}
	for _, c := range want {
		if seen[c] == 0 {
			t.Errorf("no %s rejection among %v", c, seen)
		}
		seen[c]--
	}
	if got[0].Code == events.CodeMalformed {
		var s string
		if err := json.Unmarshal(got[0].Event.Data, &s); err != nil || s == "" {
			t.Errorf("unparseable payload should come back as base64 text, got %s", got[0].Event.Data)
		}
	}
}

// TestPartitionTokenFromProducer: a subject that already carries a partition
// token, not the agent's, is a dead letter and never touches the agent.
func TestPartitionTokenFromProducer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	const agent = "pt-1"
	wrong := (worker.PartitionOf(agent, 4) + 1) % 4
	// Subjects outside the contract's shapes are refused at the door, so the
	// publisher learns of it and nothing is stored where no consumer reads.
	for _, subject := range []string{
		fmt.Sprintf("presence.in.agent.%d.%s", wrong, agent), // a partition token of its own
		"presence.in.agent", // no agent
		"presence.in.agent.pt-1.extra",
		"presence.in.configuration",
	} {
		m, err := events.NewInput(e.subj, events.AgentLogin, agent, "forged-"+subject, "test", sess{})
		if err != nil {
			t.Fatal(err)
		}
		m.Subject = subject
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err = e.js.PublishMsg(ctx, m)
		cancel()
		if err == nil {
			t.Errorf("publish on %s was stored", subject)
		}
	}
	e.publish(events.AgentLogin, agent, sess{})
	if st := e.waitVersion(agent, 1); strings.HasPrefix(st.Cause.ID, "forged-") {
		t.Fatalf("a forged login was applied: %+v", st)
	}
	// An unknown role still has the contract's shape: stored, and dead-lettered.
	m, _ := events.NewInput(e.subj, events.AgentLogin, agent, "odd-role", "test", sess{})
	m.Subject = "presence.in.desk." + agent
	e.publishMsg(m)
	if got := e.rejections(1); got[0].Code != events.CodeWrongSubject {
		t.Fatalf("rejection = %+v", got[0])
	}
}

// TestDuplicates: a redelivered message and the same source+id published again
// as a new message have no second effect.
func TestDuplicates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	e.publish(events.AgentLogin, "d-1", sess{})
	e.waitVersion("d-1", 1)
	m, _ := events.NewInput(e.subj, events.AgentPresenceSet, "d-1", "same-id", "test", events.PresenceSetData{PresenceID: "busy"})
	e.publishMsg(m)
	// The same event again, without Nats-Msg-Id so JetStream stores it as new.
	m2, _ := events.NewInput(e.subj, events.AgentPresenceSet, "d-1", "same-id", "test", events.PresenceSetData{PresenceID: "busy"})
	m2.Header.Del("Nats-Msg-Id")
	m3, _ := events.NewInput(e.subj, events.AgentPresenceSet, "d-1", "other-id", "test", events.PresenceSetData{PresenceID: "available"})
	e.publish(events.AgentPresenceSet, "d-1", events.PresenceSetData{PresenceID: "away"})
	e.waitVersion("d-1", 3)
	e.publishMsg(m2)
	e.publishMsg(m3)
	st := e.waitVersion("d-1", 4)
	expectStatus(t, st, "available", events.ReasonManual, true)
	if l := e.status.get("d-1"); len(l) != 4 || l[2].PresenceID != "away" {
		t.Fatalf("duplicate applied twice: %s", describe(l))
	}
}

// TestSessionExpiry: with no heartbeat the worker itself ends the session at its
// lease deadline, and a sign-in within the grace window restores the presence.
func TestSessionExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	e.publish(events.SettingsConfigured, "", map[string]any{"sessionTtlSeconds": 1, "reconnectGraceSeconds": 60})
	e.publish(events.AgentLogin, "x-1", sess{SessionID: "s"})
	e.waitVersion("x-1", 1)
	e.publish(events.AgentPresenceSet, "x-1", events.PresenceSetData{PresenceID: "busy"})
	e.waitVersion("x-1", 2)
	st := e.waitVersion("x-1", 3)
	expectStatus(t, st, "offline", events.ReasonSessionExpired, false)
	if st.Actor != "system" || st.Cause.Type != events.SessionExpired || st.Cause.ID != events.ExpiryCauseID("x-1", "s", st.Since) {
		t.Fatalf("expiry = %+v", st)
	}
	e.publish(events.AgentLogin, "x-1", sess{SessionID: "s"})
	expectStatus(t, e.waitVersion("x-1", 4), "busy", events.ReasonReconnect, true)
}

// TestPartitionMatchesServer checks our partition function against the subject
// transform a real server applies to the input stream.
func TestPartitionMatchesServer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	stream, err := e.js.Stream(context.Background(), e.names.InputStream())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		agent := fmt.Sprintf("agent-%d", i*7919)
		seq := e.publishMsg(mustInput(t, e.subj, events.AgentHeartbeat, agent))
		raw, err := stream.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("presence.in.agent.%d.%s", worker.PartitionOf(agent, 4), agent)
		if raw.Subject != want {
			t.Fatalf("stored as %s, want %s", raw.Subject, want)
		}
	}
}

func mustInput(t *testing.T, s events.Subjects, typ events.Type, agent string) *nats.Msg {
	t.Helper()
	m, err := events.NewInput(s, typ, agent, fmt.Sprintf("%s-%s-%d", typ, agent, time.Now().UnixNano()), "test", sess{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
