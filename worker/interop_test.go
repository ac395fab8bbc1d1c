package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/cloudevents/sdk-go/protocol/nats_jetstream/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/events"
)

// TestCloudEventsSDKInterop: events produced by the CloudEvents Go SDK, in binary
// and structured mode, are applied; status events are read back by the SDK.
func TestCloudEventsSDKInterop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker()
	sdkEvent := func(id string, typ events.Type, data any) cloudevents.Event {
		ev := cloudevents.NewEvent()
		ev.SetID(id)
		ev.SetSource("sdk-client")
		ev.SetType(string(typ))
		ev.SetSubject("i-1")
		if err := ev.SetData(cloudevents.ApplicationJSON, data); err != nil {
			t.Fatal(err)
		}
		return ev
	}
	send := func(ctx context.Context, ev cloudevents.Event) {
		var buf bytes.Buffer
		h, err := nats_jetstream.WriteMsg(ctx, binding.ToMessage(&ev), &buf)
		if err != nil {
			t.Fatal(err)
		}
		e.publishMsg(&nats.Msg{Subject: e.subj.AgentIn("i-1"), Header: h, Data: buf.Bytes()})
	}
	send(binding.WithForceBinary(context.Background()), sdkEvent("sdk-1", events.AgentLogin, map[string]any{}))
	expectStatus(t, e.waitVersion("i-1", 1), "available", events.ReasonLogin, true)
	send(binding.WithForceStructured(context.Background()), sdkEvent("sdk-2", events.AgentPresenceSet, events.PresenceSetData{PresenceID: "away"}))
	expectStatus(t, e.waitVersion("i-1", 2), "away", events.ReasonManual, true)
	// Structured JSON with no Content-Type header, as event.MarshalJSON gives it.
	raw, err := json.Marshal(sdkEvent("sdk-3", events.AgentPresenceSet, events.PresenceSetData{PresenceID: "busy"}))
	if err != nil {
		t.Fatal(err)
	}
	e.publishMsg(&nats.Msg{Subject: e.subj.AgentIn("i-1"), Data: raw})
	st := e.waitVersion("i-1", 3)
	expectStatus(t, st, "busy", events.ReasonManual, true)
	if st.Cause.ID != "sdk-3" || st.Cause.Source != "sdk-client" {
		t.Fatalf("cause = %+v", st.Cause)
	}

	// The SDK reads the status events back.
	stream, err := e.js.Stream(context.Background(), e.names.StatusStream())
	if err != nil {
		t.Fatal(err)
	}
	m, err := stream.GetLastMsgForSubject(context.Background(), e.subj.Status("i-1"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := binding.ToEvent(context.Background(), nats_jetstream.NewMessage(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}))
	if err != nil {
		t.Fatalf("SDK cannot read the status event: %v", err)
	}
	var data events.StatusChanged
	if err := got.DataAs(&data); err != nil {
		t.Fatal(err)
	}
	if got.Type() != string(events.AgentStatusChanged) || got.Subject() != "i-1" || got.Source() != "presenced" ||
		got.ID() != events.StatusID(st.Cause, "i-1", 3) || data.Version != 3 || data.PresenceID != "busy" {
		t.Fatalf("SDK read %s / %+v", got, data)
	}
	if m.Header.Get("Nats-Msg-Id") != got.ID() {
		t.Fatalf("Nats-Msg-Id %q, event id %q", m.Header.Get("Nats-Msg-Id"), got.ID())
	}
}
