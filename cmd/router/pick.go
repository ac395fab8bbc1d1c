package main

import (
	"time"

	"github.com/presenced/presenced/router"
)

// load is the work a router has assigned to one agent: the capacity it
// announces for that agent is {used: sum of Items, total: Total}.
type load struct {
	Total int            `json:"total"`
	Items map[string]int `json:"items"` // work item id → units
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

// pick chooses who gets an offer for a work item of the given units: the first
// candidate (candidates come longest in their presence first) with room left that
// is neither held nor has already been offered this item.
func pick(cands []router.Agent, loads map[string]load, defaultTotal, units int, holds map[string]hold,
	tried map[string]bool, now time.Time) (router.Agent, bool) {
	for _, a := range cands {
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
