package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/agentrun"
)

// snippet is one program run on every path. Host is the interpreter and
// the flag that runs code given as an argument.
type snippet struct {
	language cylo.Language
	code     string
	host     []string
}

// wantOutput is the output of every snippet. A run that prints anything
// else counts as failed, so a figure never times a broken run.
const wantOutput = "hello\n"

var snippets = []snippet{
	{cylo.Bash, `echo hello`, []string{"bash", "-c"}},
	{cylo.Python, `print("hello")`, []string{"python3", "-c"}},
	{cylo.JavaScript, `console.log("hello")`, []string{"node", "-e"}},
}

func snippetFor(language cylo.Language) (snippet, bool) {
	for _, s := range snippets {
		if s.language == language {
			return s, true
		}
	}
	return snippet{}, false
}

// request returns the cylo request that runs s, with defaults filled.
func (s snippet) request() *cylo.Request {
	req, err := (&cylo.Request{Language: s.language, Code: s.code}).WithDefaults()
	if err != nil {
		// The snippets are constants of this package.
		panic(fmt.Sprintf("bench snippet %s: %v", s.language, err))
	}
	return req
}

// floorRun is one direct run on the host.
type floorRun struct {
	wall   time.Duration
	maxRSS int64 // the child's peak resident set size, from getrusage
}

// runOnHost runs s directly on the host, with the same PATH the agent
// gives programs, so that both paths start the same interpreter.
func runOnHost(ctx context.Context, s snippet) (floorRun, error) {
	binary, err := lookPath(s.host[0])
	if err != nil {
		return floorRun{}, err
	}
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, binary, s.host[1], s.code)
	cmd.Env = agentrun.BaseEnv
	cmd.Dir = os.TempDir()
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return floorRun{}, fmt.Errorf("%s on the host: %w: %s", s.language, err, stderr.String())
	}
	if stdout.String() != wantOutput {
		return floorRun{}, fmt.Errorf("%s on the host printed %q, expected %q", s.language, stdout.String(), wantOutput)
	}
	run := floorRun{wall: wall}
	if usage, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		run.maxRSS = usage.Maxrss << 10 // Linux reports kilobytes
	}
	return run, nil
}

// lookPath finds name in the PATH of agentrun.BaseEnv, not in cylo's own
// PATH, which may put a version manager's shim first.
func lookPath(name string) (string, error) {
	var path string
	for _, kv := range agentrun.BaseEnv {
		if value, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = value
		}
	}
	for _, dir := range filepath.SplitList(path) {
		candidate := filepath.Join(dir, name)
		if info, err := os.Stat(candidate); err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0 {
			return candidate, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH %s: install it to measure the floor", name, path)
}

// hostVersion returns the first line of `name --version`, or "" when it
// cannot run.
func hostVersion(ctx context.Context, name string) string {
	binary, err := lookPath(name)
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "--version").CombinedOutput()
	if err != nil {
		return ""
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return first
}
