package worker

import (
	"testing"
	"time"
)

func TestLeaseIndexMoves(t *testing.T) {
	now := time.Date(2026, 12, 8, 9, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return now.Add(time.Duration(s) * time.Second) }
	none := time.Time{}
	for _, c := range []struct {
		name          string
		indexed, next time.Time
		want          bool
	}{
		{"no lease, none to index", none, none, false},
		{"a first lease", none, at(90), true},
		{"the lease ends", at(90), none, true},
		{"unchanged", at(90), at(90), false},
		{"earlier: a later entry would end the session late", at(90), at(60), true},
		{"a heartbeat soon after: the entry stays ahead of halfway", at(88), at(90), false},
		{"the entry exactly at halfway stays", at(45), at(90), false},
		{"the entry behind halfway moves", at(44), at(90), true},
		{"the entry already due moves", at(-1), at(90), true},
		{"both past (a replay): the entry behind the later moves", at(-100), at(-10), true},
	} {
		if got := leaseIndexMoves(c.indexed, c.next, now); got != c.want {
			t.Errorf("%s: leaseIndexMoves(%v, %v) = %v, want %v", c.name, c.indexed, c.next, got, c.want)
		}
	}
}
