// Package agentrun runs a cylo.Request through a guest agent: it waits for
// the agent after boot, turns the request into an exec spec from the
// language table, and turns the agent's exit status into a cylo.Result. Every
// VMM driver that reaches the agent uses it.
package agentrun

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/agentproto"
	"github.com/cylo-dev/cylo/internal/lang"
)

// Dialer opens a new stream to the agent.
type Dialer func(ctx context.Context) (net.Conn, error)

// Session is a connection to a running agent. The caller must Close it.
type Session struct {
	Client *agentproto.Client
	Health *agentproto.Health
}

// Close closes the connection.
func (s *Session) Close() error { return s.Client.Close() }

// Connect dials the agent until it responds to a health check, then syncs
// the guest's clock and entropy pool. Each attempt gets attemptTimeout. A
// stream that queues bytes until the guest reads them (virtio-serial)
// wants one long attempt, because a reconnect loses what the guest read.
// A connection that the VMM rejects while nothing listens in the guest
// (vsock) wants short ones. Connect gives up when ctx ends and returns the
// last attempt's error.
func Connect(ctx context.Context, dial Dialer, attemptTimeout time.Duration) (*Session, error) {
	var lastErr error
	backoff := 10 * time.Millisecond
	for attempt := 1; ; attempt++ {
		s, err := connectOnce(ctx, dial, attemptTimeout)
		if err == nil {
			return s, nil
		}
		lastErr = err
		var versionErr *VersionError
		if errors.As(err, &versionErr) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest agent did not respond after %d attempts: %w (last error: %v)", attempt, ctx.Err(), lastErr)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

// VersionError reports an agent that speaks another protocol version.
type VersionError struct{ Err error }

func (e *VersionError) Error() string { return e.Err.Error() }
func (e *VersionError) Unwrap() error { return e.Err }

func connectOnce(ctx context.Context, dial Dialer, attemptTimeout time.Duration) (*Session, error) {
	attemptCtx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	conn, err := dial(attemptCtx)
	if err != nil {
		return nil, err
	}
	client, err := agentproto.NewClient(conn)
	if err != nil {
		return nil, err
	}
	health, err := client.Health(attemptCtx)
	if err != nil {
		client.Close()
		if health != nil {
			return nil, &VersionError{Err: err}
		}
		return nil, err
	}
	seed := make([]byte, 64)
	rand.Read(seed)
	if err := client.Sync(attemptCtx, agentproto.Sync{UnixNanos: time.Now().UnixNano(), Seed: seed}); err != nil {
		client.Close()
		return nil, err
	}
	return &Session{Client: client, Health: health}, nil
}

// BaseEnv is the environment every program starts with; Request.Env is
// added to it.
var BaseEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"LANG=C.UTF-8",
}

// Spec turns req, whose defaults are filled, into the agent's exec spec.
func Spec(req *cylo.Request) (*agentproto.ExecSpec, error) {
	l, ok := lang.Lookup(string(req.Language))
	if !ok {
		return nil, fmt.Errorf("unknown language %q", req.Language)
	}
	env := slices.Clone(BaseEnv)
	env = append(env, l.Env...)
	for _, name := range sortedKeys(req.Env) {
		env = append(env, name+"="+req.Env[name])
	}
	files := []agentproto.File{{Path: l.File, Data: []byte(req.Code), Mode: 0o644}}
	for _, path := range sortedKeys(req.Files) {
		files = append(files, agentproto.File{Path: path, Data: req.Files[path], Mode: 0o644})
	}
	return &agentproto.ExecSpec{
		Argv:           l.Argv,
		Env:            env,
		Dir:            req.Dir,
		Files:          files,
		TimeoutMillis:  req.Timeout.Milliseconds(),
		MemoryBytes:    req.Limits.MemoryBytes,
		MaxProcesses:   int64(req.Limits.MaxProcesses),
		MaxOutputBytes: req.Limits.MaxOutputBytes,
	}, nil
}

// hostGrace is how long past the request's timeout the host waits for the
// agent's exit status before it gives up on the guest.
const hostGrace = 15 * time.Second

// Exec runs req, whose defaults are filled, and returns its result with
// the exit status, output and guest-side usage filled. The caller adds the
// VMM's usage and metadata.
func (s *Session) Exec(ctx context.Context, req *cylo.Request) (*cylo.Result, error) {
	spec, err := Spec(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, req.Timeout+hostGrace)
	defer cancel()

	// The agent enforces the cap; the host's own cap keeps cylo's memory
	// bounded even if a broken guest sends more.
	stdout := &cappedBuffer{max: req.Limits.MaxOutputBytes}
	stderr := &cappedBuffer{max: req.Limits.MaxOutputBytes}
	status, err := s.Client.Exec(ctx, spec, req.Stdin, stdout, stderr)
	if err != nil {
		return nil, err
	}
	if status.Error != "" {
		return nil, fmt.Errorf("start program in guest: %s", status.Error)
	}
	result := resultFrom(status, stdout, stderr)
	result.Usage.AgentRSSBytes = s.Health.RSSBytes
	return result, nil
}

func resultFrom(status *agentproto.ExitStatus, stdout, stderr *cappedBuffer) *cylo.Result {
	r := &cylo.Result{
		ExitCode:  status.ExitCode,
		Signal:    status.Signal,
		Stdout:    stdout.buf,
		Stderr:    stderr.buf,
		Truncated: status.Truncated || stdout.dropped || stderr.dropped,
		LimitHit:  cylo.Limit(status.Limit),
	}
	r.TimedOut = r.LimitHit == cylo.LimitTimeout
	r.OOMKilled = r.LimitHit == cylo.LimitMemory
	r.Usage.Wall = time.Duration(status.WallNanos)
	r.Usage.CPUUser = time.Duration(status.CPUUserNanos)
	r.Usage.CPUSystem = time.Duration(status.CPUSystemNanos)
	r.Usage.CPU = r.Usage.CPUUser + r.Usage.CPUSystem
	r.Usage.PeakMemoryBytes = status.PeakMemoryBytes
	return r
}

// cappedBuffer keeps the first max bytes written to it and drops the rest.
type cappedBuffer struct {
	buf     []byte
	max     int64
	dropped bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := b.max - int64(len(b.buf))
	if b.max > 0 && int64(len(p)) > room {
		b.buf = append(b.buf, p[:max(room, 0)]...)
		b.dropped = true
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
