package sshexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Defaults of the dial options.
const (
	DefaultBootTimeout    = 60 * time.Second
	DefaultAttemptTimeout = 5 * time.Second
	DefaultPollInterval   = 250 * time.Millisecond
)

// Option changes how Dial and WaitReady connect.
type Option func(*options)

type options struct {
	logger         *slog.Logger
	bootTimeout    time.Duration
	attemptTimeout time.Duration
	pollInterval   time.Duration
	consoleTail    func() string
	dial           DialFunc
}

// DialFunc opens the TCP connection to the server, like
// net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// WithDialer makes every attempt connect through dial, for example from
// inside another network namespace. The default is a net.Dialer.
func WithDialer(dial DialFunc) Option {
	return func(o *options) { o.dial = dial }
}

// WithLogger logs through l: a warning whenever host key verification is
// off, readiness at Info and failed attempts at Debug. The default
// discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithBootTimeout bounds how long WaitReady polls (default
// DefaultBootTimeout).
func WithBootTimeout(d time.Duration) Option {
	return func(o *options) { o.bootTimeout = d }
}

// WithAttemptTimeout bounds one TCP connect plus SSH handshake and
// authentication (default DefaultAttemptTimeout).
func WithAttemptTimeout(d time.Duration) Option {
	return func(o *options) { o.attemptTimeout = d }
}

// WithPollInterval sets the pause between two attempts of WaitReady
// (default DefaultPollInterval).
func WithPollInterval(d time.Duration) Option {
	return func(o *options) { o.pollInterval = d }
}

// WithConsoleTail makes WaitReady's timeout error end with tail(), for
// example the last lines of the guest's serial console.
func WithConsoleTail(tail func() string) Option {
	return func(o *options) { o.consoleTail = tail }
}

