package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/agentrun"
	"github.com/cylo-dev/cylo/internal/procfs"
)

// hostAgent is cylo-agent running as a host process on a Unix socket: the
// guest agent protocol without a VM. The caller must stop it.
type hostAgent struct {
	cmd    *exec.Cmd
	dir    string
	socket string
	exited chan struct{}
	runs   atomic.Int64 // numbers the runs' working directories
}

// agentStopTimeout bounds the wait for the agent to exit after SIGTERM,
// and then after SIGKILL.
const agentStopTimeout = 5 * time.Second

// startHostAgent starts binary with a socket and working directories in a
// new temporary directory, and waits until the socket exists.
func startHostAgent(ctx context.Context, binary string) (*hostAgent, error) {
	dir, err := os.MkdirTemp("", "cylo-bench-agent-")
	if err != nil {
		return nil, err
	}
	a := &hostAgent{dir: dir, socket: filepath.Join(dir, "agent.sock"), exited: make(chan struct{})}
	logFile, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logFile.Close()

	a.cmd = exec.Command(binary, "--listen", "unix:"+a.socket, "--dir-base", filepath.Join(dir, "runs"))
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start host-process agent %s: %w", binary, err)
	}
	go func() {
		a.cmd.Wait()
		close(a.exited)
	}()

	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(a.socket); err == nil {
			return a, nil
		}
		select {
		case <-a.exited:
			log := procfs.Tail(filepath.Join(dir, "agent.log"), 10)
			a.stop()
			return nil, fmt.Errorf("host-process agent %s exited at start (%s): %s", binary, a.cmd.ProcessState, log)
		case <-ctx.Done():
			a.stop()
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("host-process agent %s did not create %s within 10s", binary, a.socket)
		}
	}
}

func (a *hostAgent) dial(ctx context.Context) (net.Conn, error) {
	var dialer net.Dialer
	return dialer.DialContext(ctx, "unix", a.socket)
}

// run does what a VM run does once the guest is up: connect (health check
// and clock sync), exec, close.
func (a *hostAgent) run(ctx context.Context, s snippet) (*cylo.Result, error) {
	session, err := agentrun.Connect(ctx, a.dial, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to the host-process agent: %w", err)
	}
	defer session.Close()

	// Every run gets its own working directory, as in a fresh guest. Runs
	// that share one on the host overwrite each other's main.py, and
	// python then runs an empty file.
	req := s.request()
	req.Dir = fmt.Sprintf("/work/%d", a.runs.Add(1))
	res, err := session.Exec(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("%s through the host-process agent: %w", s.language, err)
	}
	if err := checkOutput(res); err != nil {
		return nil, fmt.Errorf("%s through the host-process agent: %w", s.language, err)
	}
	return res, nil
}

// rss returns the agent process's resident set size in bytes.
func (a *hostAgent) rss() int64 { return procfs.RSS(a.cmd.Process.Pid) }

// stop sends SIGTERM to the agent's process group, then SIGKILL when it
// has not exited after agentStopTimeout, and removes its directory.
func (a *hostAgent) stop() error {
	var errs []error
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(agentStopTimeout):
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-a.exited:
		case <-time.After(agentStopTimeout):
			errs = append(errs, fmt.Errorf("host-process agent pid %d did not exit after SIGKILL", a.cmd.Process.Pid))
		}
	}
	if err := os.RemoveAll(a.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkOutput returns an error unless res is a clean exit that printed
// wantOutput.
func checkOutput(res *cylo.Result) error {
	if res.ExitCode != 0 || string(res.Stdout) != wantOutput {
		return fmt.Errorf("exit code %d, stdout %q, stderr %q; expected exit code 0 and stdout %q",
			res.ExitCode, res.Stdout, strings.TrimSpace(string(res.Stderr)), wantOutput)
	}
	return nil
}
