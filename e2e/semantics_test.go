package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cylo-dev/cylo"
)

// forEachBackend runs f as a subtest on every backend.
func forEachBackend(t *testing.T, f func(t *testing.T, b cylo.Backend)) {
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			f(t, newBackend(t, name, "base"))
		})
	}
}

// isSSH reports whether the subtest runs on the ssh transport.
func isSSH(t *testing.T) bool {
	return strings.HasSuffix(t.Name(), "/qemu-ssh")
}

// realVM skips on backends whose "guest" is a host process.
func realVM(t *testing.T, b cylo.Backend) {
	t.Helper()
	if strings.HasSuffix(t.Name(), "/firecracker-double") {
		t.Skip("the Firecracker test double runs the agent as a host process: no guest kernel, network or cgroup controllers to check")
	}
}

// agentLimits skips where limits come from the agent's cgroup: the SSH
// transport runs the program through sshd, with no cgroup of its own.
func agentLimits(t *testing.T) {
	t.Helper()
	if isSSH(t) {
		t.Skip("the ssh transport has no per-run cgroup: memory and process limits are not enforced there")
	}
}

func py(code string) *cylo.Request {
	return &cylo.Request{Language: cylo.Python, Code: code, Timeout: 60 * time.Second}
}

func sh(code string) *cylo.Request {
	return &cylo.Request{Language: cylo.Bash, Code: code, Timeout: 60 * time.Second}
}

func TestOutputBytesExact(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		// Every byte value, a 1 MB line without newline on stdout, many
		// small flushed writes on stderr, no trailing newline on either.
		code := `
import sys, os
out = sys.stdout.buffer
out.write(bytes(range(256)))
out.write(b"x" * 1_000_000)
out.flush()
for i in range(2000):
    os.write(2, b"%d," % i)
os.write(2, b"\xff\xfe end")
`
		req := py(code)
		req.Limits.MaxOutputBytes = 16 << 20
		res := run(t, b, req)
		wantOut := append(allBytes(), bytes.Repeat([]byte("x"), 1_000_000)...)
		if !bytes.Equal(res.Stdout, wantOut) {
			t.Errorf("stdout: %d bytes, want %d exact bytes (first difference at %d)", len(res.Stdout), len(wantOut), firstDiff(res.Stdout, wantOut))
		}
		var wantErr bytes.Buffer
		for i := range 2000 {
			fmt.Fprintf(&wantErr, "%d,", i)
		}
		wantErr.WriteString("\xff\xfe end")
		if !bytes.Equal(res.Stderr, wantErr.Bytes()) {
			t.Errorf("stderr: %d bytes, want %d exact bytes (first difference at %d)", len(res.Stderr), wantErr.Len(), firstDiff(res.Stderr, wantErr.Bytes()))
		}
		if res.Truncated {
			t.Error("truncated is set below the cap")
		}
	})
}

func TestOutputMegabytesBothStreams(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		code := `
import os
block_out = bytes([i % 251 for i in range(65536)])
block_err = bytes([i % 241 for i in range(65536)])
for i in range(48):
    os.write(1, block_out)
    os.write(2, block_err)
`
		req := py(code)
		req.Limits.MaxOutputBytes = 16 << 20
		res := run(t, b, req)
		wantOut := bytes.Repeat(pattern(251), 48)
		wantErr := bytes.Repeat(pattern(241), 48)
		if !bytes.Equal(res.Stdout, wantOut) {
			t.Errorf("stdout: %d bytes, want %d exact bytes", len(res.Stdout), len(wantOut))
		}
		if !bytes.Equal(res.Stderr, wantErr) {
			t.Errorf("stderr: %d bytes, want %d exact bytes", len(res.Stderr), len(wantErr))
		}
	})
}

