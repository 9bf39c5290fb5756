package fctest

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// Packages that tests build.
const (
	FakePackage  = "github.com/cylo-dev/cylo/internal/firecracker/fctest/cmd/fake-firecracker"
	AgentPackage = "github.com/cylo-dev/cylo/cmd/cylo-agent"
)

// Build compiles the Go package pkg into dir and returns the binary's
// path. The output of a failed build is in the error.
func Build(dir, pkg string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}
