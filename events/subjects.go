package events

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the subject prefix used when Subjects.Prefix is empty, so the zero
// Subjects value is the contract's default deployment.
const DefaultPrefix = "presence"

// Subjects names the NATS subjects of one deployment. Prefix may contain dots
// ("acme.presence") so several organisations can share a cluster by prefix.
type Subjects struct{ Prefix string }

func (s Subjects) prefix() string {
	if s.Prefix == "" {
		return DefaultPrefix
	}
	return s.Prefix
}

// AgentIn is where agent clients publish for agent id.
func (s Subjects) AgentIn(id string) string { return s.prefix() + ".in.agent." + id }

// RouterIn is where routers publish for agent id.
func (s Subjects) RouterIn(id string) string { return s.prefix() + ".in.router." + id }

// SystemIn is where the worker publishes its own session.expired events. It is an
// extension of contract v1: a subject of its own lets NATS permissions keep producers
// from forging expiries.
func (s Subjects) SystemIn(id string) string { return s.prefix() + ".in.system." + id }

// Config is where admins publish configuration events.
func (s Subjects) Config() string { return s.prefix() + ".in.config" }

// Status is where agent.status.changed for agent id is published.
func (s Subjects) Status(id string) string { return s.prefix() + ".status." + id }

// Rejected is where event.rejected dead letters are published.
func (s Subjects) Rejected() string { return s.prefix() + ".rejected" }

// QueryAgent answers requests for the current status of agent id.
func (s Subjects) QueryAgent(id string) string { return s.prefix() + ".query.agent." + id }

// QueryPresences answers requests for every presence.
func (s Subjects) QueryPresences() string { return s.prefix() + ".query.presences" }

// InputWildcard matches every input subject, for the input stream's configuration.
func (s Subjects) InputWildcard() string { return s.prefix() + ".in.>" }

// StatusWildcard matches every status subject, for the status stream's configuration
// and for routers rebuilding the full picture.
func (s Subjects) StatusWildcard() string { return s.prefix() + ".status.*" }

// ParseInput splits a logical input subject into the role of its publishers and,
// for agent-scoped subjects, the agent id token. It does not validate the token:
// Decode reports a bad agent id as invalid_data, a different code from a subject
// that is not an input subject at all.
func (s Subjects) ParseInput(subject string) (role Role, agentID string, err error) {
	p := s.prefix()
	if !strings.HasPrefix(subject, p) || !strings.HasPrefix(subject[len(p):], ".in.") {
		return "", "", fmt.Errorf("subject %q does not start with %q", subject, p+".in.")
	}
	rest := subject[len(p)+len(".in."):]
	if rest == "config" {
		return RoleConfig, "", nil
	}
	kind, id, ok := strings.Cut(rest, ".")
	if !ok {
		return "", "", fmt.Errorf("subject %q has no agent id token", subject)
	}
	switch Role(kind) {
	case RoleAgent, RoleRouter, RoleSystem:
	default:
		return "", "", fmt.Errorf("subject %q: %q is not an input role (agent, router, system or config)", subject, kind)
	}
	if id == "" || strings.IndexByte(id, '.') >= 0 {
		return "", "", fmt.Errorf("subject %q must end in exactly one agent id token", subject)
	}
	return Role(kind), id, nil
}

// ValidAgentID reports whether id is 1 to 128 characters from A-Z a-z 0-9 _ -, which
// keeps it safe as a NATS subject token and inside a Redis key.
func ValidAgentID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// ValidPresenceID reports whether id is 1 to 64 characters from a-z 0-9 _ -.
func ValidPresenceID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// ValidSessionID reports whether id is 1 to 128 characters from A-Z a-z 0-9 _ - . :,
// wide enough for client-generated ids such as "desktop:tab-3" or "ios.1".
func ValidSessionID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '_' && c != '-' && c != '.' && c != ':' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}
