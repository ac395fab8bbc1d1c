package worker

import (
	"context"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
	"github.com/presenced/presenced/state"
)

// TestLastVersions: the last published version of each agent, from
// multi-subject direct gets over more agents than one request names, or from a
// read per agent where those are refused, is what the status stream holds: 0
// for an agent with no status, and right for a message stored with a header of
// the name the server answers with. A wrong reading would republish changes
// that are out, or skip ones that are not.
func TestLastVersions(t *testing.T) {
	t.Parallel()
	js, cfg, names := streamsSetup(t)
	ctx := context.Background()
	if _, err := ensureStreams(ctx, js, cfg, names); err != nil {
		t.Fatal(err)
	}
	w, err := New(js.Conn(), state.NewMemory(), cfg, nil, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	var ids []string
	for i := range multiLastMax + 5 {
		id := fmt.Sprintf("lv-%d", i)
		ids = append(ids, id)
		want[id] = uint64(i % 4) // 0: never published
		for v := uint64(1); v <= want[id]; v++ {
			st := events.StatusChanged{AgentID: id, Version: v, PresenceID: "available", BaseStatus: events.Available}
			m := names.Subjects.StatusMsg(cfg.Source, fmt.Sprintf("%s-%d", id, v), st, events.MarshalStatus(&st))
			if i == 7 {
				// A header of the server's own name, stored with the message:
				// the server's value comes after it.
				m.Header.Set(jetstream.SubjectHeader, "not.the.subject")
			}
			if _, err := js.PublishMsgAsync(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-js.PublishAsyncComplete()
	pt := newPartition(w, 0, 1)
	check := func(how string) {
		got, err := pt.lastVersions(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if v, ok := got[id]; !ok || v != want[id] {
				t.Errorf("%s: %s: got %d (%v), want %d", how, id, v, ok, want[id])
			}
		}
	}
	check("multi-subject gets")
	if !w.gets.usable() {
		t.Fatal("multi-subject gets refused by a current server")
	}
	// What a server older than 2.11 leaves: a read per agent, the same answer.
	w.gets.refused.Store(true)
	check("a read per agent")
}
