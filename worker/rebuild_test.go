package worker_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/worker"
)

// TestRedisRestartedEmpty: redis-server loses all its data; the worker notices,
// rebuilds from JetStream and goes on with versions continuing and nothing stale.
func TestRedisRestartedEmpty(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	e.publish(events.PresenceConfigured, "", events.PresenceConfiguredData{ID: "training", Name: "Training", Text: "Training", BaseStatus: events.Away, Selectable: true})
	e.publish(events.SettingsConfigured, "", map[string]any{"rejectedNotification": true})
	for i := range 12 {
		a := fmt.Sprintf("r-%d", i)
		e.publish(events.AgentCapacityChanged, a, events.CapacityData{Used: 1, Total: 3})
		e.publish(events.AgentConfigured, "", events.AgentConfiguredData{AgentID: a, DefaultPresenceID: ptr("training")})
		e.publish(events.AgentLogin, a, sess{SessionID: "desk"})
		e.publish(events.AgentLogin, a, sess{SessionID: "phone"})
	}
	e.publish(events.AgentLogout, "r-0", sess{SessionID: "desk"})
	e.publish(events.AgentLogout, "r-0", sess{SessionID: "phone"})
	e.waitVersion("r-0", 2)
	for i := 1; i < 12; i++ {
		e.waitVersion(fmt.Sprintf("r-%d", i), 1)
	}

	e.redis.Kill()
	e.redis.Restart() // no AOF: it comes back empty

	// Every agent's read model comes back by itself, with no event arriving.
	deadline := time.Now().Add(15 * time.Second)
	for i := 1; i < 12; i++ {
		a := fmt.Sprintf("r-%d", i)
		for e.readModel(a)["presenceId"] != "training" {
			if time.Now().After(deadline) {
				t.Fatalf("read model of %s (partition %d) not rebuilt within 15s: %v", a, worker.PartitionOf(a, 4), e.readModel(a))
			}
			time.Sleep(100 * time.Millisecond) // polling Redis: no event announces the repair
		}
		if rm := e.readModel(a); rm["version"] != "1" || rm["signedIn"] != "true" {
			t.Fatalf("rebuilt read model of %s = %v", a, rm)
		}
	}
	if rm := e.readModel("r-0"); rm["presenceId"] != "offline" || rm["version"] != "2" {
		t.Fatalf("rebuilt read model of r-0 = %v", rm)
	}

	// Signed-in state, sessions, capacity, defaults and configuration all survived.
	e.publish(events.AgentLogout, "r-1", sess{SessionID: "desk"}) // phone is still live: no change
	e.publish(events.AgentPresenceSet, "r-1", events.PresenceSetData{PresenceID: "available"})
	st := e.waitVersion("r-1", 2)
	expectStatus(t, st, "available", events.ReasonManual, true)
	if st.Previous == nil || st.Previous.PresenceID != "training" {
		t.Fatalf("previous = %+v", st.Previous)
	}
	e.publish(events.NotificationRejected, "r-2", events.NotificationData{})
	expectStatus(t, e.waitVersion("r-2", 2), "busy_dnd", events.ReasonRejectedNotification, true)
	e.publish(events.AgentLogin, "r-0", sess{})
	st = e.waitVersion("r-0", 3)
	// Default training is sticky, so capacity 1/3 does not apply.
	expectStatus(t, st, "training", events.ReasonLogin, true)
	if _, code := e.queryAgent("r-3"); code != "" {
		t.Fatalf("query after rebuild: %s", code)
	}
	data, _ := e.query(e.subj.QueryPresences())
	var list []events.Presence
	if err := json.Unmarshal(data, &list); err != nil || len(list) != 7 {
		t.Fatalf("presences after rebuild: %s", data)
	}
	for i := range 12 {
		a := fmt.Sprintf("r-%d", i)
		l := e.status.get(a)
		for j, st := range l {
			if st.Version != uint64(j+1) {
				t.Fatalf("%s versions went wrong: %s", a, describe(l))
			}
		}
	}
}

// TestInMemoryModeRestart: the worker with state in memory is restarted; the
// rebuild from JetStream keeps versions and sign-ins.
func TestInMemoryModeRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.startProcess("PRESENCED_REDIS_URL=")
	e.waitStreams()
	e.status = e.collect()
	e.publish(events.AgentLogin, "m-1", sess{})
	e.publish(events.AgentCapacityChanged, "m-1", events.CapacityData{Used: 1, Total: 2})
	e.waitVersion("m-1", 2)
	if err := p.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = p.Wait()
	e.startProcess("PRESENCED_REDIS_URL=")
	e.publish(events.AgentCapacityChanged, "m-1", events.CapacityData{Used: 2, Total: 2})
	st := e.waitVersion("m-1", 3)
	expectStatus(t, st, "busy_dnd", events.ReasonCapacity, true)
	if st.Previous == nil || st.Previous.PresenceID != "busy" {
		t.Fatalf("previous = %+v", st.Previous)
	}
}
