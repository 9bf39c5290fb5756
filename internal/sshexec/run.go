package sshexec

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/cylo-dev/cylo/internal/lang"
)

// Exec is one program to run over SSH.
type Exec struct {
	// Language is a name from the lang table, such as "python".
	Language string
	// Code is written unchanged to the language's file in Dir.
	Code string
	// Files are extra files written to Dir, keyed by relative path.
	Files map[string][]byte
	// Stdin is the program's standard input. Nil means the program reads
	// EOF at once. Input the program leaves unread is dropped. Run does
	// not wait for a blocked Read to return.
	Stdin io.Reader
	// Env is added to the environment the SSH server gives the session,
	// after the language's own variables, so it overrides them. Values
	// are passed byte for byte but cannot contain NUL.
	Env map[string]string
	// Dir is the working directory, created if missing. Empty means a
	// directory inside the run's control directory.
	Dir string
	// Timeout bounds the program's wall-clock time. Zero means only ctx
	// bounds it.
	Timeout time.Duration
	// MaxOutputBytes bounds stdout plus stderr. Past it the rest is
	// dropped and the program is killed. Zero means no cap.
	MaxOutputBytes int64
	// Stdout and Stderr receive the program's output unchanged, each
	// from its own goroutine but never both at once. Nil discards.
	Stdout io.Writer
	Stderr io.Writer
}

// Status is the outcome of one program: exit status, limits hit and wall time.
type Status struct {
	// ExitCode is the exit status, or 128+Signal when a signal ended the
	// program.
	ExitCode int
	// Signal is the number of the signal that ended the program, or 0.
	Signal int
	// TimedOut reports that Exec.Timeout passed and Run killed the
	// program.
	TimedOut bool
	// Truncated reports that output passed Exec.MaxOutputBytes and Run
	// killed the program.
	Truncated bool
	// Wall is the time from starting the remote command to its end,
	// measured on the client, so it includes one network round trip.
	Wall time.Duration
}

// Timeouts of the steps that stop and clean up a run. They do not depend
// on the caller's context, which may already be done.
const (
	killTimeout    = 10 * time.Second
	exitGrace      = 2 * time.Second
	cleanupTimeout = 20 * time.Second
)

// NOTE: the program can write to the control directory (it runs as the
// same user), so it can make kill.sh miss or hit other processes of the
// guest. That harms only the guest, which cylo discards after the run.

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Run copies ex's code and files to the server with SFTP, runs the
// language's command there and waits for it. It kills the program, with
// every process in its session and process group and all descendants,
// when ex.Timeout passes, when output passes ex.MaxOutputBytes or when
// ctx ends.
//
// Run returns an error without a Status when the program could not be
// run, ctx ended or reading ex.Stdin failed. When the program ran but cleanup failed, Run returns
// the Status and the cleanup error.
//
// Before returning, Run deletes the control directory (/tmp/cylo-ID, with
// run.sh, kill.sh and the pid file), every directory it created, with
// contents, and every file it wrote. Files the program wrote to a
// working directory that existed before stay. Run writes no local files.
func Run(ctx context.Context, client *ssh.Client, ex Exec) (status *Status, err error) {
	spec, err := ex.validate()
	if err != nil {
		return nil, err
	}

	fs, err := sftp.NewClient(client)
	if err != nil {
		return nil, fmt.Errorf("start the sftp subsystem: %w: the SSH server needs one (OpenSSH: Subsystem sftp internal-sftp)", err)
	}
	defer fs.Close()

	r := &remoteRun{fs: fs}
	defer func() {
		if cleanupErr := r.cleanup(); cleanupErr != nil {
			err = errors.Join(err, cleanupErr)
		}
	}()

	if err := r.prepare(spec, ex); err != nil {
		return nil, err
	}
	return r.execute(ctx, client, ex)
}

