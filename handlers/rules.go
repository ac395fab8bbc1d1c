package handlers

import (
	"fmt"
	"sort"
	"time"

	"github.com/presenced/presenced/events"
)

// Rules applies the contract's presence rules. It is a value with no I/O: every
// method is a pure function of its arguments.
type Rules struct {
	// Source is the worker's CloudEvents source, used for the causes of changes the
	// worker makes itself (session expiry).
	Source string
}

// change is one status transition being built for an agent.
type change struct {
	presence events.Presence
	signedIn bool
	at       time.Time
	reason   events.Reason
	actor    string
	cause    events.Cause
	trace    string
}

// transition moves a to c's presence and returns the status change it publishes,
// or false when nothing an observer can see changed. (By value: a pointer to
// signal "none" would put every change on the heap once more.)
func transition(a *Agent, c change) (events.StatusChanged, bool) {
	p := c.presence
	same := a.PresenceID == p.ID && a.BaseStatus == p.BaseStatus && a.SignedIn == c.signedIn
	if same && a.Name == p.Name && a.Text == p.Text {
		return events.StatusChanged{}, false
	}
	var prev *events.Previous
	if a.HasStatus() {
		prev = &events.Previous{PresenceID: a.PresenceID, BaseStatus: a.BaseStatus, Since: a.Since}
	}
	// since marks when this presence began: a rename keeps it.
	if !same || a.Since.IsZero() {
		a.Since = c.at
	}
	a.PresenceID, a.Name, a.Text, a.BaseStatus, a.SignedIn = p.ID, p.Name, p.Text, p.BaseStatus, c.signedIn
	a.Version++
	a.Reason, a.Actor = c.reason, c.actor
	st := a.Status()
	st.Reason, st.Actor, st.Previous, st.Cause, st.TraceParent = c.reason, c.actor, prev, c.cause, c.trace
	return st, true
}

func causeOf(ev events.Event) events.Cause {
	return events.Cause{ID: ev.ID, Source: ev.Source, Type: ev.Type}
}

func offline() events.Presence { return events.BuiltinOf(events.Offline) }

// expire ends every session whose lease ran out at or before now, in deadline
// order, as if it had logged out, except that the presence is held for the
// reconnect grace window. It returns the status change of the last session ending.
func (r Rules) expire(a *Agent, now time.Time) []events.StatusChanged {
	var out []events.StatusChanged
	for {
		i := -1
		for j, s := range a.Sessions {
			if !s.Deadline.IsZero() && !s.Deadline.After(now) && (i < 0 || s.Deadline.Before(a.Sessions[i].Deadline)) {
				i = j
			}
		}
		if i < 0 {
			return out
		}
		out = append(out, r.endByExpiry(a, i)...)
	}
}

// endByExpiry ends session i because its lease ran out.
func (r Rules) endByExpiry(a *Agent, i int) []events.StatusChanged {
	s := a.Sessions[i]
	a.Sessions = append(a.Sessions[:i:i], a.Sessions[i+1:]...)
	if len(a.Sessions) > 0 || !a.SignedIn {
		return nil
	}
	a.Held = &Held{PresenceID: a.PresenceID, BaseStatus: a.BaseStatus, Origin: a.Origin, ExpiredAt: s.Deadline}
	a.Origin = OriginSystem
	cause := events.Cause{ID: events.ExpiryCauseID(a.ID, s.ID, s.Deadline), Source: r.Source, Type: events.SessionExpired}
	st, ok := transition(a, change{presence: offline(), at: s.Deadline, reason: events.ReasonSessionExpired, actor: events.RoleSystem.Actor(), cause: cause})
	if !ok {
		return nil
	}
	return []events.StatusChanged{st}
}

func (a *Agent) session(id string) int {
	for i, s := range a.Sessions {
		if s.ID == id {
			return i
		}
	}
	return -1
}

func (a *Agent) putSession(s Session) {
	if i := a.session(s.ID); i >= 0 {
		a.Sessions[i] = s
		return
	}
	a.Sessions = append(a.Sessions, s)
	sort.Slice(a.Sessions, func(i, j int) bool { return a.Sessions[i].ID < a.Sessions[j].ID })
}

func leaseDeadline(cfg Config, at time.Time) time.Time {
	if cfg.Settings.SessionTTL <= 0 {
		return time.Time{}
	}
	return at.Add(cfg.Settings.SessionTTL)
}

