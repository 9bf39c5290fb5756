package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cylo-dev/cylo/internal/firecracker/fctest"
)

// TestCLIFirecrackerDouble runs the CLI on the firecracker backend with
// the test double as the firecracker binary. The production driver goes
// through process start, API configuration, the vsock handshake, the
// agent, metrics and teardown. Every request it sent must validate
// against the Firecracker API definition.
func TestCLIFirecrackerDouble(t *testing.T) {
	needVMs(t)
	if !env.specFound {
		t.Skip("the Firecracker API spec was not found: see fctest.FindSpec")
	}
	record := filepath.Join(t.TempDir(), "requests.jsonl")
	cmd := exec.Command(env.cylo, "--agent", env.agent, "exec", "--backend", "firecracker",
		"--firecracker-bin", env.fake, "--skip-health-check", "--lang", "python", "print(1)")
	cmd.Env = append(os.Environ(), fctest.EnvAgentBin+"="+env.agent, fctest.EnvRecord+"="+record)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cylo exec: %v\nstderr: %s", err, stderr.String())
	}
	if stdout.String() != "1\n" {
		t.Errorf("stdout = %q, want %q", stdout.String(), "1\n")
	}

	reqs, err := fctest.ReadRequests(record)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := fctest.DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	var sequence []string
	for _, r := range reqs {
		sequence = append(sequence, r.Method+" "+r.Path)
		if r.Status >= 300 {
			t.Errorf("%s %s answered %d: %s", r.Method, r.Path, r.Status, r.Fault)
		}
		if r.Method == "GET" {
			continue
		}
		if err := spec.Validate(context.Background(), r.Method, r.Path, r.ContentType, []byte(r.Body)); err != nil {
			t.Errorf("%s %s does not validate against the spec: %v", r.Method, r.Path, err)
		}
	}
	joined := strings.Join(sequence, ", ")
	for _, want := range []string{"GET /", "PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs", "PUT /drives/scratch", "PUT /vsock", "PUT /actions"} {
		if !strings.Contains(joined, want) {
			t.Errorf("requests %s lack %s", joined, want)
		}
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("left after the run: %v", left)
	}
}
