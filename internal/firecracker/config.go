package firecracker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/kvm"
	"github.com/cylo-dev/cylo/internal/sshexec"
	"github.com/cylo-dev/cylo/internal/vmnet"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// Config configures a Driver. Zero values mean the defaults listed.
type Config struct {
	// Binary is the firecracker executable. Empty means "firecracker" on
	// PATH.
	Binary string
	// KernelPath is the guest kernel as an uncompressed ELF vmlinux, the
	// only x86_64 format Firecracker loads. Required.
	KernelPath string
	// InitrdPath is cylo's initramfs, which loads the virtio modules,
	// mounts the read-only rootfs and starts the agent. Required.
	InitrdPath string
	// RootfsPath is the read-only root filesystem image. Required.
	RootfsPath string
	// RuntimeBase is the parent of the per-VM runtime directories that
	// contain the API socket, the vsock socket, logs, metrics and the
	// scratch disk. Empty means vmstate.RuntimeBase().
	RuntimeBase string
	// StateDir is the vmstate directory where each VM is registered for
	// `cylo gc`. Empty means vmstate.Dir().
	StateDir string
	// Logger receives lifecycle lines at Info and API traffic at Debug.
	// Nil discards.
	Logger *slog.Logger

	// SocketTimeout bounds the wait for the API socket after the process
	// starts. Zero means 5s.
	SocketTimeout time.Duration
	// BootTimeout bounds the time from InstanceStart until the guest agent
	// responds. Zero means 30s.
	BootTimeout time.Duration
	// ShutdownGrace is how long Close waits for the guest to exit after
	// SendCtrlAltDel before it kills the process group. Zero means 1s.
	ShutdownGrace time.Duration
	// TeardownTimeout bounds the whole teardown, which runs even when the
	// request's context has ended. Zero means 10s.
	TeardownTimeout time.Duration
	// MemoryOverheadMiB is added to the request's memory limit to size
	// the guest, for the kernel, the agent and the page cache. Zero means
	// 128.
	MemoryOverheadMiB int

	// KVMCheck reports whether /dev/kvm can run guests. Nil means
	// kvm.Check. Tests replace it.
	KVMCheck func() kvm.Status

	// Transport is cylo.TransportAgent (the default when empty) or
	// cylo.TransportSSH. With ssh every guest gets a TAP device, boots
	// with cylo.mode=ssh and runs requests over SSH.
	Transport string
	// SSH is how to log in to the guest with the ssh transport. An empty
	// Host means the guest's address on its TAP link.
	SSH sshexec.Config
	// Network is the guest network of the ssh transport. Only
	// vmnet.ModeTAP, the default, exists for Firecracker.
	Network string
	// TAPName names the TAP device. Empty means "cylo" and the VM id.
	// Each VM's device sits in a network namespace of its own, so a
	// fixed name does not clash between VMs.
	TAPName string
}

// Defaults of the zero Config fields.
const (
	DefaultSocketTimeout     = 5 * time.Second
	DefaultBootTimeout       = 30 * time.Second
	DefaultShutdownGrace     = time.Second
	DefaultTeardownTimeout   = 10 * time.Second
	DefaultMemoryOverheadMiB = 128
)

// ErrBinaryNotFound is wrapped by errors that report a missing firecracker
// binary.
var ErrBinaryNotFound = errors.New("firecracker binary not found")

// Validate reports the first missing or invalid field. It does not check
// that the files exist; Health does.
func (c *Config) Validate() error {
	switch {
	case c.KernelPath == "":
		return errors.New("firecracker: kernel path is empty: set it to the guest vmlinux")
	case c.InitrdPath == "":
		return errors.New("firecracker: initrd path is empty: set it to cylo's initramfs")
	case c.RootfsPath == "":
		return errors.New("firecracker: rootfs path is empty: set it to the guest root filesystem image")
	case c.SocketTimeout < 0, c.BootTimeout < 0, c.ShutdownGrace < 0, c.TeardownTimeout < 0:
		return errors.New("firecracker: timeouts must not be negative: use 0 for the default")
	case c.MemoryOverheadMiB < 0:
		return fmt.Errorf("firecracker: memory overhead %d MiB is negative: use 0 for the default", c.MemoryOverheadMiB)
	}
	return c.validateTransport()
}

// validateTransport checks the transport and network settings.
func (c *Config) validateTransport() error {
	if c.Network != vmnet.ModeNone && c.Network != vmnet.ModeTAP {
		return fmt.Errorf("firecracker: network mode %q is not supported: use tap, the default (user networking exists on qemu only)", c.Network)
	}
	if _, err := vmnet.PlanTAP("00000000", c.TAPName); err != nil {
		return fmt.Errorf("firecracker: %w", err)
	}
	switch c.Transport {
	case "", cylo.TransportAgent:
		return nil
	case cylo.TransportSSH:
	default:
		return fmt.Errorf("firecracker: unknown transport %q: use agent or ssh", c.Transport)
	}
	check := c.SSH
	if check.Host == "" {
		check.Host = "guest" // the guest's TAP address, known per VM
	}
	return check.Validate()
}

// withDefaults returns a copy of c with every zero field set.
func (c Config) withDefaults() Config {
	if c.RuntimeBase == "" {
		c.RuntimeBase = vmstate.RuntimeBase()
	}
	if c.StateDir == "" {
		c.StateDir = vmstate.Dir()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.SocketTimeout == 0 {
		c.SocketTimeout = DefaultSocketTimeout
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = DefaultBootTimeout
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.TeardownTimeout == 0 {
		c.TeardownTimeout = DefaultTeardownTimeout
	}
	if c.MemoryOverheadMiB == 0 {
		c.MemoryOverheadMiB = DefaultMemoryOverheadMiB
	}
	if c.KVMCheck == nil {
		c.KVMCheck = kvm.Check
	}
	if c.Transport == "" {
		c.Transport = cylo.TransportAgent
	}
	return c
}

// findBinary resolves c.Binary, or firecracker on PATH.
func (c *Config) findBinary() (string, error) {
	if c.Binary != "" {
		info, err := os.Stat(c.Binary)
		if err != nil {
			return "", fmt.Errorf("%w at %s: install it or set --firecracker-bin", ErrBinaryNotFound, c.Binary)
		}
		if info.IsDir() || info.Mode().Perm()&0o111 == 0 {
			return "", fmt.Errorf("firecracker binary %s is not executable: chmod +x it or set --firecracker-bin", c.Binary)
		}
		// The process starts in its runtime directory, where a relative
		// path would no longer resolve.
		return filepath.Abs(c.Binary)
	}
	path, err := exec.LookPath("firecracker")
	if err != nil {
		return "", fmt.Errorf("%w on PATH: install it or set --firecracker-bin", ErrBinaryNotFound)
	}
	return path, nil
}
