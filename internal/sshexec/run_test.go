package sshexec

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/crypto/ssh"
)

// runResult is a Run's status and output.
type runResult struct {
	status *Status
	stdout []byte
	stderr []byte
}

// runBash runs code as a bash snippet on client and checks that Run left
// no control directory behind.
func runBash(t *testing.T, client *ssh.Client, code string, ex Exec) (*runResult, error) {
	t.Helper()
	before := controlDirs(t)
	var stdout, stderr bytes.Buffer
	ex.Language = "bash"
	ex.Code = code
	ex.Stdout = &stdout
	ex.Stderr = &stderr

	status, err := Run(context.Background(), client, ex)

	if left := newEntries(before, controlDirs(t)); len(left) > 0 {
		t.Errorf("Run left control directories behind: %v", left)
	}
	return &runResult{status: status, stdout: stdout.Bytes(), stderr: stderr.Bytes()}, err
}

func mustRunBash(t *testing.T, client *ssh.Client, code string, ex Exec) *runResult {
	t.Helper()
	res, err := runBash(t, client, code, ex)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

var controlDir = regexp.MustCompile(`^/tmp/cylo-[0-9a-f]{16}$`)

// controlDirs lists Run's control directories on this host, where the test's sshd runs.
func controlDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob("/tmp/cylo-*")
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(dirs, func(d string) bool { return !controlDir.MatchString(d) })
}

func newEntries(before, after []string) []string {
	var added []string
	for _, d := range after {
		if !slices.Contains(before, d) {
			added = append(added, d)
		}
	}
	return added
}

// marker returns a sleep duration that no other process on the host uses,
// so that pgrep finds only the processes of one test.
func marker(t *testing.T) string {
	n, err := rand.Int(rand.Reader, big.NewInt(1_000_000))
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("1000.%06d", n.Int64())
}

// processesWith returns the host's processes whose command line contains
// pattern, as pgrep -a prints them.
func processesWith(t *testing.T, pattern string) string {
	t.Helper()
	out, err := exec.Command("pgrep", "-a", "-f", pattern).Output()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.ExitCode() == 1 {
		return ""
	}
	if err != nil {
		t.Fatalf("pgrep: %v", err)
	}
	return string(out)
}

