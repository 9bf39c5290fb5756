// Package cylo runs untrusted code snippets in microVMs and reports exactly
// what happened: exit status, stdout and stderr as separate byte streams,
// wall and CPU time, peak memory, I/O counters and which limit fired.
//
// A Request names a language and the code. A Backend (QEMU microvm or
// Firecracker) boots a fresh guest for it, runs the code through cylo's
// guest agent or over SSH, and tears the guest down.
package cylo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/cylo-dev/cylo/internal/lang"
)

// Language is the language of a snippet. The guest image decides which
// toolchain runs it; see the README for the versions in each image profile.
type Language string

// Languages supported by the default images.
const (
	Bash       Language = "bash"
	Python     Language = "python"
	JavaScript Language = "javascript"
	Go         Language = "go"
	Rust       Language = "rust"
)

// Defaults applied by Request.WithDefaults to zero fields.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultMemoryBytes    = 256 << 20
	DefaultVCPUs          = 1
	DefaultMaxProcesses   = 128
	DefaultMaxOutputBytes = 4 << 20
	DefaultDiskBytes      = 512 << 20
)

// Request is one snippet to run. The zero value of every optional field
// means the default listed next to it.
type Request struct {
	Language Language
	// Code is the program text, written unchanged to the file the
	// language's toolchain runs (for example main.py).
	Code string
	// Files are extra files placed in the working directory before the
	// run, keyed by relative path.
	Files map[string][]byte
	// Stdin is the program's standard input. Nil means the program reads
	// EOF at once.
	Stdin io.Reader
	// Env is added to the guest's base environment (PATH, LANG and HOME).
	// Names must match [A-Za-z_][A-Za-z0-9_]*.
	Env map[string]string
	// Dir is the working directory in the guest (default /work). The code
	// and Files are written there.
	Dir string
	// Timeout bounds the program's wall-clock time inside the guest
	// (default DefaultTimeout). Boot time does not count against it; the
	// caller's context bounds the whole request.
	Timeout time.Duration
	Limits  Limits
	// Network gives the guest a network interface. Off by default: the
	// guest then has only the loopback interface.
	Network bool
}

// Limits bounds the resources of one run. Zero means the default.
type Limits struct {
	MemoryBytes    int64 // memory of the program's cgroup (default DefaultMemoryBytes)
	VCPUs          int   // virtual CPUs of the guest (default DefaultVCPUs)
	MaxProcesses   int   // processes and threads in the program's cgroup (default DefaultMaxProcesses)
	MaxOutputBytes int64 // stdout plus stderr kept before the program is stopped (default DefaultMaxOutputBytes)
	DiskBytes      int64 // size of the writable scratch disk (default DefaultDiskBytes)
}

// Limit names the limit that ended a run.
type Limit string

// Limits a run can hit. LimitNone means the program ended by itself.
const (
	LimitNone    Limit = ""
	LimitTimeout Limit = "timeout"
	LimitMemory  Limit = "memory"
	LimitOutput  Limit = "output"
	LimitPids    Limit = "pids"
)

// Result is the outcome of one run. Every field comes from the guest or
// the VMM that ran the code.
type Result struct {
	// ExitCode is the program's exit status, or 128+Signal when a signal
	// ended it (the shell convention), so 137 after SIGKILL.
	ExitCode int `json:"exit_code"`
	// Signal is the number of the signal that ended the program, or 0.
	Signal int `json:"signal,omitempty"`
	// Stdout and Stderr are the bytes the program wrote, unchanged.
	Stdout []byte `json:"-"`
	Stderr []byte `json:"-"`
	// Truncated reports that output passed Limits.MaxOutputBytes: the
	// bytes before the cap are kept and the rest were dropped.
	Truncated bool `json:"truncated"`
	// LimitHit is the limit that ended the run, if any.
	LimitHit Limit `json:"limit,omitempty"`
	// TimedOut and OOMKilled repeat the two most common LimitHit values.
	TimedOut  bool `json:"timed_out"`
	OOMKilled bool `json:"oom_killed"`

	Usage    Usage    `json:"usage"`
	Metadata Metadata `json:"metadata"`
}

