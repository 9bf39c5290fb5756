package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runCLI runs the CLI with args and returns stdout, stderr and exit code.
func runCLI(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	needVMs(t)
	cmd := exec.Command(env.cylo, append([]string{"--agent", env.agent, "--backend", "qemu"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("cylo %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

func TestCLIExecExitCode(t *testing.T) {
	stdout, stderr, code := runCLI(t, "", "exec", "--lang", "python", "import sys; print(6*7); sys.exit(3)")
	if stdout != "42\n" {
		t.Errorf("stdout = %q, want %q (stderr %q)", stdout, "42\n", stderr)
	}
	if code != 3 {
		t.Errorf("exit code = %d, want 3", code)
	}
}

func TestCLIExecStreamsSeparate(t *testing.T) {
	stdout, stderr, code := runCLI(t, "", "exec", "--lang", "bash", "echo out; echo err >&2; exit 5")
	if stdout != "out\n" || stderr != "err\n" || code != 5 {
		t.Errorf("got stdout %q, stderr %q, exit %d; want out, err, 5", stdout, stderr, code)
	}
}

func TestCLIExecSignalExitCode(t *testing.T) {
	_, _, code := runCLI(t, "", "exec", "--lang", "bash", "kill -TERM $$")
	if code != 128+15 {
		t.Errorf("exit code = %d, want 143 for SIGTERM", code)
	}
}

func TestCLICodeFromStdin(t *testing.T) {
	stdout, stderr, code := runCLI(t, "console.log(2+3)\n", "exec", "--lang", "javascript", "-")
	if stdout != "5\n" || code != 0 {
		t.Errorf("got stdout %q, exit %d (stderr %q); want 5 and 0", stdout, code, stderr)
	}
}

func TestCLIForwardsStdin(t *testing.T) {
	stdout, _, code := runCLI(t, "a\nb\n", "exec", "--lang", "python", "import sys; print(len(sys.stdin.readlines()))")
	if stdout != "2\n" || code != 0 {
		t.Errorf("got stdout %q, exit %d; want 2 lines counted", stdout, code)
	}
}

func TestCLIJSONResult(t *testing.T) {
	stdout, stderr, code := runCLI(t, "", "exec", "--json", "--lang", "python", "import sys; sys.stdout.buffer.write(b'\\xff\\x00ok'); print('e', file=sys.stderr)")
	if code != 0 {
		t.Fatalf("exit code %d, stderr %q", code, stderr)
	}
	var got struct {
		ExitCode       int    `json:"exit_code"`
		Stdout         string `json:"stdout"`
		StdoutEncoding string `json:"stdout_encoding"`
		Stderr         string `json:"stderr"`
		StderrEncoding string `json:"stderr_encoding"`
		Usage          struct {
			Wall            int64 `json:"wall_ns"`
			CPU             int64 `json:"cpu_ns"`
			PeakMemoryBytes int64 `json:"peak_memory_bytes"`
			VMMRSSBytes     int64 `json:"vmm_rss_bytes"`
			Phases          []struct {
				Name     string `json:"name"`
				Duration int64  `json:"duration_ns"`
			} `json:"phases"`
		} `json:"usage"`
		Metadata struct {
			Backend     string `json:"backend"`
			Accelerator string `json:"accelerator"`
			VMMVersion  string `json:"vmm_version"`
			Transport   string `json:"transport"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, stdout)
	}
	if got.StdoutEncoding != "base64" || got.Stdout != "/wBvaw==" {
		t.Errorf("stdout = %q (%s), want base64 of ff 00 'ok'", got.Stdout, got.StdoutEncoding)
	}
	if got.StderrEncoding != "utf-8" || got.Stderr != "e\n" {
		t.Errorf("stderr = %q (%s), want utf-8 \"e\\n\"", got.Stderr, got.StderrEncoding)
	}
	if got.Metadata.Backend != "qemu" || got.Metadata.Transport != "agent" || got.Metadata.VMMVersion == "" {
		t.Errorf("metadata = %+v", got.Metadata)
	}
	if got.Metadata.Accelerator != "tcg" && got.Metadata.Accelerator != "kvm" {
		t.Errorf("accelerator = %q, want tcg or kvm", got.Metadata.Accelerator)
	}
	if got.Usage.Wall <= 0 || got.Usage.CPU <= 0 || got.Usage.PeakMemoryBytes <= 0 || got.Usage.VMMRSSBytes <= 0 {
		t.Errorf("usage = %+v, want positive wall, cpu, peak memory and vmm rss", got.Usage)
	}
	var names []string
	for _, p := range got.Usage.Phases {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "vmm_start,boot,run,teardown" {
		t.Errorf("phases = %v, want vmm_start, boot, run, teardown", names)
	}
}

func TestCLIRejectsBadInput(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown language", []string{"exec", "--lang", "cobol", "x"}, `unknown language "cobol"`},
		{"invalid env name", []string{"exec", "--lang", "bash", "-e", "1BAD=x", "true"}, `invalid environment variable name "1BAD"`},
		{"invalid memory", []string{"exec", "--lang", "bash", "--memory", "lots", "true"}, `invalid --memory "lots"`},
		{"unknown extension", []string{"run", "notes.txt"}, `cannot tell the language of "notes.txt"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, code := runCLI(t, "", c.args...)
			if code != 125 {
				t.Errorf("exit code = %d, want 125", code)
			}
			if !strings.Contains(stderr, c.want) {
				t.Errorf("stderr = %q, want it to contain %q", stderr, c.want)
			}
		})
	}
}

// TestCLIInterruptCleansUp sends SIGINT to cylo while the snippet runs and
// checks that the VM and its files are gone when cylo exits.
func TestCLIInterruptCleansUp(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			needVMs(t)
			cmd := exec.Command(env.cylo, "--agent", env.agent, "--backend", "qemu", "exec", "--lang", "bash", "echo started; sleep 600")
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitForVM(t)
			time.Sleep(2 * time.Second)
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatal("cylo did not exit within 30s of the signal")
			}
			if code := cmd.ProcessState.ExitCode(); code != 130 {
				t.Errorf("exit code = %d, want 130", code)
			}
			if left := leftovers(t); len(left) > 0 {
				t.Errorf("left after %s: %v", sig, left)
			}
		})
	}
}

// TestCLIKilledThenGC kills cylo with SIGKILL mid-run; the VMM dies with
// it and cylo gc removes what remains.
func TestCLIKilledThenGC(t *testing.T) {
	needVMs(t)
	cmd := exec.Command(env.cylo, "--agent", env.agent, "--backend", "qemu", "exec", "--lang", "bash", "sleep 600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForVM(t)
	cmd.Process.Kill()
	cmd.Wait()

	out, err := exec.Command(env.cylo, "gc").CombinedOutput()
	if err != nil {
		t.Fatalf("cylo gc: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(leftovers(t)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("left after SIGKILL and cylo gc: %v", left)
	}
}

// waitForVM waits until a VMM process of cylo's exists.
func waitForVM(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if len(leftovers(t)) > 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no VM started within 30s")
}
