package main

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/presenced/presenced/router"
)

// load is the work a router has assigned to one agent: the capacity it
// announces for that agent is {used: sum of Items, total: Total}.
type load struct {
	Total int            `json:"total"`
	Items map[string]int `json:"items"` // work item id → units
	// LastWork is when this router last assigned the agent an item or saw it
	// finish one; it is kept in the bucket so a restart does not forget it.
	LastWork time.Time `json:"lastWork,omitzero"`
}

func (l load) used() int {
	n := 0
	for _, u := range l.Items {
		n += u
	}
	return n
}

// hold keeps an agent out of offers: while an offer to it is open, and for a
// while after it missed or declined one (its status may not show it yet).
type hold struct {
	offering bool
	until    time.Time
}

// idleSince is when the agent's idle time began, which "longest idle first"
// measures: the later of when it last had work (assigned or finished, as this
// router recorded in load.LastWork) and when its current presence began
// (Agent.Since: signing in, coming back from a break or from Inactive, or a
// move by capacity). So an agent just back from a break queues behind one who
// has waited for work meanwhile, and an agent given work without its presence
// changing (capacity left, or a presence capacity does not move) counts from
// that work, not from its older presence. Since is the worker's stored time and
// LastWork the router's clock: they are compared as they are.
func idleSince(a router.Agent, l load) time.Time {
	if l.LastWork.After(a.Since) {
		return l.LastWork
	}
	return a.Since
}

// pick chooses who gets an offer for a work item of the given units: the
// longest idle candidate (earliest idleSince, ties by agent id) with room left
// that is neither held nor has already been offered this item. The candidates'
// own order (longest in their presence first) is not what routing wants, so
// pick does not rely on it.
func pick(cands []router.Agent, loads map[string]load, defaultTotal, units int, holds map[string]hold,
	tried map[string]bool, now time.Time) (router.Agent, bool) {
	order := slices.Clone(cands)
	slices.SortFunc(order, func(a, b router.Agent) int {
		return cmp.Or(idleSince(a, loads[a.AgentID]).Compare(idleSince(b, loads[b.AgentID])), strings.Compare(a.AgentID, b.AgentID))
	})
	for _, a := range order {
		if tried[a.AgentID] {
			continue
		}
		if h, ok := holds[a.AgentID]; ok && (h.offering || now.Before(h.until)) {
			continue
		}
		l, ok := loads[a.AgentID]
		total := defaultTotal
		if ok {
			total = l.Total
		}
		if l.used()+units > total {
			continue
		}
		return a, true
	}
	return router.Agent{}, false
}
