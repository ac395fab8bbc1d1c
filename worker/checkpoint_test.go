package worker

import (
	"testing"
	"time"

	"github.com/presenced/presenced/state"
)

func TestSavedPrefix(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	seen := func(key string, s int) state.Seen {
		return state.Seen{Key: state.DedupeKey("src", key), At: t0.Add(time.Duration(s) * time.Second)}
	}
	a, b, c, d := seen("a", 1), seen("b", 2), seen("c", 3), seen("d", 4)
	for _, tc := range []struct {
		name       string
		now, saved []state.Seen
		want       int
	}{
		{"nothing saved", []state.Seen{a, b}, nil, 0},
		{"all saved, none since", []state.Seen{a, b}, []state.Seen{a, b}, 2},
		{"newer entries since", []state.Seen{a, b, c, d}, []state.Seen{a, b}, 2},
		{"the front left the window since", []state.Seen{b, c, d}, []state.Seen{a, b}, 1},
		{"every saved one left the window", []state.Seen{c, d}, []state.Seen{a, b}, 0},
		{"same key, a later time, is a new entry", []state.Seen{a, seen("a", 9)}, []state.Seen{seen("a", 9)}, 2},
		{"same key, the saved time gone", []state.Seen{seen("a", 9)}, []state.Seen{a}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := savedPrefix(tc.now, tc.saved); got != tc.want {
				t.Fatalf("savedPrefix = %d, want %d", got, tc.want)
			}
		})
	}
}
