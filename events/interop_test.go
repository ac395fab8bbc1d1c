package events_test

import (
	"bytes"
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/protocol/nats_jetstream/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/events"
)

const traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// sdkWire is how a producer using the CloudEvents Go SDK can put an event on NATS.
type sdkWire struct {
	name   string
	encode func(t *testing.T, e cloudevents.Event) (nats.Header, []byte)
}

func writeMsg(ctx context.Context) func(t *testing.T, e cloudevents.Event) (nats.Header, []byte) {
	return func(t *testing.T, e cloudevents.Event) (nats.Header, []byte) {
		var buf bytes.Buffer
		h, err := nats_jetstream.WriteMsg(ctx, binding.ToMessage(&e), &buf)
		if err != nil {
			t.Fatalf("WriteMsg: %v", err)
		}
		return h, buf.Bytes()
	}
}

var sdkWires = []sdkWire{
	{"WriteMsg binary", writeMsg(binding.WithForceBinary(context.Background()))},
	{"WriteMsg structured", writeMsg(binding.WithForceStructured(context.Background()))},
	{"MarshalJSON", func(t *testing.T, e cloudevents.Event) (nats.Header, []byte) {
		b, err := e.MarshalJSON()
		if err != nil {
			t.Fatalf("MarshalJSON: %v", err)
		}
		return nil, b
	}},
	{"MarshalJSON with content type", func(t *testing.T, e cloudevents.Event) (nats.Header, []byte) {
		b, err := e.MarshalJSON()
		if err != nil {
			t.Fatalf("MarshalJSON: %v", err)
		}
		return nats.Header{"Content-Type": {cloudevents.ApplicationCloudEventsJSON}}, b
	}},
}

func sdkEvent(t *testing.T, typ events.Type, subject, contentType string, data any) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID("sdk-1")
	e.SetSource("urn:sdk")
	e.SetType(string(typ))
	e.SetTime(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	if subject != "" {
		e.SetSubject(subject)
	}
	e.SetExtension("traceparent", traceParent)
	if data != nil {
		if err := e.SetData(contentType, data); err != nil {
			t.Fatalf("SetData: %v", err)
		}
	}
	return e
}

// TestInteropSDKProducer decodes events written by the CloudEvents Go SDK in every
// way the SDK can put them on NATS.
func TestInteropSDKProducer(t *testing.T) {
	subs := events.Subjects{}
	cases := []struct {
		name    string
		event   func(t *testing.T) cloudevents.Event
		subject string
		want    events.Event
	}{
		{
			name: "agent.presence.set",
			event: func(t *testing.T) cloudevents.Event {
				return sdkEvent(t, events.AgentPresenceSet, "a-1", cloudevents.ApplicationJSON, events.PresenceSetData{PresenceID: "busy"})
			},
			subject: subs.AgentIn("a-1"),
			want: events.Event{ID: "sdk-1", Source: "urn:sdk", Type: events.AgentPresenceSet, Subject: "a-1", AgentID: "a-1",
				Role: events.RoleAgent, TraceParent: traceParent, Data: events.PresenceSetData{PresenceID: "busy"}},
		},
		{
			name: "agent.login without data",
			event: func(t *testing.T) cloudevents.Event {
				return sdkEvent(t, events.AgentLogin, "a-1", "", nil)
			},
			subject: subs.AgentIn("a-1"),
			want: events.Event{ID: "sdk-1", Source: "urn:sdk", Type: events.AgentLogin, Subject: "a-1", AgentID: "a-1",
				Role: events.RoleAgent, TraceParent: traceParent, Data: events.SessionData{SessionID: events.DefaultSessionID}},
		},
		{
			name: "agent.capacity.changed with a +json type",
			event: func(t *testing.T) cloudevents.Event {
				return sdkEvent(t, events.AgentCapacityChanged, "a-1", "application/vnd.presenced+json", map[string]int{"used": 1, "total": 3})
			},
			subject: subs.RouterIn("a-1"),
			want: events.Event{ID: "sdk-1", Source: "urn:sdk", Type: events.AgentCapacityChanged, Subject: "a-1", AgentID: "a-1",
				Role: events.RoleRouter, TraceParent: traceParent, Data: events.CapacityData{Used: 1, Total: 3}},
		},
		{
			name: "settings.configured with null",
			event: func(t *testing.T) cloudevents.Event {
				return sdkEvent(t, events.SettingsConfigured, "", cloudevents.ApplicationJSON, map[string]any{"defaultPresenceId": nil, "sessionTtlSeconds": 30})
			},
			subject: subs.Config(),
			want: events.Event{ID: "sdk-1", Source: "urn:sdk", Type: events.SettingsConfigured, Role: events.RoleConfig, TraceParent: traceParent,
				Data: events.SettingsConfiguredData{
					DefaultPresenceID: events.Optional[string]{Present: true, Null: true},
					SessionTTLSeconds: events.Optional[int]{Present: true, Value: 30},
				}},
		},
	}
	for _, c := range cases {
		for _, w := range sdkWires {
			t.Run(c.name+"/"+w.name, func(t *testing.T) {
				h, data := w.encode(t, c.event(t))
				got, rej := subs.Decode(c.subject, h, data)
				if rej != nil {
					t.Fatalf("rejected: %v", rej)
				}
				if !reflect.DeepEqual(got, c.want) {
					t.Fatalf("got  %+v\nwant %+v", got, c.want)
				}
			})
		}
	}
}

