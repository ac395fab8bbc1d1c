package events_test

import (
	"os"
	"slices"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/presenced/presenced/events"
)

// TestAsyncAPIDocumentsEveryType fails when a type, rejection code or reason in the
// code is missing from docs/asyncapi.yaml.
func TestAsyncAPIDocumentsEveryType(t *testing.T) {
	b, err := os.ReadFile("../docs/asyncapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		AsyncAPI   string `yaml:"asyncapi"`
		Components struct {
			Messages map[string]struct {
				Name    string `yaml:"name"`
				Payload struct {
					Properties map[string]struct {
						Enum []string `yaml:"enum"`
					} `yaml:"properties"`
				} `yaml:"payload"`
			} `yaml:"messages"`
			Schemas map[string]struct {
				Properties map[string]struct {
					Enum []string `yaml:"enum"`
				} `yaml:"properties"`
			} `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("docs/asyncapi.yaml: %v", err)
	}
	if doc.AsyncAPI != "3.0.0" {
		t.Fatalf("asyncapi version %q", doc.AsyncAPI)
	}
	var names []string
	for _, m := range doc.Components.Messages {
		names = append(names, m.Name)
	}
	for _, typ := range slices.Concat(events.InputTypes(), events.RoutingTypes(), []events.Type{events.AgentStatusChanged, events.EventRejected}) {
		if !slices.Contains(names, string(typ)) {
			t.Errorf("type %s is not documented", typ)
		}
	}
	codes := doc.Components.Messages["eventRejected"].Payload.Properties["code"].Enum
	for _, c := range []events.Code{events.CodeMalformed, events.CodeUnsupportedType, events.CodeWrongSubject, events.CodeInvalidData,
		events.CodeAgentMismatch, events.CodeUnknownPresence, events.CodeNotSelectable, events.CodeBuiltinImmutable,
		events.CodeNotSignedIn, events.CodeTooLarge} {
		if !slices.Contains(codes, string(c)) {
			t.Errorf("rejection code %s is not documented", c)
		}
	}
	reasons := doc.Components.Schemas["status"].Properties["reason"].Enum
	for _, r := range []events.Reason{events.ReasonLogin, events.ReasonReconnect, events.ReasonLogout, events.ReasonSessionExpired,
		events.ReasonManual, events.ReasonMissedNotification, events.ReasonRejectedNotification, events.ReasonCapacity,
		events.ReasonPresenceUpdated, events.ReasonPresenceRemoved, events.ReasonAgentRemoved} {
		if !slices.Contains(reasons, string(r)) {
			t.Errorf("reason %s is not documented", r)
		}
	}
}