// defaultPresence is the presence an agent signs in to: its own default, else the
// organisation's, else available. A default that no longer exists or is no longer
// selectable is skipped.
func defaultPresence(cfg Config, a Agent) events.Presence {
	for _, id := range []string{a.DefaultPresenceID, cfg.Settings.DefaultPresenceID} {
		if id == "" {
			continue
		}
		if p, ok := cfg.Presence(id); ok && p.Selectable {
			return p
		}
	}
	return events.BuiltinOf(events.Available)
}

// automatic reports whether a presence follows capacity (contract §8).
func automatic(base events.BaseStatus, origin Origin) bool {
	return base == events.Available || base == events.Busy || (base == events.BusyDND && origin == OriginCapacity)
}

// CapacityStatus is the base status capacity calls for.
func CapacityStatus(c Capacity) events.BaseStatus {
	switch {
	case c.Used <= 0:
		return events.Available
	case c.Used < c.Total:
		return events.Busy
	}
	return events.BusyDND
}

// withCapacity applies the capacity rule to a presence about to be taken.
func withCapacity(p events.Presence, origin Origin, c *Capacity) (events.Presence, Origin) {
	if c == nil || !automatic(p.BaseStatus, origin) {
		return p, origin
	}
	if b := CapacityStatus(*c); b != p.BaseStatus {
		return events.BuiltinOf(b), OriginCapacity
	}
	return p, origin
}

// Apply applies an agent-scoped event (from an agent client, a router or the
// worker itself) to agent a. The agent's sessions whose lease ran out before the
// event was stored end first. A *events.Rejection error means the event is invalid
// and nothing changes.
func (r Rules) Apply(cfg Config, a Agent, ev events.Event) (Agent, []events.StatusChanged, error) {
	a = a.clone()
	a.ID = ev.AgentID
	now := ev.Stored
	out := r.expire(&a, now)
	base := change{at: now, actor: ev.Role.Actor(), cause: causeOf(ev), trace: ev.TraceParent}
	emit := func(c change) {
		if st, ok := transition(&a, c); ok {
			out = append(out, st)
		}
	}

	switch d := ev.Data.(type) {
	case events.SessionData:
		switch ev.Type {
		case events.AgentLogin:
			first := len(a.Sessions) == 0
			a.putSession(Session{ID: d.SessionID, Deadline: leaseDeadline(cfg, now)})
			if !first {
				break
			}
			c := base
			c.signedIn = true
			if h := a.Held; h != nil && !now.After(h.ExpiredAt.Add(cfg.Settings.ReconnectGrace)) {
				p, ok := cfg.Presence(h.PresenceID)
				if !ok {
					p = events.BuiltinOf(h.BaseStatus)
				}
				c.presence, c.reason = p, events.ReasonReconnect
				a.Origin = h.Origin
			} else {
				c.presence, a.Origin = withCapacity(defaultPresence(cfg, a), OriginManual, a.Capacity)
				c.reason = events.ReasonLogin
			}
			a.Held = nil
			emit(c)
		case events.AgentLogout:
			i := a.session(d.SessionID)
			if i < 0 {
				break
			}
			a.Sessions = append(a.Sessions[:i:i], a.Sessions[i+1:]...)
			if len(a.Sessions) > 0 {
				break
			}
			a.Held, a.Origin = nil, OriginSystem
			c := base
			c.presence, c.reason = offline(), events.ReasonLogout
			emit(c)
		case events.AgentHeartbeat:
			if i := a.session(d.SessionID); i >= 0 {
				a.Sessions[i].Deadline = leaseDeadline(cfg, now)
			}
		default:
			return Agent{}, nil, events.Reject(events.CodeUnsupportedType, fmt.Sprintf("%s does not carry session data", ev.Type))
		}

	case events.PresenceSetData:
		p, ok := cfg.Presence(d.PresenceID)
		switch {
		case !ok:
			return Agent{}, nil, events.Reject(events.CodeUnknownPresence, fmt.Sprintf("presence %q does not exist; list presences on the presences query subject", d.PresenceID))
		case !p.Selectable:
			return Agent{}, nil, events.Reject(events.CodeNotSelectable, fmt.Sprintf("presence %q cannot be chosen by hand", d.PresenceID))
		case !a.SignedIn:
			return Agent{}, nil, events.Reject(events.CodeNotSignedIn, fmt.Sprintf("agent %q is not signed in; send agent.login first", a.ID))
		}
		a.Origin = OriginManual
		c := base
		c.presence, c.signedIn, c.reason = p, true, events.ReasonManual
		emit(c)

	case events.NotificationData:
		if !a.SignedIn || a.BaseStatus == events.Offline {
			break
		}
		c := base
		c.signedIn = true
		switch {
		case ev.Type == events.NotificationMissed && cfg.Settings.MissedNotification:
			if a.PresenceID == events.InactiveID {
				break
			}
			a.Origin = OriginSystem
			c.presence, _ = events.Builtin(events.InactiveID)
			c.reason = events.ReasonMissedNotification
			emit(c)
		case ev.Type == events.NotificationRejected && cfg.Settings.RejectedNotification:
			// Sticky from now on, even when the agent already showed busy_dnd.
			a.Origin = OriginRejected
			c.presence, c.reason = events.BuiltinOf(events.BusyDND), events.ReasonRejectedNotification
			emit(c)
		}

	case events.CapacityData:
		a.Capacity = &Capacity{Used: d.Used, Total: d.Total}
		if !a.SignedIn {
			break
		}
		cur, _ := cfg.Presence(a.PresenceID)
		if cur.ID == "" {
			cur = events.Presence{ID: a.PresenceID, Name: a.Name, Text: a.Text, BaseStatus: a.BaseStatus}
		}
		p, origin := withCapacity(cur, a.Origin, a.Capacity)
		if p.ID == cur.ID {
			break
		}
		a.Origin = origin
		c := base
		c.presence, c.signedIn, c.reason = p, true, events.ReasonCapacity
		emit(c)

	case events.SessionExpiredData:
		// The sweeper's event: end that session if its lease is still the one that
		// ran out (a heartbeat since then moved the deadline and makes this a no-op).
		if i := a.session(d.SessionID); i >= 0 && a.Sessions[i].Deadline.Equal(d.Deadline) {
			out = append(out, r.endByExpiry(&a, i)...)
		}

	default:
		return Agent{}, nil, events.Reject(events.CodeUnsupportedType, fmt.Sprintf("%s is not an agent event", ev.Type))
	}
	a.AppliedSeq = ev.Seq
	return a, out, nil
}