// TestInteropSDKConsumer reads the messages this package writes with the SDK, as a
// router or a dead-letter tool built on the SDK would.
func TestInteropSDKConsumer(t *testing.T) {
	subs := events.Subjects{}
	since := time.Date(2026, 11, 23, 10, 15, 0, 5, time.UTC)
	st := events.StatusChanged{
		AgentID: "a-17", PresenceID: "training", Name: "Away – in training", Text: "In training",
		BaseStatus: events.Away, SignedIn: true, Since: since, Reason: events.ReasonManual, Actor: "agent",
		Cause: events.Cause{ID: "e-1", Source: "urn:desk", Type: events.AgentPresenceSet}, Version: 1,
		TraceParent: traceParent,
	}
	id := events.StatusID(st.Cause, st.AgentID, st.Version)
	msg := subs.EncodeStatus("presenced", id, st)

	e, err := binding.ToEvent(context.Background(), nats_jetstream.NewMessage(msg))
	if err != nil {
		t.Fatalf("SDK cannot read EncodeStatus: %v", err)
	}
	if err := e.Validate(); err != nil {
		t.Fatalf("SDK finds EncodeStatus invalid: %v", err)
	}
	if e.ID() != id || e.Source() != "presenced" || e.Type() != string(events.AgentStatusChanged) ||
		e.Subject() != "a-17" || e.SpecVersion() != "1.0" || e.DataContentType() != cloudevents.ApplicationJSON || !e.Time().Equal(since) {
		t.Errorf("attributes = %s", e.Context)
	}
	if tp := e.Extensions()["traceparent"]; tp != traceParent {
		t.Errorf("traceparent = %v", tp)
	}
	var got events.StatusChanged
	if err := e.DataAs(&got); err != nil {
		t.Fatalf("DataAs: %v", err)
	}
	if !got.Since.Equal(since) {
		t.Errorf("since = %v", got.Since)
	}
	got.Since, got.TraceParent = since, traceParent
	if !reflect.DeepEqual(got, st) {
		t.Errorf("data = %+v\nwant   %+v", got, st)
	}

	rej := subs.EncodeRejected("presenced", "PRESENCE_IN", 9, subs.AgentIn("a-1"), msg.Header, []byte("x"), events.Reject(events.CodeMalformed, "m"))
	re, err := binding.ToEvent(context.Background(), nats_jetstream.NewMessage(rej))
	if err != nil {
		t.Fatalf("SDK cannot read EncodeRejected: %v", err)
	}
	var r events.Rejected
	if err := re.DataAs(&r); err != nil || re.ID() != "PRESENCE_IN-9" || re.Type() != string(events.EventRejected) || r.Code != events.CodeMalformed {
		t.Errorf("rejected = %s %+v %v", re.Context, r, err)
	}

	in, err := events.NewInput(subs, events.AgentHeartbeat, "a-1", "hb-1", "urn:desk", events.SessionData{SessionID: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	ie, err := binding.ToEvent(context.Background(), nats_jetstream.NewMessage(in))
	if err != nil || ie.ID() != "hb-1" || ie.Subject() != "a-1" || ie.Type() != string(events.AgentHeartbeat) {
		t.Errorf("NewInput read by SDK = %v, %v", ie, err)
	}
}
