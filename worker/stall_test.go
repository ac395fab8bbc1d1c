package worker

import (
	"testing"
	"time"
)

func TestStallVerdict(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)
	after := 15 * time.Second
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	lost := stallCheck{delivered: 7, received: 6} // delivered one the partition never received
	waiting := stallCheck{pending: 3, delivered: 6, received: 6}
	with := func(c stallCheck, now, since, lastBatch time.Time) stallCheck {
		c.now, c.since, c.lastBatch = now, since, lastBatch
		return c
	}
	for _, tc := range []struct {
		name      string
		c         stallCheck
		wantSince time.Time
		want      bool
	}{
		{"idle, nothing held", with(stallCheck{delivered: 6, received: 6}, at(100), time.Time{}, at(0)), time.Time{}, false},
		{"first sight, idle for long: the clock starts now", with(lost, at(100), time.Time{}, at(0)), at(100), false},
		{"held for less than the limit", with(lost, at(110), at(100), at(0)), at(100), false},
		{"held for the limit since first seen", with(lost, at(115), at(100), at(0)), at(100), true},
		{"inputs waiting, none delivered", with(waiting, at(120), at(100), at(0)), at(100), true},
		{"a batch handled since first seen: the clock starts again", with(lost, at(120), at(100), at(105)), at(120), false},
		{"some waiting in the partition's channel", with(stallCheck{pending: 3, buffered: 2}, at(120), at(100), at(0)), time.Time{}, false},
		{"paused by an operator", with(stallCheck{pending: 3, paused: true}, at(120), at(100), at(0)), time.Time{}, false},
		{"only an ack that did not land", with(stallCheck{delivered: 6, received: 6}, at(120), at(100), at(0)), time.Time{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			since, stalled := stallVerdict(tc.c, after)
			if stalled != tc.want || !since.Equal(tc.wantSince) {
				t.Fatalf("stallVerdict = %v, %v; want %v, %v", since, stalled, tc.wantSince, tc.want)
			}
		})
	}
}