func newOptions(opts []Option) *options {
	o := &options{
		logger:         slog.New(slog.DiscardHandler),
		bootTimeout:    DefaultBootTimeout,
		attemptTimeout: DefaultAttemptTimeout,
		pollInterval:   DefaultPollInterval,
		dial:           new(net.Dialer).DialContext,
	}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

// AuthError reports that the server rejected every authentication
// method. Retrying does not help, so WaitReady returns it at once.
type AuthError struct {
	User string
	Addr string
	// Methods describes what was tried, for example "key /root/.ssh/id".
	Methods string
	Err     error
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("ssh: authentication as %s at %s failed with %s: %v", e.User, e.Addr, e.Methods, e.Err)
}

func (e *AuthError) Unwrap() error { return e.Err }

// WaitError reports that WaitReady gave up: the boot timeout passed or the
// caller's context ended before a handshake succeeded.
type WaitError struct {
	Addr     string
	Attempts int
	Elapsed  time.Duration
	// Timeout is the boot timeout that was in force.
	Timeout time.Duration
	// Last is the error of the last attempt, or nil if none ran.
	Last error
	// ConsoleTail is the output of the WithConsoleTail function, or "".
	ConsoleTail string
	// Cause is the context's error: context.DeadlineExceeded when the boot
	// timeout or the caller's deadline passed, context.Canceled when the
	// caller canceled.
	Cause error
}

func (e *WaitError) Error() string {
	msg := fmt.Sprintf("ssh server at %s not ready after %s (boot timeout %s, %d attempts)",
		e.Addr, e.Elapsed.Round(time.Millisecond), e.Timeout, e.Attempts)
	if errors.Is(e.Cause, context.Canceled) {
		msg = fmt.Sprintf("wait for ssh server at %s canceled after %s (%d attempts)",
			e.Addr, e.Elapsed.Round(time.Millisecond), e.Attempts)
	}
	if e.Last != nil {
		msg += ": last error: " + e.Last.Error()
	}
	if e.ConsoleTail != "" {
		msg += "\nconsole tail:\n" + e.ConsoleTail
	}
	return msg
}

func (e *WaitError) Unwrap() []error {
	if e.Last == nil {
		return []error{e.Cause}
	}
	return []error{e.Cause, e.Last}
}

// Dial makes one attempt to connect to and authenticate with the server
// of cfg, bounded by the attempt timeout. The caller must Close the
// client.
func Dial(ctx context.Context, cfg Config, opts ...Option) (*ssh.Client, error) {
	o := newOptions(opts)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	warnInsecure(o.logger, cfg)

	client, _, err := dialOnce(ctx, cfg, o)
	return client, err
}

// WaitReady polls the server of cfg until an SSH handshake and
// authentication succeed, for at most the boot timeout. A wrong host key,
// a rejected login or an invalid configuration fails at once. Refused,
// reset and timed-out connections are retried. The caller must Close the
// client.
func WaitReady(ctx context.Context, cfg Config, opts ...Option) (*ssh.Client, error) {
	o := newOptions(opts)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	warnInsecure(o.logger, cfg)

	addr := cfg.Address()
	start := time.Now()
	bootCtx, cancel := context.WithTimeout(ctx, o.bootTimeout)
	defer cancel()

	var last error
	attempts := 0
	for bootCtx.Err() == nil {
		attempts++
		client, permanent, err := dialOnce(bootCtx, cfg, o)
		if err == nil {
			o.logger.Info("ssh server ready", "ssh_addr", addr, "attempts", attempts, "elapsed_ms", time.Since(start).Milliseconds())
			return client, nil
		}
		if permanent {
			return nil, err
		}
		last = err
		o.logger.Debug("ssh server not ready", "ssh_addr", addr, "attempt", attempts, "err", err)

		pause := time.NewTimer(o.pollInterval)
		select {
		case <-bootCtx.Done():
		case <-pause.C:
		}
		pause.Stop()
	}

	werr := &WaitError{
		Addr:     addr,
		Attempts: attempts,
		Elapsed:  time.Since(start),
		Timeout:  o.bootTimeout,
		Last:     last,
		Cause:    bootCtx.Err(),
	}
	if o.consoleTail != nil {
		werr.ConsoleTail = o.consoleTail()
	}
	return nil, werr
}

func warnInsecure(logger *slog.Logger, cfg Config) {
	if cfg.InsecureIgnoreHostKey {
		logger.Warn("ssh host key verification is off: any server can impersonate the guest", "ssh_addr", cfg.Address(), "setting", "ssh_insecure_ignore_host_key")
	}
}

// dialOnce connects and authenticates once. permanent reports an error
// that retrying cannot fix.
func dialOnce(ctx context.Context, cfg Config, o *options) (client *ssh.Client, permanent bool, err error) {
	addr := cfg.Address()
	check, err := cfg.newHostKeyCheck(addr)
	if err != nil {
		return nil, true, err
	}
	auth, err := cfg.newAuth()
	if err != nil {
		return nil, true, err
	}
	// The agent signs only during authentication, which ends with the
	// handshake.
	defer auth.close()

	var hostKeyAccepted atomic.Bool
	clientCfg := &ssh.ClientConfig{
		User: cfg.User(),
		Auth: auth.methods,
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			err := check.callback(hostname, remote, key)
			hostKeyAccepted.Store(err == nil)
			return err
		},
		HostKeyAlgorithms: check.algorithms,
	}

	attemptCtx, cancel := context.WithTimeout(ctx, o.attemptTimeout)
	defer cancel()
	conn, err := o.dial(attemptCtx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}

	// NewClientConn takes no context: closing the connection is what
	// ends a handshake that outlives the attempt.
	stop := context.AfterFunc(attemptCtx, func() { conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, clientCfg)
	if !stop() {
		if err == nil {
			c.Close()
		}
		return nil, false, fmt.Errorf("ssh handshake with %s: %w", addr, attemptCtx.Err())
	}
	if err != nil {
		conn.Close()
		var hostKeyErr *HostKeyError
		if errors.As(err, &hostKeyErr) {
			return nil, true, hostKeyErr
		}
		if hostKeyAccepted.Load() && !transient(err) {
			return nil, true, &AuthError{User: cfg.User(), Addr: addr, Methods: auth.describe(), Err: err}
		}
		return nil, false, err
	}
	return ssh.NewClient(c, chans, reqs), false, nil
}

// transient reports a network error that a server which is still
// starting can cause: refused, reset or closed connections and timeouts.
func transient(err error) bool {
	var netErr net.Error
	return errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		(errors.As(err, &netErr) && netErr.Timeout())
}