// assertNoProcesses fails unless no process with pattern in its command
// line remains within one second. SIGKILL is delivered asynchronously, so
// a killed process may be visible for a moment.
func assertNoProcesses(t *testing.T, pattern string) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		left := processesWith(t, pattern)
		if left == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left after the run:\n%s", left)
			exec.Command("pkill", "-KILL", "-f", pattern).Run()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRun(t *testing.T) {
	noAgent(t)
	s := startSSHD(t)
	client := s.dial(t, s.config())

	t.Run("exit code", func(t *testing.T) {
		res := mustRunBash(t, client, "echo out; echo err >&2; exit 5", Exec{})
		if res.status.ExitCode != 5 || res.status.Signal != 0 {
			t.Errorf("exit code %d signal %d, want 5 and 0", res.status.ExitCode, res.status.Signal)
		}
		if string(res.stdout) != "out\n" {
			t.Errorf("stdout = %q, want out", res.stdout)
		}
		if string(res.stderr) != "err\n" {
			t.Errorf("stderr = %q, want err", res.stderr)
		}
	})

	t.Run("killed by signal", func(t *testing.T) {
		res := mustRunBash(t, client, "kill -KILL $$", Exec{})
		if res.status.Signal != 9 {
			t.Errorf("signal = %d, want 9", res.status.Signal)
		}
		if res.status.ExitCode != 137 {
			t.Errorf("exit code = %d, want 137", res.status.ExitCode)
		}
		if res.status.TimedOut {
			t.Error("TimedOut is set for a program that killed itself")
		}
	})

	t.Run("raw bytes without newline", func(t *testing.T) {
		res := mustRunBash(t, client, `printf '\xff\xfe\x00a\r\nb'; printf '\x80err' >&2`, Exec{})
		if want := []byte{0xff, 0xfe, 0, 'a', '\r', '\n', 'b'}; !bytes.Equal(res.stdout, want) {
			t.Errorf("stdout = %q, want %q", res.stdout, want)
		}
		if want := []byte{0x80, 'e', 'r', 'r'}; !bytes.Equal(res.stderr, want) {
			t.Errorf("stderr = %q, want %q", res.stderr, want)
		}
	})

	t.Run("code written unchanged", func(t *testing.T) {
		// Quotes, $, backquotes and a heredoc terminator must reach bash
		// as written: any shell expansion on the way changes the output.
		code := "cat <<'EOF'\n$HOME `id` \"q\" 'q' \\n\nEOF\nprintf '%s' \"$(cat main.sh | wc -c)\"\n"
		res := mustRunBash(t, client, code, Exec{})
		want := fmt.Sprintf("$HOME `id` \"q\" 'q' \\n\n%d", len(code))
		if string(res.stdout) != want {
			t.Errorf("stdout = %q, want %q", res.stdout, want)
		}
	})

	t.Run("stdin forwarded", func(t *testing.T) {
		input := append(randomBytes(t, 100_000), []byte("\x00\xff no newline")...)
		res := mustRunBash(t, client, "cat", Exec{Stdin: bytes.NewReader(input), Timeout: 10 * time.Second})
		if !bytes.Equal(res.stdout, input) {
			t.Errorf("stdout has %d bytes, want the %d bytes of stdin unchanged", len(res.stdout), len(input))
		}
	})

	t.Run("stdin left unread", func(t *testing.T) {
		res := mustRunBash(t, client, "head -c 5", Exec{Stdin: bytes.NewReader(make([]byte, 20<<20)), Timeout: 10 * time.Second})
		if res.status.ExitCode != 0 {
			t.Errorf("exit code = %d, want 0", res.status.ExitCode)
		}
		if !bytes.Equal(res.stdout, make([]byte, 5)) {
			t.Errorf("stdout = %q, want 5 NUL bytes", res.stdout)
		}
	})

	t.Run("stdin read error", func(t *testing.T) {
		stdin := io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(errors.New("disk gone")))
		_, err := runBash(t, client, "cat >/dev/null", Exec{Stdin: stdin, Timeout: 10 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "read the program's stdin: disk gone") {
			t.Errorf("err = %v, want the stdin read error", err)
		}
	})

	t.Run("no stdin reads EOF", func(t *testing.T) {
		res := mustRunBash(t, client, "cat; echo done", Exec{Timeout: 5 * time.Second})
		if res.status.TimedOut {
			t.Fatal("cat waited for stdin until the timeout")
		}
		if string(res.stdout) != "done\n" {
			t.Errorf("stdout = %q, want done", res.stdout)
		}
	})

	t.Run("env exact", func(t *testing.T) {
		env := map[string]string{
			"SPACES":    "  two  spaces  ",
			"NEWLINES":  "line1\nline2\n\n",
			"QUOTES":    `it's "quoted" '' '\''`,
			"BACKSLASH": `a\b\\c\n\t\`,
			"DOLLAR":    "$HOME ${PATH} $(id) `id` !! *",
			"EMPTY":     "",
			"UNICODE":   "żółw 🐢",
			"RAW":       "\xff\xfe",
		}
		var code strings.Builder
		names := make([]string, 0, len(env))
		for name := range env {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			fmt.Fprintf(&code, "printf '%%s\\0' \"${%s-unset}\"\n", name)
		}

		res := mustRunBash(t, client, code.String(), Exec{Env: env})

		got := strings.Split(strings.TrimSuffix(string(res.stdout), "\x00"), "\x00")
		if len(got) != len(names) {
			t.Fatalf("got %d values %q, want %d", len(got), got, len(names))
		}
		for i, name := range names {
			if got[i] != env[name] {
				t.Errorf("$%s = %q, want %q", name, got[i], env[name])
			}
		}
	})

	t.Run("working directory and files", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "new", "work")
		files := map[string][]byte{
			"data/in.txt": []byte("payload\n"),
			"top.bin":     {0, 1, 2, 0xff},
		}
		res := mustRunBash(t, client, "pwd; cat data/in.txt; od -An -tx1 top.bin", Exec{Dir: dir, Files: files})

		want := dir + "\npayload\n 00 01 02 ff\n"
		if string(res.stdout) != want {
			t.Errorf("stdout = %q, want %q", res.stdout, want)
		}
		if _, err := os.Stat(filepath.Dir(dir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Run created %s but did not delete it (stat: %v)", filepath.Dir(dir), err)
		}
	})

	t.Run("existing working directory kept", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "keep.txt"), []byte("mine"), 0o600); err != nil {
			t.Fatal(err)
		}
		mustRunBash(t, client, "echo made >made.txt", Exec{Dir: dir, Files: map[string][]byte{"sub/f": []byte("x")}})

		if _, err := os.Stat(filepath.Join(dir, "keep.txt")); err != nil {
			t.Errorf("a file that was there before is gone: %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "made.txt")); err != nil {
			t.Errorf("a file the program wrote is gone: %v", err)
		}
		for _, name := range []string{"main.sh", "sub"} {
			if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s written by Run was not deleted (stat: %v)", name, err)
			}
		}
	})

	t.Run("large interleaved output", func(t *testing.T) {
		const size = 3 << 20
		stdout := randomBytes(t, size)
		stderr := randomBytes(t, size)
		// Alternate 64 KiB blocks between the two streams, so that both
		// pipes are busy at once.
		code := `for ((i = 0; i < 48; i++)); do
	dd if=out.bin bs=65536 skip=$i count=1 status=none
	dd if=err.bin bs=65536 skip=$i count=1 status=none >&2
done`
		res := mustRunBash(t, client, code, Exec{
			Files:   map[string][]byte{"out.bin": stdout, "err.bin": stderr},
			Timeout: 30 * time.Second,
		})

		if !bytes.Equal(res.stdout, stdout) {
			t.Errorf("stdout: got %d bytes, want the %d bytes written", len(res.stdout), len(stdout))
		}
		if !bytes.Equal(res.stderr, stderr) {
			t.Errorf("stderr: got %d bytes, want the %d bytes written", len(res.stderr), len(stderr))
		}
		if res.status.ExitCode != 0 || res.status.Truncated {
			t.Errorf("status = %+v, want exit 0 and no truncation", res.status)
		}
	})

	t.Run("output cap", func(t *testing.T) {
		const max = 100_000
		mark := marker(t)
		code := "sleep " + mark + " &\nwhile :; do printf 0123456789; printf ab >&2; done"
		res := mustRunBash(t, client, code, Exec{MaxOutputBytes: max, Timeout: 20 * time.Second})

		if !res.status.Truncated {
			t.Error("Truncated is not set")
		}
		if res.status.TimedOut {
			t.Error("the program ran until the timeout: the cap did not stop it")
		}
		if got := len(res.stdout) + len(res.stderr); got != max {
			t.Errorf("kept %d bytes, want exactly %d", got, max)
		}
		if !bytes.HasPrefix([]byte(strings.Repeat("0123456789", max/10)), res.stdout) {
			t.Errorf("stdout is not a prefix of the output: %q...", res.stdout[:min(len(res.stdout), 40)])
		}
		if res.status.Signal != 9 {
			t.Errorf("signal = %d, want 9", res.status.Signal)
		}
		assertNoProcesses(t, "sleep "+mark)
	})

	t.Run("timeout kills every process", func(t *testing.T) {
		mark := marker(t)
		code := fmt.Sprintf(`trap '' TERM HUP INT
sleep %[1]s &
setsid sleep %[1]s &
bash -c "trap '' TERM HUP; sleep %[1]s" &
setsid bash -c "trap '' TERM HUP; sleep %[1]s; true" &
echo started
sleep %[1]s
`, mark)
		res := mustRunBash(t, client, code, Exec{Timeout: time.Second})

		if !res.status.TimedOut {
			t.Error("TimedOut is not set")
		}
		if res.status.Signal != 9 || res.status.ExitCode != 137 {
			t.Errorf("signal %d exit code %d, want 9 and 137", res.status.Signal, res.status.ExitCode)
		}
		if string(res.stdout) != "started\n" {
			t.Errorf("stdout = %q, want started", res.stdout)
		}
		if res.status.Wall < time.Second || res.status.Wall > 5*time.Second {
			t.Errorf("wall = %s, want about the 1s timeout", res.status.Wall)
		}
		assertNoProcesses(t, mark)
	})

	t.Run("background process killed at exit", func(t *testing.T) {
		// The background sleep keeps stdout open after bash exits; the
		// watcher kills it, so the run ends long before its timeout.
		mark := marker(t)
		res := mustRunBash(t, client, "sleep "+mark+" &\nexit 3", Exec{Timeout: 30 * time.Second})

		if res.status.TimedOut {
			t.Error("TimedOut is set: the background process held the run until the timeout")
		}
		if res.status.Wall > 10*time.Second {
			t.Errorf("wall time %s, want the run to end when bash exits", res.status.Wall)
		}
		if res.status.ExitCode != 3 {
			t.Errorf("exit code = %d, want 3, the status bash exited with", res.status.ExitCode)
		}
		assertNoProcesses(t, mark)
	})

	t.Run("context canceled", func(t *testing.T) {
		mark := marker(t)
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		before := controlDirs(t)

		_, err := Run(ctx, client, Exec{Language: "bash", Code: "sleep " + mark})

		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
		}
		if left := newEntries(before, controlDirs(t)); len(left) > 0 {
			t.Errorf("Run left control directories behind: %v", left)
		}
		assertNoProcesses(t, mark)
	})

	t.Run("wall time", func(t *testing.T) {
		res := mustRunBash(t, client, "sleep 0.3", Exec{})
		if res.status.Wall < 300*time.Millisecond || res.status.Wall > 3*time.Second {
			t.Errorf("wall = %s, want about 300ms", res.status.Wall)
		}
	})

	t.Run("language table", func(t *testing.T) {
		// Each language runs its file with the table's argv and Env.
		cases := []struct {
			language string
			tool     string
			code     string
			want     string
		}{
			{"python", "python3", "import os, sys\nprint(sys.argv, os.environ.get('PYTHONDONTWRITEBYTECODE'), end='')", "['main.py'] 1"},
			{"javascript", "node", "process.stdout.write(require('path').basename(process.argv[1]))", "main.js"},
		}
		for _, tc := range cases {
			t.Run(tc.language, func(t *testing.T) {
				if remoteOutput(t, client, "command -v "+tc.tool+" || true") == "" {
					t.Skipf("%s is not installed on the test host", tc.tool)
				}
				var stdout, stderr bytes.Buffer
				status, err := Run(context.Background(), client, Exec{Language: tc.language, Code: tc.code, Stdout: &stdout, Stderr: &stderr})
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if status.ExitCode != 0 {
					t.Errorf("exit code = %d, stderr %q, want 0", status.ExitCode, stderr.String())
				}
				if stdout.String() != tc.want {
					t.Errorf("stdout = %q, want %q", stdout.String(), tc.want)
				}
			})
		}
	})

	t.Run("invalid exec", func(t *testing.T) {
		cases := []struct {
			name    string
			ex      Exec
			wantErr string
		}{
			{"unknown language", Exec{Language: "cobol"}, `unknown language "cobol"`},
			{"env name", Exec{Language: "bash", Env: map[string]string{"A-B": "x"}}, `invalid environment variable name "A-B"`},
			{"env NUL", Exec{Language: "bash", Env: map[string]string{"A": "x\x00y"}}, "NUL"},
			{"file outside", Exec{Language: "bash", Files: map[string][]byte{"../x": nil}}, `file "../x"`},
			{"file absolute", Exec{Language: "bash", Files: map[string][]byte{"/etc/x": nil}}, `file "/etc/x"`},
			{"file is code", Exec{Language: "bash", Files: map[string][]byte{"./main.sh": nil}}, "name of the code file"},
			{"relative dir", Exec{Language: "bash", Dir: "work"}, "must be an absolute path"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				_, err := Run(context.Background(), client, tc.ex)
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err = %v, want it to contain %q", err, tc.wantErr)
				}
			})
		}
	})
}
