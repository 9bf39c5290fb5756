// Package backend constructs cylo's backends from one Options struct: it
// finds the guest image and the agent binary, then configures the QEMU or
// Firecracker driver. The drivers themselves are internal packages; this
// is their public entry point.
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/image"
	"github.com/cylo-dev/cylo/internal/qemu"
	"github.com/cylo-dev/cylo/internal/sshexec"
)

// Backend names.
const (
	QEMU        = "qemu"
	Firecracker = "firecracker"
)

// Names lists the backends in the order Auto tries them.
var Names = []string{Firecracker, QEMU}

// Options configure New. Zero fields take the defaults stated on them.
type Options struct {
	// Profile is the guest image profile: base, full or ssh. Default base.
	Profile string
	// CacheDir contains built images. Default: the user cache directory's
	// cylo/images.
	CacheDir string
	// AgentPath is the cylo-agent binary inside the image. Default: a
	// cylo-agent next to the running executable, else on PATH.
	AgentPath string

	// QEMUBinary and Accelerator configure the qemu backend (see
	// qemu.Config). Default qemu-system-x86_64 and automatic.
	QEMUBinary  string
	Accelerator string

	// FirecrackerBinary is the firecracker binary. Default: firecracker
	// on PATH.
	FirecrackerBinary string

	// Transport is the path code takes into the guest: cylo.TransportAgent
	// (the default) or cylo.TransportSSH. With ssh the default Profile is ssh.
	Transport string
	// SSH is how to log in with the ssh transport. Settings left empty
	// take the image's: its recorded host key, and its generated client
	// key when no key, password or agent is set. An empty Host means the
	// guest cylo boots.
	SSH sshexec.Config
	// Network is the guest network of the ssh transport: "user" (QEMU
	// only, the default there) or "tap" (the default on Firecracker).
	Network string
	// TAPName names the guest's TAP device in network mode tap. Default:
	// "cylo" and the VM id.
	TAPName string
	// BootTimeout bounds the wait from VMM start until the guest agent or
	// SSH server responds. Zero means the driver's default.
	BootTimeout time.Duration

	// Logger receives lifecycle messages. Nil discards them.
	Logger *slog.Logger
}

// ErrUnknownBackend is wrapped by New for a name it does not know.
var ErrUnknownBackend = errors.New("unknown backend")

// New returns the backend called name. It does not check the host: call
// Health for that.
func New(name string, o Options) (cylo.Backend, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Profile == "" && o.Transport == cylo.TransportSSH {
		o.Profile = string(image.ProfileSSH)
	}
	switch name {
	case QEMU:
		return newQEMU(o)
	case Firecracker:
		return newFirecracker(o)
	default:
		return nil, fmt.Errorf("%w %q: use qemu or firecracker", ErrUnknownBackend, name)
	}
}

// validate reports an option that no backend could use.
func (o Options) validate() error {
	if o.Profile != "" && !slices.Contains(image.Profiles(), image.Profile(o.Profile)) {
		return fmt.Errorf("unknown image profile %q: use base, full or ssh", o.Profile)
	}
	return nil
}

// Auto returns the first backend in Names whose Health is usable, and the
// health of every backend it tried.
func Auto(ctx context.Context, o Options) (cylo.Backend, []cylo.Health, error) {
	if err := o.validate(); err != nil {
		return nil, nil, err
	}
	var tried []cylo.Health
	for _, name := range Names {
		b, err := New(name, o)
		if err != nil {
			tried = append(tried, cylo.Health{Backend: name, Reason: err.Error()})
			continue
		}
		h := b.Health(ctx)
		tried = append(tried, h)
		if h.Usable {
			return b, tried, nil
		}
	}
	return nil, tried, errors.New("no usable backend: run cylo doctor to see why")
}

// FindImage returns the built image for o. When only the agent changed
// since the image was built (a rebuilt cylo-agent), it writes a new
// initramfs from the cached kernel and root filesystem. It never
// downloads packages or runs debootstrap.
func FindImage(o Options) (*image.Image, error) {
	agentPath, err := FindAgent(o.AgentPath)
	if err != nil {
		return nil, err
	}
	io := image.Options{
		Profile:   image.Profile(o.Profile),
		AgentPath: agentPath,
		CacheDir:  o.CacheDir,
	}
	img, err := image.Lookup(io)
	if err == nil || !errors.Is(err, image.ErrNotBuilt) {
		return img, err
	}
	io.CachedOnly = true
	img, refreshErr := image.Build(context.Background(), io)
	if errors.Is(refreshErr, image.ErrNotBuilt) {
		// Nothing is cached for this profile: the Lookup error names the
		// build command a user needs.
		return nil, err
	}
	if refreshErr != nil {
		return nil, fmt.Errorf("%w (refreshing the initramfs from the cache failed: %v)", err, refreshErr)
	}
	return img, nil
}

// FindAgent returns the cylo-agent binary: path when set, else the one
// next to the running executable, else the one on PATH.
func FindAgent(path string) (string, error) {
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("agent binary %s: %w", path, err)
		}
		return path, nil
	}
	if self, err := os.Executable(); err == nil {
		candidate := filepath.Join(filepath.Dir(self), "cylo-agent")
		if _, err := os.Stat(candidate); err == nil {
			return candidate, nil
		}
	}
	if found, err := exec.LookPath("cylo-agent"); err == nil {
		return found, nil
	}
	return "", errors.New("cylo-agent binary not found next to cylo or on PATH: build it with CGO_ENABLED=0 go build -o bin/cylo-agent ./cmd/cylo-agent, or pass its path")
}

func newQEMU(o Options) (cylo.Backend, error) {
	cfg := qemu.Config{
		Binary:      o.QEMUBinary,
		Accelerator: o.Accelerator,
		Logger:      o.Logger.With("vmm", QEMU),
		BootTimeout: o.BootTimeout,
	}
	img, imgErr := FindImage(o)
	if imgErr == nil {
		cfg.Kernel, cfg.Initrd, cfg.Rootfs = img.Kernel, img.Initrd, img.Rootfs
		cfg.ImageName = string(img.Profile) + "-" + img.Key
		// Without an image the ssh settings cannot be completed; Health
		// and Run then report the missing image.
		cfg.Transport, cfg.Network, cfg.TAPName = o.Transport, o.Network, o.TAPName
		cfg.SSH = sshWithImage(o.SSH, img)
	}
	d, err := qemu.New(cfg)
	if err != nil {
		return nil, err
	}
	if imgErr != nil {
		return &missingImage{Backend: d, err: imgErr}, nil
	}
	return d, nil
}

// missingImage is a backend whose image is not built. Its Health and Run
// errors name the command that builds it.
type missingImage struct {
	cylo.Backend
	err error
}

func (m *missingImage) Health(ctx context.Context) cylo.Health {
	h := m.Backend.Health(ctx)
	h.Usable = false
	h.Reason = m.err.Error()
	return h
}

func (m *missingImage) Run(ctx context.Context, req *cylo.Request) (*cylo.Result, error) {
	return nil, m.err
}