// Usage is the resources a run consumed.
type Usage struct {
	// Wall is the program's wall-clock time inside the guest.
	Wall time.Duration `json:"wall_ns"`
	// CPU is the user plus system time of the program's cgroup.
	CPU       time.Duration `json:"cpu_ns"`
	CPUUser   time.Duration `json:"cpu_user_ns"`
	CPUSystem time.Duration `json:"cpu_system_ns"`
	// PeakMemoryBytes is the cgroup's peak memory (memory.peak).
	PeakMemoryBytes int64 `json:"peak_memory_bytes"`
	// Block and network counters come from the VMM when it reports them
	// (Firecracker metrics) and are zero otherwise.
	BlockReadBytes  int64 `json:"block_read_bytes"`
	BlockWriteBytes int64 `json:"block_write_bytes"`
	NetRxBytes      int64 `json:"net_rx_bytes"`
	NetTxBytes      int64 `json:"net_tx_bytes"`
	VCPUExits       int64 `json:"vcpu_exits,omitempty"`
	// VMMRSSBytes is the VMM process's resident set size, read on the host
	// before teardown.
	VMMRSSBytes int64 `json:"vmm_rss_bytes"`
	// AgentRSSBytes is the guest agent's resident set size when it
	// responded to the health check after boot, as the agent reported it.
	// Zero with the ssh transport or an agent too old to report it.
	AgentRSSBytes int64 `json:"agent_rss_bytes,omitempty"`
	// Phases is the time spent in each step of the request, in order.
	Phases []Phase `json:"phases"`
}

// Phase is one timed step of a request, such as "boot" or "run".
type Phase struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
}

// Transports: how the backend reaches the code in the guest, reported in
// Metadata.Transport.
const (
	TransportAgent = "agent" // cylo's guest agent over virtio-serial or vsock
	TransportSSH   = "ssh"   // the image's SSH server, over the guest's network
)

// Metadata describes what ran the code.
type Metadata struct {
	Backend      string `json:"backend"`                 // "qemu" or "firecracker"
	VMM          string `json:"vmm"`                     // the VMM binary's name
	VMMVersion   string `json:"vmm_version"`             // as the VMM reported it
	Accelerator  string `json:"accelerator,omitempty"`   // "kvm" or "tcg"
	Transport    string `json:"transport"`               // "agent" or "ssh"
	AgentVersion string `json:"agent_version,omitempty"` // guest agent build
	Kernel       string `json:"kernel,omitempty"`        // guest kernel release
	Image        string `json:"image,omitempty"`         // image profile and key
	VMID         string `json:"vm_id"`
}

// Health is whether a backend can run code on this host.
type Health struct {
	Backend string `json:"backend"`
	Usable  bool   `json:"usable"`
	// Reason is, when Usable is false, the cause and what to do about it.
	Reason string `json:"reason,omitempty"`
	// Details lists facts found while checking (binary path, version,
	// accelerator).
	Details []string `json:"details,omitempty"`
}

// Backend boots guests and runs requests in them. Implementations are safe
// for concurrent use; each Run gets its own guest.
type Backend interface {
	Name() string
	Health(ctx context.Context) Health
	// Run boots a fresh guest, runs req in it and destroys the guest. It
	// returns an error only when the code could not be run; a program that
	// fails, times out or is killed still yields a Result.
	Run(ctx context.Context, req *Request) (*Result, error)
}

// Run runs req on backend b after validating it and filling defaults.
func Run(ctx context.Context, b Backend, req *Request) (*Result, error) {
	full, err := req.WithDefaults()
	if err != nil {
		return nil, err
	}
	return b.Run(ctx, full)
}