func (a Agent) clone() Agent {
	a.Sessions = append([]Session(nil), a.Sessions...)
	if a.Capacity != nil {
		c := *a.Capacity
		a.Capacity = &c
	}
	if a.Held != nil {
		h := *a.Held
		a.Held = &h
	}
	return a
}

// Clone returns a deep copy of the configuration.
func (c Config) Clone() Config {
	m := make(map[string]events.Presence, len(c.Custom))
	for k, v := range c.Custom {
		m[k] = v
	}
	c.Custom = m
	return c
}

func selectableDefault(cfg Config, id string) error {
	p, ok := cfg.Presence(id)
	if !ok {
		return events.Reject(events.CodeUnknownPresence, fmt.Sprintf("default presence %q does not exist; configure it first", id))
	}
	if !p.Selectable {
		return events.Reject(events.CodeNotSelectable, fmt.Sprintf("presence %q is not selectable, so it cannot be a default", id))
	}
	return nil
}

// Configure applies a configuration event to the organisation configuration.
// Events about one agent (agent.configured, agent.removed) are validated here and
// applied to the agent by Reconfigure.
func (r Rules) Configure(cfg Config, ev events.Event) (Config, error) {
	cfg = cfg.Clone()
	switch d := ev.Data.(type) {
	case events.PresenceConfiguredData:
		if _, ok := events.Builtin(d.ID); ok {
			return cfg, events.Reject(events.CodeBuiltinImmutable, fmt.Sprintf("presence %q is built in and cannot be changed", d.ID))
		}
		cfg.Custom[d.ID] = events.Presence{ID: d.ID, Name: d.Name, Text: d.Text, BaseStatus: d.BaseStatus, Description: d.Description, Selectable: d.Selectable}
	case events.PresenceRemovedData:
		if _, ok := events.Builtin(d.ID); ok {
			return cfg, events.Reject(events.CodeBuiltinImmutable, fmt.Sprintf("presence %q is built in and cannot be removed", d.ID))
		}
		if _, ok := cfg.Custom[d.ID]; !ok {
			return cfg, events.Reject(events.CodeUnknownPresence, fmt.Sprintf("presence %q does not exist", d.ID))
		}
		delete(cfg.Custom, d.ID)
		if cfg.Settings.DefaultPresenceID == d.ID {
			cfg.Settings.DefaultPresenceID = ""
		}
	case events.AgentConfiguredData:
		if d.DefaultPresenceID != nil {
			if err := selectableDefault(cfg, *d.DefaultPresenceID); err != nil {
				return cfg, err
			}
		}
	case events.AgentRemovedData:
	case events.SettingsConfiguredData:
		s, def := cfg.Settings, DefaultSettings()
		if o := d.DefaultPresenceID; o.Present {
			if o.Null {
				s.DefaultPresenceID = def.DefaultPresenceID
			} else if err := selectableDefault(cfg, o.Value); err != nil {
				return cfg, err
			} else {
				s.DefaultPresenceID = o.Value
			}
		}
		setOpt(&s.MissedNotification, d.MissedNotification, def.MissedNotification, func(v bool) bool { return v })
		setOpt(&s.RejectedNotification, d.RejectedNotification, def.RejectedNotification, func(v bool) bool { return v })
		secs := func(v int) time.Duration { return time.Duration(v) * time.Second }
		setOpt(&s.SessionTTL, d.SessionTTLSeconds, def.SessionTTL, secs)
		setOpt(&s.ReconnectGrace, d.ReconnectGraceSeconds, def.ReconnectGrace, secs)
		cfg.Settings = s
	default:
		return cfg, events.Reject(events.CodeUnsupportedType, fmt.Sprintf("%s is not a configuration event", ev.Type))
	}
	cfg.Seq = ev.Seq
	return cfg, nil
}

