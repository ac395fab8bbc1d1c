package events

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// Routing-side types (contract §8): workstreams are routing configuration that
// routers read; the worker never does.
const (
	WorkstreamConfigured Type = "workstream.configured"
	WorkstreamRemoved    Type = "workstream.removed"
)

// Workstream is the data of workstream.configured: which base statuses may take
// its work.
type Workstream struct {
	ID                  string       `json:"id"`
	Name                string       `json:"name"`
	AllowedBaseStatuses []BaseStatus `json:"allowedBaseStatuses"`
}

// WorkstreamSubject is where a workstream is configured or removed.
func (s Subjects) WorkstreamSubject(id string) string {
	return s.prefix() + ".routing.workstream." + id
}

// Eligible is the request/reply subject listing the agents that may take a
// workstream's work.
func (s Subjects) Eligible(id string) string { return s.prefix() + ".routing.eligible." + id }

// DecodeWorkstream reads a workstream event (either binding mode) from the
// workstream subject of id. A removal returns removed true.
func DecodeWorkstream(header map[string][]string, data []byte, id string) (ws Workstream, removed bool, rej *Rejection) {
	ce, rej := parseCloudEvent(header, data)
	if rej != nil {
		return ws, false, rej
	}
	switch Type(ce.typ) {
	case WorkstreamRemoved:
		return Workstream{ID: id}, true, nil
	case WorkstreamConfigured:
	default:
		return ws, false, Reject(CodeUnsupportedType, fmt.Sprintf("%q is not a workstream event", ce.typ))
	}
	if err := json.Unmarshal(ce.data, &ws); err != nil {
		return ws, false, Reject(CodeInvalidData, "workstream.configured data: "+err.Error())
	}
	if ws.ID != id {
		return ws, false, Reject(CodeInvalidData, fmt.Sprintf("workstream id %q differs from its subject token %q", ws.ID, id))
	}
	if len(ws.AllowedBaseStatuses) == 0 {
		return ws, false, Reject(CodeInvalidData, "allowedBaseStatuses must list at least one of available, busy, busy_dnd, away, offline")
	}
	for _, b := range ws.AllowedBaseStatuses {
		if !b.Valid() {
			return ws, false, Reject(CodeInvalidData, fmt.Sprintf("allowedBaseStatuses: %q is not one of available, busy, busy_dnd, away, offline", b))
		}
	}
	return ws, false, nil
}

// ValidWorkstreamID reports whether id can be a workstream subject token: the
// same characters as an agent id.
func ValidWorkstreamID(id string) bool { return ValidAgentID(id) && !strings.ContainsAny(id, ".*>") }

// NewWorkstreamEvent builds a binary-mode workstream.configured (or, with
// typ WorkstreamRemoved, a removal of ws.ID) for admin tools.
func NewWorkstreamEvent(s Subjects, typ Type, ws Workstream, id, source string) (*nats.Msg, error) {
	if typ != WorkstreamConfigured && typ != WorkstreamRemoved {
		return nil, fmt.Errorf("%s is not a workstream event", typ)
	}
	if !ValidWorkstreamID(ws.ID) {
		return nil, fmt.Errorf("workstream id %q: use 1-128 of A-Z a-z 0-9 _ -", ws.ID)
	}
	var data any = ws
	if typ == WorkstreamRemoved {
		data = map[string]string{"id": ws.ID}
	}
	return NewRoutingEvent(s.WorkstreamSubject(ws.ID), typ, id, source, data)
}