func TestOutputCapTruncates(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		req := sh(`echo first; yes 0123456789`)
		req.Limits.MaxOutputBytes = 1 << 20
		start := time.Now()
		res := run(t, b, req)
		if !res.Truncated || res.LimitHit != cylo.LimitOutput {
			t.Errorf("truncated %v, limit %q; want true and output", res.Truncated, res.LimitHit)
		}
		total := len(res.Stdout) + len(res.Stderr)
		if total != 1<<20 {
			t.Errorf("kept %d bytes, want exactly the 1 MiB cap", total)
		}
		if !bytes.HasPrefix(res.Stdout, []byte("first\n0123456789\n")) {
			t.Errorf("stdout starts %q, want the bytes written before the cap", res.Stdout[:min(len(res.Stdout), 40)])
		}
		if time.Since(start) > 60*time.Second {
			t.Errorf("run took %s: the cap should stop the program at once", time.Since(start))
		}
	})
}

func TestOutputBeforeTimeoutKept(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		req := sh(`printf 'partial'; echo oops >&2; sleep 600`)
		req.Timeout = 2 * time.Second
		res := run(t, b, req)
		if string(res.Stdout) != "partial" || string(res.Stderr) != "oops\n" {
			t.Errorf("stdout %q, stderr %q; want the output written before the timeout", res.Stdout, res.Stderr)
		}
	})
}

func TestNoStdinIsEOF(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		req := py(`import sys; data = sys.stdin.read(); print(len(data))`)
		req.Timeout = 20 * time.Second
		res := run(t, b, req)
		if res.TimedOut || string(res.Stdout) != "0\n" {
			t.Errorf("timed out %v, stdout %q; want EOF at once and 0", res.TimedOut, res.Stdout)
		}
	})
}

func TestCodeReachesInterpreterUnchanged(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		// Text a shell would expand, and a heredoc terminator that would
		// end a wrapper that pasted the code into a heredoc.
		literal := "$HOME $(id -u) `id` ${PATH} \\n 'single' \"double\"\nEOF\nCYLO_EOF\n"
		code := "import sys\nsys.stdout.write(" + pyString(literal) + ")\n"
		res := run(t, b, py(code))
		if string(res.Stdout) != literal {
			t.Errorf("stdout %q, want %q", res.Stdout, literal)
		}

		bash := run(t, b, sh("cat <<'EOF'\n$HOME `x`\nEOF\necho \"$((6*7))\""))
		if string(bash.Stdout) != "$HOME `x`\n42\n" {
			t.Errorf("bash heredoc stdout %q, want the code interpreted by bash itself", bash.Stdout)
		}
	})
}

func TestEnvValuesExact(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		values := map[string]string{
			"SPACES":    "  a b  ",
			"NEWLINES":  "line1\nline2\n",
			"QUOTES":    `'single' "double"`,
			"BACKSLASH": `C:\path\n\\`,
			"DOLLAR":    "$HOME $(id) `id`",
			"EMPTY":     "",
			"UNICODE":   "héllo wörld ☃",
		}
		req := py(`import os, json; print(json.dumps({k: os.environ.get(k) for k in ` + pyKeys(values) + `}, ensure_ascii=False))`)
		req.Env = values
		res := run(t, b, req)
		for name, want := range values {
			if !bytes.Contains(res.Stdout, []byte(fmt.Sprintf("%q: %s", name, jsonString(want)))) {
				t.Errorf("env %s: output %s does not contain the exact value %q", name, res.Stdout, want)
			}
		}
	})
}

func TestInvalidEnvRejectedBeforeRun(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		req := sh("echo ran")
		req.Env = map[string]string{"BAD-NAME": "x"}
		_, err := cylo.Run(context.Background(), b, req)
		if err == nil || !strings.Contains(err.Error(), `"BAD-NAME"`) {
			t.Errorf("err = %v, want a rejection naming BAD-NAME", err)
		}
	})
}

