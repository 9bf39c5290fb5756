// Package qemu is the QEMU driver: it boots cylo's guest image on QEMU's
// microvm machine, with KVM when the host has a usable one and TCG
// (software emulation) otherwise, and reaches the guest agent over vsock
// where the host has vhost-vsock, else over a virtio-serial port backed by
// a Unix socket.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/kvm"
	"github.com/cylo-dev/cylo/internal/sshexec"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// DefaultBinary is the QEMU system emulator the driver runs.
const DefaultBinary = "qemu-system-x86_64"

// Accelerators.
const (
	AccelAuto = ""
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Config configures a Driver. Zero fields take the defaults stated on them.
type Config struct {
	// Binary is the QEMU binary, a path or a name on PATH. Default
	// DefaultBinary.
	Binary string
	// Kernel is a bzImage, Initrd the initramfs with cylo-agent as /init,
	// Rootfs the ext4 root filesystem (attached read-only). Required.
	Kernel, Initrd, Rootfs string
	// ImageName is reported in Result.Metadata.Image.
	ImageName string
	// Accelerator is AccelKVM, AccelTCG or AccelAuto (KVM when kvm.Check
	// finds it usable, else TCG).
	Accelerator string
	// Channel is the agent channel: ChannelVsock (vhost-vsock, needs
	// /dev/vhost-vsock), ChannelVirtioSerial (a virtio-serial port on a
	// Unix socket, works on every host) or ChannelAuto (vsock when
	// /dev/vhost-vsock is usable, else virtio-serial).
	Channel string
	// RuntimeBase is the parent of per-VM runtime directories. Default
	// vmstate.RuntimeBase().
	RuntimeBase string
	// Store records live VMs for cylo gc. Default: the store in
	// vmstate.Dir().
	Store *vmstate.Store
	// BootTimeout bounds VMM start to agent ready. Default 60s, because
	// TCG boots take 2-5 s on an idle core and far longer on a loaded one.
	BootTimeout time.Duration
	// GuestOverheadBytes is added to the request's memory limit to size
	// the guest: the kernel, the agent and the page cache live there.
	// Default 192 MiB.
	GuestOverheadBytes int64
	// Logger receives lifecycle messages. Nil discards them.
	Logger *slog.Logger

	// Transport is cylo.TransportAgent (the default when empty) or
	// cylo.TransportSSH. With ssh the guest boots with cylo.mode=ssh, a
	// network interface and the image's sshd, and requests run over SSH.
	Transport string
	// SSH is how to log in to the guest with the ssh transport. An empty
	// Host means the guest this driver booted, at the address its network
	// gives it.
	SSH sshexec.Config
	// Network is the guest network of the ssh transport: vmnet.ModeUser
	// (the default) or vmnet.ModeTAP.
	Network string
	// TAPName names the TAP device in ModeTAP. Empty means "cylo" and the
	// VM id. Each VM's device sits in a network namespace of its own, so
	// a fixed name does not clash between VMs.
	TAPName string
}

// Driver runs requests in QEMU microVMs. It is safe for concurrent use.
type Driver struct {
	cfg Config

	versionOnce sync.Once
	version     string
	versionErr  error
}

// New validates cfg and returns a driver.
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 60 * time.Second
	}
	if cfg.GuestOverheadBytes == 0 {
		cfg.GuestOverheadBytes = 192 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch cfg.Accelerator {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return nil, fmt.Errorf("unknown accelerator %q: use kvm, tcg or leave it empty to choose", cfg.Accelerator)
	}
	switch cfg.Channel {
	case ChannelAuto, ChannelVirtioSerial, ChannelVsock:
	default:
		return nil, fmt.Errorf("unknown agent channel %q: use vsock, virtio-serial or leave it empty to choose", cfg.Channel)
	}
	if err := cfg.validateTransport(); err != nil {
		return nil, err
	}
	if cfg.Store == nil {
		store, err := vmstate.Open("")
		if err != nil {
			return nil, err
		}
		cfg.Store = store
	}
	return &Driver{cfg: cfg}, nil
}

// Name returns "qemu".
func (d *Driver) Name() string { return "qemu" }

// accelerator returns the accelerator to use and, for auto, why.
func (d *Driver) accelerator() (string, string) {
	if d.cfg.Accelerator != AccelAuto {
		return d.cfg.Accelerator, "set in configuration"
	}
	st := kvm.Check()
	if st.Usable {
		return AccelKVM, "/dev/kvm is usable (" + st.Module + ")"
	}
	return AccelTCG, st.Reason
}

// Health reports whether QEMU and the image are present, and which
// accelerator runs would use.
func (d *Driver) Health(ctx context.Context) cylo.Health {
	h := cylo.Health{Backend: d.Name()}
	path, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		h.Reason = fmt.Sprintf("QEMU binary %q not found: install the qemu-system-x86 package (apt-get install qemu-system-x86) or set the qemu binary path", d.cfg.Binary)
		return h
	}
	h.Details = append(h.Details, "binary: "+path)
	version, err := d.vmmVersion(ctx)
	if err != nil {
		h.Reason = fmt.Sprintf("%s does not run: %v", path, err)
		return h
	}
	h.Details = append(h.Details, "version: "+version)
	accel, why := d.accelerator()
	h.Details = append(h.Details, fmt.Sprintf("accelerator: %s (%s)", accel, why))
	channel, why := chooseChannel(d.cfg.Channel, vhostVsockDevice)
	h.Details = append(h.Details, fmt.Sprintf("agent channel: %s (%s)", channel, why))
	if accel == AccelKVM && d.cfg.Accelerator == AccelKVM {
		if st := kvm.Check(); !st.Usable {
			h.Reason = "accelerator kvm was requested but " + st.Reason
			return h
		}
	}
	for _, f := range []struct{ what, path string }{{"kernel", d.cfg.Kernel}, {"initramfs", d.cfg.Initrd}, {"root filesystem", d.cfg.Rootfs}} {
		if f.path == "" {
			h.Reason = fmt.Sprintf("no guest %s configured: build an image with cylo image build", f.what)
			return h
		}
		if _, err := os.Stat(f.path); err != nil {
			h.Reason = fmt.Sprintf("guest %s %s is missing: rebuild the image with cylo image build", f.what, f.path)
			return h
		}
	}
	h.Usable = true
	return h
}

func (d *Driver) vmmVersion(ctx context.Context) (string, error) {
	d.versionOnce.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, d.cfg.Binary, "-version").Output()
		if err != nil {
			d.versionErr = err
			return
		}
		// "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"
		first, _, _ := strings.Cut(string(out), "\n")
		d.version = strings.TrimSpace(strings.TrimPrefix(first, "QEMU emulator version "))
	})
	if d.versionErr != nil {
		return "", d.versionErr
	}
	if d.version == "" {
		return "", errors.New("empty version output")
	}
	return d.version, nil
}
