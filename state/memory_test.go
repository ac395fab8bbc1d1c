package state_test

import (
	"testing"

	"github.com/presenced/presenced/state"
)

func TestMemoryStore(t *testing.T) {
	t.Parallel()
	runStoreSuite(t, func(t *testing.T) state.Store { return state.NewMemory() })
}