func (ex *Exec) validate() (lang.Spec, error) {
	spec, ok := lang.Lookup(ex.Language)
	if !ok {
		return spec, fmt.Errorf("unknown language %q: use one of %s", ex.Language, strings.Join(lang.Names(), ", "))
	}
	for name, value := range ex.Env {
		if !envName.MatchString(name) {
			return spec, fmt.Errorf("invalid environment variable name %q: names must match %s", name, envName)
		}
		if strings.ContainsRune(value, 0) {
			return spec, fmt.Errorf("environment variable %s contains a NUL byte, which an environment cannot hold", name)
		}
	}
	for name := range ex.Files {
		if err := checkRelative(name); err != nil {
			return spec, fmt.Errorf("file %q: %w", name, err)
		}
		if path.Clean(name) == spec.File {
			return spec, fmt.Errorf("file %q has the name of the code file: rename it", name)
		}
	}
	if ex.Dir != "" && !path.IsAbs(ex.Dir) {
		return spec, fmt.Errorf("working directory %q must be an absolute path", ex.Dir)
	}
	if ex.Timeout < 0 || ex.MaxOutputBytes < 0 {
		return spec, fmt.Errorf("timeout %s and max output bytes %d must not be negative: use 0 for no limit", ex.Timeout, ex.MaxOutputBytes)
	}
	return spec, nil
}

func checkRelative(name string) error {
	clean := path.Clean(name)
	if name == "" || path.IsAbs(name) || clean == "." || clean == ".." || strings.HasPrefix(clean, "../") {
		return errors.New("path must be relative to the working directory and stay inside it")
	}
	return nil
}

// remoteRun is the remote state of one Run: what it created and must
// delete.
type remoteRun struct {
	fs *sftp.Client
	// ctl is the control directory, "" until created.
	ctl string
	dir string
	// createdDirs are directories Run made, outermost first.
	createdDirs []string
	// writtenFiles are files Run wrote.
	writtenFiles []string
}

// prepare creates the control and working directories and writes the
// code, the files and the two scripts.
func (r *remoteRun) prepare(spec lang.Spec, ex Exec) error {
	id := make([]byte, 8)
	rand.Read(id)
	ctl := "/tmp/cylo-" + hex.EncodeToString(id)
	if err := r.fs.Mkdir(ctl); err != nil {
		return fmt.Errorf("create the control directory %s: %w", ctl, err)
	}
	r.ctl = ctl
	if err := r.fs.Chmod(ctl, 0o700); err != nil {
		return fmt.Errorf("chmod the control directory %s: %w", ctl, err)
	}

	r.dir = ex.Dir
	if r.dir == "" {
		r.dir = ctl + "/work"
	}
	if err := r.mkdirAll(r.dir); err != nil {
		return err
	}

	if err := r.writeFile(path.Join(r.dir, spec.File), []byte(ex.Code), 0o644); err != nil {
		return err
	}
	for name, data := range ex.Files {
		full := path.Join(r.dir, name)
		if err := r.mkdirAll(path.Dir(full)); err != nil {
			return err
		}
		if err := r.writeFile(full, data, 0o644); err != nil {
			return err
		}
	}

	env := append([]string(nil), spec.Env...)
	for name, value := range ex.Env {
		env = append(env, name+"="+value)
	}
	if err := r.writeFile(ctl+"/run.sh", []byte(runScript(ctl, r.dir, env, spec.Argv)), 0o600); err != nil {
		return err
	}
	if err := r.writeFile(ctl+"/watch.sh", []byte(watchScript(ctl)), 0o600); err != nil {
		return err
	}
	return r.writeFile(ctl+"/kill.sh", []byte(killScript(ctl)), 0o600)
}