func TestTimeoutKillsWholeTree(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		// A parent that ignores SIGTERM, a child in its own session, and a
		// child that stops its own process group.
		code := `
trap '' TERM
setsid sleep 600 &
bash -c 'kill -STOP -$$' &
sleep 600 &
echo started
wait`
		req := sh(code)
		req.Timeout = 3 * time.Second
		start := time.Now()
		res := run(t, b, req)
		elapsed := time.Since(start)
		if !res.TimedOut || res.LimitHit != cylo.LimitTimeout {
			t.Errorf("timed out %v, limit %q; want true and timeout", res.TimedOut, res.LimitHit)
		}
		if res.ExitCode != 137 || res.Signal != 9 {
			t.Errorf("exit %d, signal %d; want 137 and 9", res.ExitCode, res.Signal)
		}
		if res.Usage.Wall > req.Timeout+2*time.Second {
			t.Errorf("program wall time %s, want at most timeout + 2s", res.Usage.Wall)
		}
		// Boot and teardown come on top of the program's wall time.
		if elapsed > req.Timeout+60*time.Second {
			t.Errorf("run returned after %s", elapsed)
		}
		if string(res.Stdout) != "started\n" {
			t.Errorf("stdout %q, want %q", res.Stdout, "started\n")
		}
	})
}

func TestMemoryLimitOOM(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		realVM(t, b)
		agentLimits(t)
		req := py(`
chunks = []
while True:
    chunks.append(bytearray(8 << 20))
`)
		req.Limits.MemoryBytes = 64 << 20
		res := run(t, b, req)
		if !res.OOMKilled || res.LimitHit != cylo.LimitMemory {
			t.Errorf("oom killed %v, limit %q; want true and memory (exit %d, stderr %q)", res.OOMKilled, res.LimitHit, res.ExitCode, res.Stderr)
		}
		if res.ExitCode != 137 || res.Signal != 9 {
			t.Errorf("exit %d, signal %d; want 137 and 9", res.ExitCode, res.Signal)
		}
		if res.TimedOut {
			t.Error("timed_out is set for an OOM kill")
		}
		if peak := res.Usage.PeakMemoryBytes; peak < 48<<20 || peak > 64<<20 {
			t.Errorf("peak memory %d MiB, want near the 64 MiB limit", peak>>20)
		}
	})
}

func TestForkBombHitsPidsLimit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		realVM(t, b)
		agentLimits(t)
		req := sh(`bomb() { bomb | bomb & }; bomb; sleep 3; echo survived`)
		req.Limits.MaxProcesses = 64
		req.Timeout = 20 * time.Second
		res := run(t, b, req)
		if res.LimitHit != cylo.LimitPids && res.LimitHit != cylo.LimitTimeout {
			t.Errorf("limit %q, want pids (exit %d, stderr %.200q)", res.LimitHit, res.ExitCode, res.Stderr)
		}
		// The agent responded, so it survived; a second run on the backend
		// works.
		next := run(t, b, sh("echo next"))
		if string(next.Stdout) != "next\n" {
			t.Errorf("run after the fork bomb: stdout %q", next.Stdout)
		}
	})
}

func TestDiskFullGetsENOSPC(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		realVM(t, b)
		req := sh(`dd if=/dev/zero of=/work/fill bs=1M count=512 2>&1; echo marker > /work/fill-marker; ls /work`)
		req.Limits.DiskBytes = 64 << 20
		res := run(t, b, req)
		if !bytes.Contains(res.Stdout, []byte("No space left on device")) {
			t.Errorf("stdout %q, want dd to fail with ENOSPC", res.Stdout)
		}
		next := run(t, b, sh(`ls -A /work; df -k /work | tail -1`))
		if bytes.Contains(next.Stdout, []byte("fill")) {
			t.Errorf("next run sees files of the previous one: %q", next.Stdout)
		}
	})
}

func TestSignalExitReported(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		for _, sig := range []struct {
			name string
			num  int
		}{{"SEGV", 11}, {"TERM", 15}, {"KILL", 9}} {
			res := run(t, b, sh("kill -"+sig.name+" $$"))
			if res.Signal != sig.num || res.ExitCode != 128+sig.num {
				t.Errorf("kill -%s: signal %d, exit %d; want %d and %d", sig.name, res.Signal, res.ExitCode, sig.num, 128+sig.num)
			}
		}
	})
}

