package agent_test

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cylo-dev/cylo/internal/agent"
	"github.com/cylo-dev/cylo/internal/agentproto"
)

// startAgent serves a host-process agent on one end of a socket pair and
// returns a client on the other end.
func startAgent(t *testing.T) *agentproto.Client {
	t.Helper()
	cfg := agent.Config{}
	if parent, err := agent.HostCgroupParent(); err == nil {
		if _, err := agent.PrepareCgroupParent(parent); err == nil {
			cfg.CgroupParent = parent
		}
	}
	server := agent.NewServer(cfg)
	hostEnd, agentEnd := net.Pipe()
	go server.ServeConn(agentEnd)
	client, err := agentproto.NewClient(hostEnd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func execSpec(argv ...string) *agentproto.ExecSpec {
	return &agentproto.ExecSpec{
		Argv:           argv,
		Env:            []string{"PATH=/usr/bin:/bin"},
		Dir:            "/tmp",
		TimeoutMillis:  10_000,
		MaxOutputBytes: 1 << 20,
	}
}

func run(t *testing.T, client *agentproto.Client, spec *agentproto.ExecSpec, stdin []byte) (*agentproto.ExitStatus, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	var in *bytes.Reader
	if stdin != nil {
		in = bytes.NewReader(stdin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var status *agentproto.ExitStatus
	var err error
	if in == nil {
		status, err = client.Exec(ctx, spec, nil, &stdout, &stderr)
	} else {
		status, err = client.Exec(ctx, spec, in, &stdout, &stderr)
	}
	if err != nil {
		t.Fatalf("exec %v: %v", spec.Argv, err)
	}
	return status, stdout.String(), stderr.String()
}

func TestHealthReportsProtocol(t *testing.T) {
	client := startAgent(t)
	h, err := client.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.Protocol != agentproto.Version {
		t.Errorf("protocol = %d, want %d", h.Protocol, agentproto.Version)
	}
}

func TestHealthReportsAgentRSS(t *testing.T) {
	client := startAgent(t)
	h, err := client.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The agent is this test process: its RSS is at least a megabyte and
	// far below a gigabyte.
	if h.RSSBytes < 1<<20 || h.RSSBytes > 1<<30 {
		t.Errorf("rss_bytes = %d, want between 1 MiB and 1 GiB", h.RSSBytes)
	}
}

func TestExecSeparatesStreamsAndExitCode(t *testing.T) {
	client := startAgent(t)
	status, stdout, stderr := run(t, client, execSpec("/bin/sh", "-c", "echo out; echo err >&2; exit 5"), nil)
	if status.ExitCode != 5 {
		t.Errorf("exit code = %d, want 5", status.ExitCode)
	}
	if stdout != "out\n" {
		t.Errorf("stdout = %q, want %q", stdout, "out\n")
	}
	if stderr != "err\n" {
		t.Errorf("stderr = %q, want %q", stderr, "err\n")
	}
}

func TestExecForwardsStdin(t *testing.T) {
	client := startAgent(t)
	input := bytes.Repeat([]byte("line\x00\xff\n"), 50_000)
	status, stdout, _ := run(t, client, execSpec("/bin/cat"), input)
	if status.ExitCode != 0 {
		t.Errorf("exit code = %d", status.ExitCode)
	}
	if stdout != string(input) {
		t.Errorf("stdout has %d bytes, want the %d input bytes unchanged", len(stdout), len(input))
	}
}

func TestExecNilStdinIsEOF(t *testing.T) {
	client := startAgent(t)
	spec := execSpec("/bin/cat")
	spec.TimeoutMillis = 5000
	status, stdout, _ := run(t, client, spec, nil)
	if status.Limit != "" || status.ExitCode != 0 || stdout != "" {
		t.Errorf("cat with no stdin: limit %q, exit %d, stdout %q; want EOF at once", status.Limit, status.ExitCode, stdout)
	}
}

func TestExecTimeoutKillsTree(t *testing.T) {
	client := startAgent(t)
	spec := execSpec("/bin/sh", "-c", "echo before; trap '' TERM; setsid sleep 300 & sleep 300")
	spec.TimeoutMillis = 500
	start := time.Now()
	status, stdout, _ := run(t, client, spec, nil)
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("run took %s after a 500ms timeout", elapsed)
	}
	if status.Limit != "timeout" || status.ExitCode != 137 || status.Signal != 9 {
		t.Errorf("status = %+v, want limit timeout, exit 137, signal 9", status)
	}
	if stdout != "before\n" {
		t.Errorf("stdout = %q, want output written before the timeout kept", stdout)
	}
	if out, _ := exec.Command("pgrep", "-f", "sleep 300").Output(); len(out) > 0 {
		t.Errorf("processes left after timeout: %s", out)
	}
}

func TestExecOutputCap(t *testing.T) {
	client := startAgent(t)
	spec := execSpec("/bin/sh", "-c", "yes hello")
	spec.MaxOutputBytes = 100_000
	status, stdout, _ := run(t, client, spec, nil)
	if !status.Truncated || status.Limit != "output" {
		t.Errorf("status = %+v, want truncated with limit output", status)
	}
	if len(stdout) != 100_000 || !strings.HasPrefix(stdout, "hello\nhello\n") {
		t.Errorf("stdout has %d bytes, want the first 100000", len(stdout))
	}
}

func TestExecSignalExit(t *testing.T) {
	client := startAgent(t)
	status, _, _ := run(t, client, execSpec("/bin/sh", "-c", "kill -SEGV $$"), nil)
	if status.Signal != 11 || status.ExitCode != 139 {
		t.Errorf("status = %+v, want signal 11 and exit 139", status)
	}
}

func TestExecMissingCommand(t *testing.T) {
	client := startAgent(t)
	status, _, _ := run(t, client, execSpec("no-such-interpreter"), nil)
	if status.ExitCode != 127 || !strings.Contains(status.Error, "no-such-interpreter") {
		t.Errorf("status = %+v, want exit 127 naming the command", status)
	}
}
