package events

import (
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Work items and offers between the reference router and agent clients. They
// are not part of contract v1 (the worker never reads them); they extend §8 so
// that cmd/router, the simulator and any agent client speak one format.
const (
	// WorkSubmitted asks a router to find an agent for a work item
	// (<prefix>.routing.work.<workstreamId>, JetStream).
	WorkSubmitted Type = "work.submitted"
	// WorkOffered offers a work item to one agent (request/reply on
	// <prefix>.routing.offer.<agentId>); the reply is an OfferReply.
	WorkOffered Type = "work.offered"
	// WorkCompleted tells the router an agent finished a work item
	// (<prefix>.routing.done.<agentId>, JetStream).
	WorkCompleted Type = "work.completed"
)

// RoutingTypes lists the types of the routing side (§8 and its extension).
func RoutingTypes() []Type {
	return []Type{WorkstreamConfigured, WorkstreamRemoved, WorkSubmitted, WorkOffered, WorkCompleted}
}

// WorkItem is the data of work.submitted. Units is the capacity it takes (default 1).
type WorkItem struct {
	ID           string `json:"id"`
	WorkstreamID string `json:"workstreamId"`
	Units        int    `json:"units,omitempty"`
}

// Offer is the data of work.offered. AgentVersion is the version of the
// agent's status the router judged it eligible by, so anyone can check the
// decision against the status stream.
type Offer struct {
	WorkItemID   string `json:"workItemId"`
	WorkstreamID string `json:"workstreamId"`
	Units        int    `json:"units"`
	AgentVersion uint64 `json:"agentVersion"`
	TimeoutMs    int64  `json:"timeoutMs"`
}

// OfferReply is an agent client's answer to an offer; no answer within the
// offer's timeout counts as a missed notification.
type OfferReply struct {
	Accept bool `json:"accept"`
}

// WorkCompletedData is the data of work.completed.
type WorkCompletedData struct {
	WorkItemID string `json:"workItemId"`
}

// WorkSubject is where work for a workstream is submitted.
func (s Subjects) WorkSubject(workstreamID string) string {
	return s.prefix() + ".routing.work." + workstreamID
}

// OfferSubject is where an agent client listens for offers.
func (s Subjects) OfferSubject(agentID string) string {
	return s.prefix() + ".routing.offer." + agentID
}

// DoneSubject is where an agent client reports finished work.
func (s Subjects) DoneSubject(agentID string) string {
	return s.prefix() + ".routing.done." + agentID
}

// NewRoutingEvent builds a binary-mode CloudEvent of a routing type on subject.
func NewRoutingEvent(subject string, typ Type, id, source string, data any) (*nats.Msg, error) {
	if id == "" || source == "" {
		return nil, fmt.Errorf("new %s: id and source are required", typ)
	}
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	m := nats.NewMsg(subject)
	m.Header.Set(hdrSpecVersion, specVersion)
	m.Header.Set("ce-id", id)
	m.Header.Set("ce-source", source)
	m.Header.Set("ce-type", string(typ))
	m.Header.Set("content-type", "application/json")
	m.Header.Set("Nats-Msg-Id", id)
	m.Data = b
	return m, nil
}

// DecodeRouting reads a routing event of type want (either binding mode) into v
// and returns its id.
func DecodeRouting(header map[string][]string, data []byte, want Type, v any) (string, *Rejection) {
	ce, rej := parseCloudEvent(header, data)
	if rej != nil {
		return "", rej
	}
	if Type(ce.typ) != want {
		return "", Reject(CodeUnsupportedType, fmt.Sprintf("%q where %s was expected", ce.typ, want))
	}
	if err := json.Unmarshal(ce.data, v); err != nil {
		return "", Reject(CodeInvalidData, fmt.Sprintf("%s data: %s", want, err))
	}
	return ce.id, nil
}

// Validate checks a submitted work item against the workstream token of its subject.
func (w *WorkItem) Validate(workstreamID string) *Rejection {
	if !ValidWorkstreamID(w.ID) {
		return Reject(CodeInvalidData, fmt.Sprintf("work item id %q: use 1-128 of A-Z a-z 0-9 _ -", w.ID))
	}
	if w.WorkstreamID == "" {
		w.WorkstreamID = workstreamID
	}
	if w.WorkstreamID != workstreamID {
		return Reject(CodeInvalidData, fmt.Sprintf("workstreamId %q differs from its subject token %q", w.WorkstreamID, workstreamID))
	}
	if w.Units == 0 {
		w.Units = 1
	}
	if w.Units < 0 {
		return Reject(CodeInvalidData, "units must be at least 1")
	}
	return nil
}
