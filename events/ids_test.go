package events

import (
	"regexp"
	"testing"
	"time"
)

var hex32 = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestStatusID(t *testing.T) {
	c := Cause{ID: "e-1", Source: "urn:desk", Type: AgentLogin}
	id := StatusID(c, "a-1", 7)
	if !hex32.MatchString(id) {
		t.Fatalf("StatusID = %q, want 32 hex characters", id)
	}
	if StatusID(c, "a-1", 7) != id {
		t.Error("StatusID is not deterministic")
	}
	// Pinned: after an upgrade a redelivered cause must still derive the id already
	// published, or JetStream would not drop the duplicate. The value is
	// sha256("status\x00urn:desk\x00e-1\x00a-1\x007")[:16] in hex.
	if id != "388f21a1e9edd2a13e0e8584678c885a" {
		t.Errorf("StatusID = %s; the derivation changed", id)
	}
	others := map[string]string{
		"version": StatusID(c, "a-1", 8),
		"agent":   StatusID(c, "a-2", 7),
		"id":      StatusID(Cause{ID: "e-2", Source: c.Source}, "a-1", 7),
		"source":  StatusID(Cause{ID: c.ID, Source: "urn:other"}, "a-1", 7),
		"shifted": StatusID(Cause{ID: "e-1urn:desk", Source: ""}, "a-1", 7),
		"split":   StatusID(Cause{ID: "e-1", Source: "urn:desk"}, "a-17", 0),
	}
	for name, o := range others {
		if o == id {
			t.Errorf("different %s gives the same id", name)
		}
	}
}

func TestRejectedID(t *testing.T) {
	if got := RejectedID("PRESENCE_IN", 18446744073709551615); got != "PRESENCE_IN-18446744073709551615" {
		t.Errorf("RejectedID = %q", got)
	}
}

func TestExpiryCauseID(t *testing.T) {
	d := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	id := ExpiryCauseID("a-1", "s1", d)
	if !hex32.MatchString(id) {
		t.Fatalf("ExpiryCauseID = %q", id)
	}
	// Pinned for the same reason as StatusID: replicas of different versions must agree.
	if id != "b0934f4a658d48cbe83f59dbda0c1244" {
		t.Errorf("ExpiryCauseID = %s; the derivation changed", id)
	}
	if ExpiryCauseID("a-1", "s1", d.In(time.FixedZone("x", 3600))) != id {
		t.Error("the same instant in another zone gives another id")
	}
	for name, o := range map[string]string{
		"deadline": ExpiryCauseID("a-1", "s1", d.Add(time.Nanosecond)),
		"session":  ExpiryCauseID("a-1", "s2", d),
		"agent":    ExpiryCauseID("a-2", "s1", d),
	} {
		if o == id {
			t.Errorf("different %s gives the same id", name)
		}
	}
}
