package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cylo-dev/cylo/internal/procfs"
	"github.com/cylo-dev/cylo/internal/vmnet"
)

// process is a running firecracker. It leads its own process group, so one
// signal reaches it and anything it started.
type process struct {
	cmd     *exec.Cmd
	logPath string
	// exited is closed when the process has exited. It stays a zombie
	// until reap, so its pid and process group id cannot be reused
	// before the group is killed.
	exited chan struct{}
	reaped bool
	// waitErr is cmd.Wait's result, set by reap.
	waitErr error
}

// startProcess starts bin with args in its own process group, its stdout
// and stderr appended to logPath. A non-nil ns is the network namespace
// it runs in, where it finds the TAP device by name.
func startProcess(bin string, args []string, dir, logPath string, ns *vmnet.Namespace) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create firecracker log: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := cmd.Start
	if ns != nil {
		start = func() error { return ns.Start(cmd) }
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}

	p := &process{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go p.watch()
	return p, nil
}

// watch closes p.exited when the process exits, without reaping it.
func (p *process) watch() {
	defer close(p.exited)
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, p.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// killTimeout bounds the wait for firecracker to exit after SIGKILL, which
// only a process stuck in uninterruptible sleep outlasts.
const killTimeout = 5 * time.Second

// kill sends SIGKILL to the process group, waits for the leader to exit
// and reaps it. It is safe to call more than once.
func (p *process) kill() error {
	if p.reaped {
		return nil
	}
	// The leader is still unreaped here, so -pid is still its group.
	if err := unix.Kill(-p.pid(), unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill firecracker process group %d: %w", p.pid(), err)
	}
	select {
	case <-p.exited:
	case <-time.After(killTimeout):
		return fmt.Errorf("firecracker pid %d did not exit within %v of SIGKILL", p.pid(), killTimeout)
	}
	p.reap()
	return nil
}

// reap collects the exit status of an exited process.
func (p *process) reap() {
	if !p.reaped {
		p.waitErr = p.cmd.Wait()
		p.reaped = true
	}
}

// exitError describes how the process ended and the tail of its log. It
// must be called after the process has exited.
func (p *process) exitError(when string) error {
	_ = unix.Kill(-p.pid(), unix.SIGKILL) // helpers it left behind
	p.reap()
	status := "exited with status 0"
	if p.waitErr != nil {
		status = p.waitErr.Error()
	}
	return fmt.Errorf("firecracker %s: %s; last lines of %s:\n%s", when, status, p.logPath, logTail(p.logPath, 20))
}

// waitSocket waits until the API socket at path accepts connections,
// polling with a growing delay. It fails early if the process exits.
func (p *process) waitSocket(ctx context.Context, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	delay := time.Millisecond
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			conn.Close()
			return nil
		}

		select {
		case <-p.exited:
			return p.exitError("exited before its API socket appeared")
		case <-ctx.Done():
			return fmt.Errorf("firecracker API socket %s did not accept connections within %v: %w; last lines of %s:\n%s",
				path, timeout, err, p.logPath, logTail(p.logPath, 20))
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// logTail returns the last n lines of the file at path, or a note saying
// that it is empty or unreadable.
func logTail(path string, n int) string {
	if tail := procfs.Tail(path, n); tail != "" {
		return tail
	}
	return "(log is empty or unreadable)"
}