// mkdirAll creates dir and its missing parents and records each one it
// made.
func (r *remoteRun) mkdirAll(dir string) error {
	var missing []string
	for d := dir; d != "/" && d != "."; d = path.Dir(d) {
		info, err := r.fs.Stat(d)
		if err == nil {
			if !info.IsDir() {
				return fmt.Errorf("create directory %s: %s is not a directory", dir, d)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := r.fs.Mkdir(missing[i]); err != nil {
			return fmt.Errorf("create directory %s: %w", missing[i], err)
		}
		if !r.insideCreated(missing[i]) {
			r.createdDirs = append(r.createdDirs, missing[i])
		}
	}
	return nil
}

func (r *remoteRun) writeFile(name string, data []byte, mode os.FileMode) error {
	f, err := r.fs.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	if !r.insideCreated(name) {
		r.writtenFiles = append(r.writtenFiles, name)
	}
	_, err = f.Write(data)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := r.fs.Chmod(name, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	return nil
}

// insideCreated reports whether name is inside the control directory or
// a directory Run created, which cleanup deletes whole.
func (r *remoteRun) insideCreated(name string) bool {
	for _, d := range append([]string{r.ctl}, r.createdDirs...) {
		if d != "" && strings.HasPrefix(name, d+"/") {
			return true
		}
	}
	return false
}

// cleanup deletes what Run created, bounded by cleanupTimeout. SFTP calls
// take no context, so a call stuck on a dead connection is left running
// and ends when the connection closes.
func (r *remoteRun) cleanup() error {
	done := make(chan error, 1)
	go func() { done <- r.remove() }()
	select {
	case err := <-done:
		return err
	case <-time.After(cleanupTimeout):
		return fmt.Errorf("delete %s on the server: timed out after %s", r.ctl, cleanupTimeout)
	}
}

func (r *remoteRun) remove() error {
	var errs []error
	for _, name := range r.writtenFiles {
		if err := r.fs.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
		}
	}
	dirs := r.createdDirs
	if r.ctl != "" {
		dirs = append(dirs, r.ctl)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := r.fs.RemoveAll(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete %s: %w", dirs[i], err))
		}
	}
	return errors.Join(errs...)
}

// stopReason is the cause for which Run stopped the program.
type stopReason int

const (
	stopNone stopReason = iota
	stopTimeout
	stopOutput
	stopWriter
	stopContext
)

// execute starts run.sh in a session, copies the output and waits for the
// program to end or for a reason to kill it.
func (r *remoteRun) execute(ctx context.Context, client *ssh.Client, ex Exec) (*Status, error) {
	session, err := client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open an ssh session: %w", err)
	}
	defer session.Close()

	out := newOutput(ex.MaxOutputBytes)
	session.Stdout = out.writer(ex.Stdout)
	session.Stderr = out.writer(ex.Stderr)
	stdin := &stdinCopy{}
	if ex.Stdin != nil {
		// Not session.Stdin: Wait would then report io.EOF for input
		// that the program exited without reading.
		pipe, err := session.StdinPipe()
		if err != nil {
			return nil, fmt.Errorf("open the program's stdin: %w", err)
		}
		stdin.pipe = pipe
	}

	// The server's login shell runs this line. Its only variable part is
	// the quoted path of run.sh.
	command := "exec /bin/sh " + quote(r.ctl+"/run.sh")
	start := time.Now()
	if err := session.Start(command); err != nil {
		return nil, fmt.Errorf("start the program: %w", err)
	}
	if ex.Stdin != nil {
		go stdin.copy(ex.Stdin)
	}
	if watcher, err := client.NewSession(); err == nil {
		// The watcher's own result does not matter: without it, background
		// processes are still killed by the timeout.
		defer watcher.Close()
		_ = watcher.Start("exec /bin/sh " + quote(r.ctl+"/watch.sh"))
	}
	waited := make(chan error, 1)
	go func() { waited <- session.Wait() }()

	var timeout <-chan time.Time
	if ex.Timeout > 0 {
		timer := time.NewTimer(ex.Timeout)
		defer timer.Stop()
		timeout = timer.C
	}

	reason := stopNone
	var waitErr error
	select {
	case waitErr = <-waited:
	case <-timeout:
		reason = stopTimeout
	case <-out.limited:
		reason = stopOutput
	case <-out.failed:
		reason = stopWriter
	case <-ctx.Done():
		reason = stopContext
	}

	var killErr error
	if reason != stopNone {
		killErr = r.kill(client)
		waitErr = awaitExit(session, waited)
	}
	wall := time.Since(start)

	switch {
	case reason == stopContext:
		return nil, errors.Join(fmt.Errorf("run %s: %w", ex.Language, ctx.Err()), killErr)
	case out.writeErr() != nil:
		return nil, errors.Join(fmt.Errorf("copy the program's output: %w", out.writeErr()), killErr)
	case killErr != nil:
		return nil, killErr
	case stdin.readErr() != nil:
		return nil, fmt.Errorf("read the program's stdin: %w", stdin.readErr())
	}

	status := &Status{
		TimedOut:  reason == stopTimeout,
		Truncated: out.truncated(),
		Wall:      wall,
	}
	if err := status.setExit(waitErr, reason != stopNone); err != nil {
		return nil, err
	}
	if status.ExitCode == 125 && reason == stopNone {
		if _, err := r.fs.Stat(r.ctl + "/pid"); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("run.sh failed before it started the program (exit 125): check that the working directory %s can be entered", r.dir)
		}
	}
	return status, nil
}

