package state

import (
	"context"
	"sync"
)

// Memory is an in-memory Store for tests. It round-trips the state through
// JSON on every call, as the ConfigMap store does, so a test sees exactly
// what would have been persisted.
type Memory struct {
	mu   sync.Mutex
	data []byte
	// Writes counts successful updates.
	Writes int
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return &Memory{} }

// Load returns a copy of the stored state.
func (m *Memory) Load(_ context.Context) (*State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return decode(m.data)
}

// Update applies fn to a copy and stores the result if fn succeeds.
func (m *Memory) Update(_ context.Context, fn func(*State) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, err := decode(m.data)
	if err != nil {
		return err
	}
	if err := fn(s); err != nil {
		return err
	}
	b, err := encode(s)
	if err != nil {
		return err
	}
	m.data = b
	m.Writes++
	return nil
}
