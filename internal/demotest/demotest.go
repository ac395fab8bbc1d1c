// Package demotest checks the demo's story against a running topology, for the
// native demo's test and for the docker-compose topology run as processes.
package demotest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/events"
)

// Option adds to what CheckStory waits for.
type Option func(*story)

type story struct{ breaks int }

// ExpectBreaks makes CheckStory also wait, after ignorer went Inactive, until
// the other agents have taken n breaks between them, for a topology whose
// simulator gives them breaks often. Ignorer must sit every one of them out
// still Inactive: an agent who never answers is away from its desk and does
// not come back by itself.
func ExpectBreaks(n int) Option { return func(s *story) { s.breaks = n } }

// CheckStory watches a running demo through nc and asserts its story: ignorer
// is made Inactive by a missed offer, stays Inactive and is offered nothing
// after that while other agents keep getting work; every offer went to a
// signed-in agent whose status (the version the router judged by) the
// workstream allows, as configured in setupPath.
func CheckStory(t *testing.T, nc *nats.Conn, ignorer, setupPath string, opts ...Option) {
	t.Helper()
	var want story
	for _, o := range opts {
		o(&want)
	}
	allowed := workstreams(t, setupPath)
	v := newView()
	subj := events.Subjects{}
	sub, err := nc.Subscribe(subj.OfferSubject("*"), func(m *nats.Msg) {
		var o events.Offer
		if _, rej := events.DecodeRouting(m.Header, m.Data, events.WorkOffered, &o); rej != nil {
			t.Errorf("offer: %v", rej)
			return
		}
		v.offer(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], o)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	js, _ := jetstream.New(nc)
	cons := awaitStatusConsumer(t, js)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		st, err := events.DecodeStatus(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			t.Errorf("status: %v", err)
			return
		}
		v.status(st)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	inactive := v.await(t, ignorer+" made Inactive by a missed offer", func() (events.StatusChanged, bool) {
		st, ok := v.latest(ignorer)
		return st, ok && st.PresenceID == "inactive" && st.Cause.Type == events.NotificationMissed
	})
	v.mu.Lock()
	mark := v.offerCount()
	breaks := v.breaks(ignorer)
	v.mu.Unlock()
	v.await(t, "ten more offers", func() (events.StatusChanged, bool) {
		return events.StatusChanged{}, v.offerCount() >= mark+10
	})
	if want.breaks > 0 {
		v.await(t, fmt.Sprintf("%d breaks of the other agents after %s went Inactive", want.breaks, ignorer), func() (events.StatusChanged, bool) {
			return events.StatusChanged{}, v.breaks(ignorer) >= breaks+want.breaks
		})
	}
	v.await(t, "a work item accepted (capacity change)", func() (events.StatusChanged, bool) {
		return events.StatusChanged{}, v.any(func(st events.StatusChanged) bool { return st.Reason == events.Reason("capacity") })
	})

	v.mu.Lock()
	offers := slices.Clone(v.offers)
	after := slices.DeleteFunc(slices.Clone(v.statuses[ignorer]), func(st events.StatusChanged) bool { return st.Version <= inactive.Version })
	v.mu.Unlock()
	for _, st := range after {
		t.Errorf("%s left Inactive: version %d is %s (%s, by %s)", ignorer, st.Version, st.PresenceID, st.Reason, st.Actor)
	}
	for _, o := range offers {
		if o.agent == ignorer && o.AgentVersion >= inactive.Version {
			t.Errorf("%s was offered %s after it went Inactive (offer based on version %d, inactive at %d)", ignorer, o.WorkItemID, o.AgentVersion, inactive.Version)
		}
		st := v.await(t, fmt.Sprintf("status %d of %s", o.AgentVersion, o.agent), func() (events.StatusChanged, bool) {
			return v.version(o.agent, o.AgentVersion)
		})
		if !slices.Contains(allowed[o.WorkstreamID], st.BaseStatus) || !st.SignedIn {
			t.Errorf("%s offered %s of %s while %s (signed in %v)", o.agent, o.WorkItemID, o.WorkstreamID, st.BaseStatus, st.SignedIn)
		}
	}
	t.Logf("%d offers checked; %s inactive at version %d", len(offers), ignorer, inactive.Version)
}

func workstreams(t *testing.T, path string) map[string][]events.BaseStatus {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Workstreams []events.Workstream `json:"workstreams"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	out := map[string][]events.BaseStatus{}
	for _, w := range s.Workstreams {
		out[w.ID] = w.AllowedBaseStatuses
	}
	return out
}

// awaitStatusConsumer reads the status stream from its start once the workers created it.
func awaitStatusConsumer(t *testing.T, js jetstream.JetStream) jetstream.Consumer {
	deadline := time.Now().Add(60 * time.Second)
	for {
		cons, err := js.OrderedConsumer(context.Background(), "PRESENCE_STATUS", jetstream.OrderedConsumerConfig{})
		if err == nil {
			return cons
		}
		if time.Now().After(deadline) {
			t.Fatalf("status stream never appeared: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // the workers create the stream at start
	}
}

type offer struct {
	agent string
	events.Offer
}

// view is what the test has seen: every status and every offer.
type view struct {
	mu       sync.Mutex
	changed  chan struct{}
	statuses map[string][]events.StatusChanged
	offers   []offer
}

func newView() *view {
	return &view{changed: make(chan struct{}), statuses: map[string][]events.StatusChanged{}}
}

func (v *view) notify() { close(v.changed); v.changed = make(chan struct{}) }

func (v *view) status(st events.StatusChanged) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.statuses[st.AgentID] = append(v.statuses[st.AgentID], st)
	v.notify()
}

func (v *view) offer(agent string, o events.Offer) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.offers = append(v.offers, offer{agent, o})
	v.notify()
}

// The readers below are called by await with v.mu held.

func (v *view) latest(agent string) (events.StatusChanged, bool) {
	h := v.statuses[agent]
	if len(h) == 0 {
		return events.StatusChanged{}, false
	}
	return h[len(h)-1], true
}

func (v *view) version(agent string, version uint64) (events.StatusChanged, bool) {
	for _, st := range v.statuses[agent] {
		if st.Version == version {
			return st, true
		}
	}
	return events.StatusChanged{}, false
}

func (v *view) offerCount() int { return len(v.offers) }

// breaks counts the times agents other than except went away by their own choice.
func (v *view) breaks(except string) int {
	n := 0
	for agent, h := range v.statuses {
		if agent == except {
			continue
		}
		for _, st := range h {
			if st.BaseStatus == events.Away && st.Reason == events.ReasonManual {
				n++
			}
		}
	}
	return n
}

func (v *view) any(f func(events.StatusChanged) bool) bool {
	for _, h := range v.statuses {
		if slices.ContainsFunc(h, f) {
			return true
		}
	}
	return false
}

func (v *view) await(t *testing.T, what string, cond func() (events.StatusChanged, bool)) events.StatusChanged {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		v.mu.Lock()
		st, ok := cond()
		ch := v.changed
		v.mu.Unlock()
		if ok {
			return st
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
