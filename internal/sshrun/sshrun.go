// Package sshrun runs a cylo.Request in a booted guest over SSH, for the
// VM drivers: it waits for the guest's SSH server (sshexec.WaitReady),
// runs the request (sshexec.Run) and fills a cylo.Result in the same form
// as the agent transport does.
package sshrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/sshexec"
)

// Target is a booted guest to reach over SSH.
type Target struct {
	// Config is how to reach and authenticate the guest, with Host set.
	Config sshexec.Config
	// Dial opens the TCP connection, for example from inside the VM's
	// network namespace. Nil means a plain net.Dialer.
	Dial sshexec.DialFunc
	// BootTimeout bounds the wait for the SSH server.
	BootTimeout time.Duration
	// Exited is closed when the VMM exits, which ends the wait at once.
	Exited <-chan struct{}
	// ConsoleTail returns the end of the guest console for errors.
	ConsoleTail func() string
	Logger      *slog.Logger
}

// ErrVMMExited is wrapped by Connect's error when the VMM exited before
// the SSH server accepted a login.
var ErrVMMExited = errors.New("vmm exited during boot")

// Connect waits until the guest's SSH server accepts a login. The caller
// must Close the client.
func Connect(ctx context.Context, t Target) (*ssh.Client, error) {
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if t.Exited != nil {
		go func() {
			select {
			case <-t.Exited:
				cancel()
			case <-waitCtx.Done():
			}
		}()
	}

	opts := []sshexec.Option{sshexec.WithBootTimeout(t.BootTimeout)}
	if t.Dial != nil {
		opts = append(opts, sshexec.WithDialer(t.Dial))
	}
	if t.ConsoleTail != nil {
		opts = append(opts, sshexec.WithConsoleTail(t.ConsoleTail))
	}
	if t.Logger != nil {
		opts = append(opts, sshexec.WithLogger(t.Logger))
	}
	client, err := sshexec.WaitReady(waitCtx, t.Config, opts...)
	if err == nil {
		return client, nil
	}
	if vmmExited(t.Exited) {
		return nil, fmt.Errorf("%w, before the ssh server at %s accepted a login: %w", ErrVMMExited, t.Config.Address(), err)
	}
	return nil, err
}

// Exec runs req over client and returns its result with Usage.Wall set.
// Phases, VMM usage and metadata are the caller's to fill.
//
// NOTE: the SSH server runs the program with no cgroup of its own, so
// Limits.MemoryBytes bounds only the guest's memory (the driver sizes the
// VM from it) and MaxProcesses is not enforced. CPU time and peak memory
// stay zero.
func Exec(ctx context.Context, client *ssh.Client, req *cylo.Request) (*cylo.Result, error) {
	var stdout, stderr bytes.Buffer
	status, err := sshexec.Run(ctx, client, sshexec.Exec{
		Language:       string(req.Language),
		Code:           req.Code,
		Files:          req.Files,
		Stdin:          req.Stdin,
		Env:            req.Env,
		Dir:            req.Dir,
		Timeout:        req.Timeout,
		MaxOutputBytes: req.Limits.MaxOutputBytes,
		Stdout:         &stdout,
		Stderr:         &stderr,
	})
	if status == nil {
		return nil, err
	}
	// A non-nil err with a Status means the program ran and only removing
	// its files from the guest failed. The driver discards the guest next,
	// so the result is returned as it is.

	res := &cylo.Result{
		ExitCode:  status.ExitCode,
		Signal:    status.Signal,
		Stdout:    stdout.Bytes(),
		Stderr:    stderr.Bytes(),
		Truncated: status.Truncated,
		TimedOut:  status.TimedOut,
	}
	switch {
	case status.TimedOut:
		res.LimitHit = cylo.LimitTimeout
	case status.Truncated:
		res.LimitHit = cylo.LimitOutput
	}
	res.Usage.Wall = status.Wall
	return res, nil
}

func vmmExited(exited <-chan struct{}) bool {
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return true
	default:
		return false
	}
}
