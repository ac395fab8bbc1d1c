package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/presenced/presenced/events"
)

// setup is a whole configuration in one file, for bootstrapping an
// organisation (or a demo) with `presencectl apply FILE`.
type setup struct {
	Presences   []json.RawMessage   `json:"presences"`
	Settings    json.RawMessage     `json:"settings"`
	Agents      []json.RawMessage   `json:"agents"`
	Workstreams []events.Workstream `json:"workstreams"`
}

// apply publishes a setup in dependency order: presences before the settings
// and agent defaults that may name them. Every event is checked before any is
// published, so a mistake in the file publishes nothing.
func (c *cli) apply(ctx context.Context, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	var s setup
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return fmt.Errorf("apply %s: %w (expected {\"presences\":[…], \"settings\":{…}, \"agents\":[…], \"workstreams\":[…]})", path, err)
	}
	type step struct {
		typ  events.Type
		data json.RawMessage
	}
	var steps []step
	for _, p := range s.Presences {
		steps = append(steps, step{events.PresenceConfigured, p})
	}
	if len(s.Settings) > 0 && string(s.Settings) != "null" {
		steps = append(steps, step{events.SettingsConfigured, s.Settings})
	}
	for _, a := range s.Agents {
		steps = append(steps, step{events.AgentConfigured, a})
	}
	for i, st := range steps {
		if _, err := c.build(st.typ, "", st.data); err != nil {
			return fmt.Errorf("apply %s, %s #%d: %w", path, st.typ, i+1, err)
		}
	}
	for _, ws := range s.Workstreams {
		m, err := events.NewWorkstreamEvent(c.subj, events.WorkstreamConfigured, ws, "check", "presencectl")
		if err != nil {
			return fmt.Errorf("apply %s, workstream %q: %w", path, ws.ID, err)
		}
		if _, _, rej := events.DecodeWorkstream(m.Header, m.Data, ws.ID); rej != nil {
			return fmt.Errorf("apply %s, workstream %q: %s", path, ws.ID, rej.Message)
		}
	}
	for _, st := range steps {
		if err := c.send(ctx, st.typ, "", st.data); err != nil {
			return err
		}
	}
	for _, ws := range s.Workstreams {
		if err := c.publishWorkstream(ctx, events.WorkstreamConfigured, ws); err != nil {
			return err
		}
	}
	return nil
}
