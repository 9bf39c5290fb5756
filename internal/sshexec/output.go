package sshexec

import (
	"io"
	"sync"
)

// output copies stdout and stderr to the caller's writers under one
// shared cap on their total size.
type output struct {
	mu sync.Mutex
	// max is the cap in bytes, or 0 for none. used counts the bytes kept.
	max  int64
	used int64
	cut  bool
	err  error

	// limited is closed when output first passes max, failed when a
	// caller's writer first fails.
	limited chan struct{}
	failed  chan struct{}
}

func newOutput(max int64) *output {
	return &output{max: max, limited: make(chan struct{}), failed: make(chan struct{})}
}

// writer returns the io.Writer for one stream that forwards to w (nil
// discards). It never returns an error, so that the session keeps
// draining the stream while Run kills the program. Truncation and write
// errors are recorded instead.
func (o *output) writer(w io.Writer) io.Writer {
	if w == nil {
		w = io.Discard
	}
	return &streamWriter{o: o, w: w}
}

func (o *output) truncated() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.cut
}

func (o *output) writeErr() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

type streamWriter struct {
	o *output
	w io.Writer
}

func (s *streamWriter) Write(p []byte) (int, error) {
	o := s.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cut || o.err != nil {
		return len(p), nil
	}

	keep := p
	if o.max > 0 && o.used+int64(len(p)) > o.max {
		keep = p[:o.max-o.used]
		o.cut = true
		close(o.limited)
	}
	o.used += int64(len(keep))
	if len(keep) > 0 {
		if _, err := s.w.Write(keep); err != nil {
			o.err = err
			close(o.failed)
		}
	}
	return len(p), nil
}