// Known reports whether l is in the language table.
func (l Language) Known() bool {
	_, ok := lang.Lookup(string(l))
	return ok
}

// LanguageForFile returns the language of a source file by its extension
// (.sh, .py, .js, .go, .rs).
func LanguageForFile(name string) (Language, error) {
	spec, ok := lang.ForExtension(name)
	if !ok {
		return "", fmt.Errorf("cannot tell the language of %q from its extension: use --lang or one of %s", name, strings.Join(lang.Extensions(), ", "))
	}
	return Language(spec.Name), nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ErrInvalidRequest is wrapped by every validation error of Request.
var ErrInvalidRequest = errors.New("invalid request")

// Validate reports the first invalid field of r.
func (r *Request) Validate() error {
	if !r.Language.Known() {
		return fmt.Errorf("%w: unknown language %q: use one of bash, python, javascript, go, rust", ErrInvalidRequest, r.Language)
	}
	for name := range r.Env {
		if !envName.MatchString(name) {
			return fmt.Errorf("%w: invalid environment variable name %q: names must match [A-Za-z_][A-Za-z0-9_]*", ErrInvalidRequest, name)
		}
	}
	for path := range r.Files {
		if err := validRelativePath(path); err != nil {
			return fmt.Errorf("%w: file %q: %v", ErrInvalidRequest, path, err)
		}
	}
	if r.Dir != "" && (r.Dir[0] != '/' || len(r.Dir) > 1024) {
		return fmt.Errorf("%w: working directory %q must be an absolute path", ErrInvalidRequest, r.Dir)
	}
	checks := []struct {
		name  string
		value int64
	}{
		{"timeout", int64(r.Timeout)},
		{"memory limit", r.Limits.MemoryBytes},
		{"vcpus", int64(r.Limits.VCPUs)},
		{"max processes", int64(r.Limits.MaxProcesses)},
		{"max output bytes", r.Limits.MaxOutputBytes},
		{"disk size", r.Limits.DiskBytes},
	}
	for _, c := range checks {
		if c.value < 0 {
			return fmt.Errorf("%w: %s is negative (%d): use 0 for the default or a positive value", ErrInvalidRequest, c.name, c.value)
		}
	}
	if r.Limits.MemoryBytes != 0 && r.Limits.MemoryBytes < 16<<20 {
		return fmt.Errorf("%w: memory limit %d bytes is below the minimum of 16 MiB", ErrInvalidRequest, r.Limits.MemoryBytes)
	}
	if r.Limits.VCPUs > 32 {
		return fmt.Errorf("%w: %d vcpus is above the maximum of 32", ErrInvalidRequest, r.Limits.VCPUs)
	}
	if r.Limits.DiskBytes != 0 && r.Limits.DiskBytes < 16<<20 {
		return fmt.Errorf("%w: disk size %d bytes is below the minimum of 16 MiB", ErrInvalidRequest, r.Limits.DiskBytes)
	}
	return nil
}

// WithDefaults validates r and returns a copy with every zero field set
// to its default.
func (r *Request) WithDefaults() (*Request, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	full := *r
	if full.Dir == "" {
		full.Dir = "/work"
	}
	if full.Timeout == 0 {
		full.Timeout = DefaultTimeout
	}
	l := &full.Limits
	if l.MemoryBytes == 0 {
		l.MemoryBytes = DefaultMemoryBytes
	}
	if l.VCPUs == 0 {
		l.VCPUs = DefaultVCPUs
	}
	if l.MaxProcesses == 0 {
		l.MaxProcesses = DefaultMaxProcesses
	}
	if l.MaxOutputBytes == 0 {
		l.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if l.DiskBytes == 0 {
		l.DiskBytes = DefaultDiskBytes
	}
	return &full, nil
}

func validRelativePath(p string) error {
	if p == "" || p[0] == '/' {
		return errors.New("path must be relative to the working directory")
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return errors.New("path must not contain ..")
		}
	}
	return nil
}