func TestBackgroundProcessesDoNotHoldRun(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		req := sh(`sleep 600 & setsid sleep 600 > /dev/null 2>&1 & echo done`)
		req.Timeout = 120 * time.Second
		res := run(t, b, req)
		if res.TimedOut || string(res.Stdout) != "done\n" || res.ExitCode != 0 {
			t.Errorf("timed out %v, exit %d, stdout %q; want the run to end when the program exits", res.TimedOut, res.ExitCode, res.Stdout)
		}
		if res.Usage.Wall > 10*time.Second {
			t.Errorf("program wall time %s: background processes held the run", res.Usage.Wall)
		}
	})
}

func TestNetworkOffByDefault(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		realVM(t, b)
		if isSSH(t) {
			t.Skip("the ssh transport needs the guest's network")
		}
		res := run(t, b, py(`
import os, socket
print(sorted(os.listdir("/sys/class/net")))
try:
    socket.getaddrinfo("deb.debian.org", 80)
    print("dns ok")
except OSError as e:
    print("dns failed")
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.2", 9))
    print("tcp ok")
except OSError as e:
    print("tcp failed")
`))
		want := "['lo']\ndns failed\ntcp failed\n"
		if string(res.Stdout) != want {
			t.Errorf("stdout %q, want %q (stderr %q)", res.Stdout, want, res.Stderr)
		}
	})
}

func TestZombiesReaped(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		realVM(t, b)
		// The child forks a grandchild and exits without waiting; the
		// grandchild is re-parented to init, exits, and must be reaped.
		res := run(t, b, py(`
import os, time
if os.fork() == 0:
    if os.fork() == 0:
        os._exit(0)
    os._exit(0)
os.wait()
time.sleep(1)
zombies = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    zombies.append(pid)
        except OSError:
            pass
print("zombies:", zombies)
`))
		if string(res.Stdout) != "zombies: []\n" {
			t.Errorf("stdout %q, want no zombies (stderr %q)", res.Stdout, res.Stderr)
		}
	})
}

func TestConcurrentRunsShareNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		const n = 2
		results := make([]*cylo.Result, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req := sh(fmt.Sprintf(`echo %d > mine-%d; sleep 1; ls`, i, i))
				results[i] = run(t, b, req)
			}()
		}
		wg.Wait()
		ids := map[string]bool{}
		for i, res := range results {
			if res == nil {
				continue
			}
			want := fmt.Sprintf("main.sh\nmine-%d\n", i)
			if string(res.Stdout) != want {
				t.Errorf("run %d sees %q, want only its own files %q", i, res.Stdout, want)
			}
			ids[res.Metadata.VMID] = true
		}
		if len(ids) != n {
			t.Errorf("vm ids %v, want %d distinct", ids, n)
		}
	})
}

func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func pattern(mod int) []byte {
	b := make([]byte, 65536)
	for i := range b {
		b[i] = byte(i % mod)
	}
	return b
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestNetworkOnGivesOnlyItsOwnLink(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b cylo.Backend) {
		realVM(t, b)
		if isSSH(t) {
			t.Skip("the ssh transport always has a network; TestNetworkOffByDefault covers the agent")
		}
		// The guest gets eth0 on a TAP device in a namespace of the VM's
		// own; no service listens at the host end, and no other address exists.
		req := py(`
import os, socket
print(sorted(os.listdir("/sys/class/net")))
gw = [l.split()[2] for l in open("/proc/net/route").read().splitlines()[1:] if l.split()[1] == "00000000"]
print("default route:", len(gw) == 1)
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.2", 9))
    print("tcp ok")
except OSError:
    print("tcp failed")
`)
		req.Network = true
		res := run(t, b, req)
		want := "['eth0', 'lo']\ndefault route: True\ntcp failed\n"
		if string(res.Stdout) != want {
			t.Errorf("stdout %q, want %q (stderr %q)", res.Stdout, want, res.Stderr)
		}
		if left := leftovers(t); len(left) > 0 {
			t.Errorf("left after the run: %v", left)
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "cylo-") {
			t.Errorf("network namespaces left: %s", out)
		}
	})
}
