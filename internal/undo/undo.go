// Package undo is a stack of cleanup steps: push one per resource as it is
// acquired, run them all in reverse order on failure or teardown, or
// release them once ownership has passed on.
package undo

import (
	"errors"
	"fmt"
	"sync"
)

// Stack holds cleanup steps. The zero value is ready to use and safe for
// concurrent use.
type Stack struct {
	mu    sync.Mutex
	steps []step
}

type step struct {
	name string
	fn   func() error
}

// Push adds a cleanup step; name appears in the error when it fails.
func (s *Stack) Push(name string, fn func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, step{name, fn})
}

// Run runs every step, last pushed first, and empties the stack. A failing
// step does not stop the others; their errors are joined.
func (s *Stack) Run() error {
	s.mu.Lock()
	steps := s.steps
	s.steps = nil
	s.mu.Unlock()

	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", steps[i].name, err))
		}
	}
	return errors.Join(errs...)
}

// Release empties the stack without running the steps.
func (s *Stack) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = nil
}