func setOpt[T, V any](dst *V, o events.Optional[T], def V, conv func(T) V) {
	switch {
	case !o.Present:
	case o.Null:
		*dst = def
	default:
		*dst = conv(o.Value)
	}
}

// Reconfigure applies what an accepted configuration event means for one agent,
// given the configuration before and after it: agents in an edited presence see
// the edit, agents in a removed one move to the built-in of its base status, a
// removed default is cleared, and agent.configured / agent.removed act on the
// agent they name.
func (r Rules) Reconfigure(before, after Config, a Agent, ev events.Event) (Agent, []events.StatusChanged) {
	a = a.clone()
	if a.ID == "" {
		a.ID = ev.AgentID
	}
	out := r.expire(&a, ev.Stored)
	base := change{at: ev.Stored, actor: ev.Role.Actor(), cause: causeOf(ev), trace: ev.TraceParent, signedIn: a.SignedIn}
	emit := func(c change) {
		if st, ok := transition(&a, c); ok {
			out = append(out, st)
		}
	}
	switch d := ev.Data.(type) {
	case events.PresenceConfiguredData:
		if p, ok := after.Custom[d.ID]; ok && a.PresenceID == d.ID {
			c := base
			c.presence, c.reason = p, events.ReasonPresenceUpdated
			emit(c)
		}
	case events.PresenceRemovedData:
		if a.DefaultPresenceID == d.ID {
			a.DefaultPresenceID = ""
		}
		if old, ok := before.Custom[d.ID]; ok && a.PresenceID == d.ID {
			c := base
			c.presence, c.reason = events.BuiltinOf(old.BaseStatus), events.ReasonPresenceRemoved
			emit(c)
		}
	case events.AgentConfiguredData:
		if d.AgentID == a.ID {
			a.DefaultPresenceID = ""
			if d.DefaultPresenceID != nil {
				a.DefaultPresenceID = *d.DefaultPresenceID
			}
		}
	case events.AgentRemovedData:
		if d.AgentID == a.ID {
			c := base
			c.presence, c.signedIn, c.reason = offline(), false, events.ReasonAgentRemoved
			// A removal always publishes, even for an agent already shown offline:
			// forgetting the name forces the final status out.
			a.Name = ""
			emit(c)
			a = Agent{ID: a.ID, Version: a.Version}
		}
	}
	a.AppliedSeq = ev.Seq
	return a, out
}
