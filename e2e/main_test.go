// Package e2e runs cylo end to end: real guests under QEMU (TCG here, KVM
// where the host has it), the Firecracker driver against its test double,
// and the cylo CLI as a user runs it.
//
// The tests need root (VMs, cgroups), the images built by scripts/test
// and CYLO_VM_TESTS=1; without that they skip and say how to run them.
package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/backend"
	"github.com/cylo-dev/cylo/internal/firecracker"
	"github.com/cylo-dev/cylo/internal/firecracker/fctest"
	"github.com/cylo-dev/cylo/internal/kvm"
	"github.com/cylo-dev/cylo/internal/qemu"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// env is what TestMain found: binaries and images.
var env struct {
	skip      string
	agent     string // cylo-agent binary
	cylo      string // cylo CLI binary
	fake      string // fake-firecracker, the Firecracker test double
	runDir    string // CYLO_RUN_DIR of the tests
	specFound bool
}

func TestMain(m *testing.M) {
	if os.Getenv("CYLO_VM_TESTS") != "1" {
		env.skip = "boots real VMs: run scripts/test, or set CYLO_VM_TESTS=1 and CYLO_AGENT after building the images"
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "cylo-e2e-")
	if err == nil {
		err = setup(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func setup(dir string) error {
	var err error
	env.agent, err = backend.FindAgent(os.Getenv("CYLO_AGENT"))
	if err != nil {
		return err
	}
	env.cylo = os.Getenv("CYLO_BIN")
	if env.cylo == "" {
		env.cylo = filepath.Join(filepath.Dir(env.agent), "cylo")
	}
	if _, err := os.Stat(env.cylo); err != nil {
		return fmt.Errorf("cylo binary: %w: set CYLO_BIN or build it with scripts/build", err)
	}
	env.fake, err = fctest.Build(dir, fctest.FakePackage)
	if err != nil {
		return err
	}
	// VMs of this test process and of the cylo processes it starts live
	// under a run directory of its own, so leftovers sees only them and
	// not VMs of other cylo users on the host.
	env.runDir = filepath.Join(dir, "run")
	os.Setenv(vmstate.RunDirEnv, env.runDir)
	if _, err := fctest.FindSpec(); err == nil {
		env.specFound = true
	}
	os.Setenv(fctest.EnvAgentBin, env.agent)
	return nil
}

func needVMs(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
}

// backendNames are the backends every property test runs on: QEMU with
// the agent, the Firecracker driver against its test double, and QEMU
// with the SSH transport (the ssh image, sshd in the guest). A real
// Firecracker joins them when CYLO_FIRECRACKER_BIN names one.
var backendNames = []string{backend.QEMU, "firecracker-double", "qemu-ssh", "firecracker"}

// newBackend returns a backend for name with the image of profile.
func newBackend(t *testing.T, name, profile string) cylo.Backend {
	t.Helper()
	needVMs(t)
	o := backend.Options{Profile: profile, AgentPath: env.agent}
	img, err := backend.FindImage(o)
	if err != nil {
		t.Fatalf("image %s: %v", profile, err)
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	switch name {
	case backend.QEMU:
		d, err := qemu.New(qemu.Config{
			Kernel: img.Kernel, Initrd: img.Initrd, Rootfs: img.Rootfs,
			ImageName:   string(img.Profile),
			BootTimeout: 90 * time.Second,
			Logger:      logger,
		})
		if err != nil {
			t.Fatal(err)
		}
		return d
	case "qemu-ssh":
		b, err := backend.New(backend.QEMU, backend.Options{
			Profile:     "ssh",
			AgentPath:   env.agent,
			Transport:   cylo.TransportSSH,
			BootTimeout: 90 * time.Second,
			Logger:      logger,
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	case backend.Firecracker:
		bin := os.Getenv("CYLO_FIRECRACKER_BIN")
		if bin == "" {
			t.Skip("set CYLO_FIRECRACKER_BIN=/path/to/firecracker (1.8 or later) on a host with kvm_intel or kvm_amd to run this suite on a real Firecracker")
		}
		d, err := firecracker.New(firecracker.Config{
			Binary:     bin,
			KernelPath: img.VMLinux, InitrdPath: img.Initrd, RootfsPath: img.Rootfs,
			Logger: logger,
		})
		if err != nil {
			t.Fatal(err)
		}
		if h := d.Health(context.Background()); !h.Usable {
			t.Fatalf("CYLO_FIRECRACKER_BIN is set but the firecracker backend is unusable: %s", h.Reason)
		}
		return d
	case "firecracker-double":
		if !env.specFound {
			t.Skip("the Firecracker API spec was not found: see fctest.FindSpec")
		}
		d, err := firecracker.New(firecracker.Config{
			Binary:     env.fake,
			KernelPath: img.VMLinux, InitrdPath: img.Initrd, RootfsPath: img.Rootfs,
			Logger: logger,
			// The test double runs the agent as a host process: it needs
			// no KVM, which this host may lack.
			KVMCheck: func() kvm.Status { return kvm.Status{Usable: true, Device: "(test double)"} },
		})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	t.Fatalf("unknown backend %q", name)
	return nil
}

// run runs req on b and fails the test when cylo itself fails.
func run(t *testing.T, b cylo.Backend, req *cylo.Request) *cylo.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := cylo.Run(ctx, b, req)
	if err != nil {
		t.Fatalf("run %s snippet on %s: %v", req.Language, b.Name(), err)
	}
	return res
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// leftovers lists VMM processes and runtime directories that remain.
func leftovers(t *testing.T) []string {
	t.Helper()
	var found []string
	// VMM command lines name sockets in their runtime directory.
	out, _ := exec.Command("pgrep", "-a", "-f", env.runDir+"/vm/").Output()
	if len(out) > 0 {
		found = append(found, string(out))
	}
	entries, _ := os.ReadDir(filepath.Join(env.runDir, "vm"))
	for _, e := range entries {
		found = append(found, "runtime dir "+filepath.Join(env.runDir, "vm", e.Name()))
	}
	return found
}