// stdinCopy copies the caller's Stdin to the session and then sends EOF.
// Write errors mean that the program closed its stdin or ended, which is
// not an error of the run.
type stdinCopy struct {
	pipe io.WriteCloser
	mu   sync.Mutex
	err  error
}

func (s *stdinCopy) copy(r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := s.pipe.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			if err != io.EOF {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
			}
			break
		}
	}
	s.pipe.Close()
}

// readErr returns the error of the caller's reader, if it failed before
// the program ended.
func (s *stdinCopy) readErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// kill runs kill.sh in a second session, bounded by killTimeout.
func (r *remoteRun) kill(client *ssh.Client) error {
	session, err := client.NewSession()
	if err != nil {
		return fmt.Errorf("open an ssh session to kill the program: %w", err)
	}
	defer session.Close()

	var stderr strings.Builder
	session.Stderr = &stderr
	done := make(chan error, 1)
	go func() { done <- session.Run("/bin/sh " + quote(r.ctl+"/kill.sh")) }()

	select {
	case err = <-done:
	case <-time.After(killTimeout):
		err = fmt.Errorf("timed out after %s", killTimeout)
	}
	if err != nil {
		return fmt.Errorf("kill the program with %s/kill.sh: %w (stderr: %q)", r.ctl, err, stderr.String())
	}
	return nil
}

// awaitExit waits up to exitGrace for the killed program's exit status,
// then closes the session so that Wait returns even if the server holds
// it open.
func awaitExit(session *ssh.Session, waited <-chan error) error {
	grace := time.NewTimer(exitGrace)
	defer grace.Stop()
	select {
	case err := <-waited:
		return err
	case <-grace.C:
	}
	session.Close()
	select {
	case err := <-waited:
		return err
	case <-time.After(exitGrace):
		return errors.New("the ssh session did not end after it was closed")
	}
}

// setExit fills the exit code and signal from the error of
// ssh.Session.Wait. killed reports that Run killed the program with
// SIGKILL, which is then reported when the server sent no status.
func (s *Status) setExit(waitErr error, killed bool) error {
	var exitErr *ssh.ExitError
	var missingErr *ssh.ExitMissingError
	switch {
	case waitErr == nil:
		s.ExitCode = 0
	case errors.As(waitErr, &exitErr):
		if name := exitErr.Signal(); name != "" {
			s.Signal = signalNumber(name, exitErr.ExitStatus())
			s.ExitCode = 128 + s.Signal
		} else {
			s.ExitCode = exitErr.ExitStatus()
		}
	case errors.As(waitErr, &missingErr) && killed:
		s.Signal = int(unix.SIGKILL)
		s.ExitCode = 128 + s.Signal
	case errors.As(waitErr, &missingErr):
		return errors.New("the ssh server ended the session without an exit status")
	default:
		return fmt.Errorf("wait for the program: %w", waitErr)
	}
	return nil
}

// signalNumber returns the Linux number of the signal that an exit-signal
// request names ("KILL", without the SIG prefix, as RFC 4254 section 6.10
// defines the names, per x/crypto/ssh's session.go). For names it does not know it falls back to x/crypto/ssh's
// status, which is 128 plus the number for the RFC's signals.
func signalNumber(name string, status int) int {
	if n := unix.SignalNum("SIG" + name); n != 0 {
		return int(n)
	}
	if status > 128 {
		return status - 128
	}
	return 0
}
