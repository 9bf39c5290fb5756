// Package vmstate records the VMs that cylo has started, so that `cylo gc`
// can reclaim the processes, sockets, files and TAP devices that a killed
// cylo process left behind.
//
// Each live VM has one record, a JSON file in the state directory (Dir),
// and one short runtime directory (NewRuntimeDir) that contains its
// sockets, FIFOs and scratch files.
package vmstate

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// MaxSocketPath is the longest Unix socket path the kernel accepts: the
// 108-byte sun_path of struct sockaddr_un less its terminating NUL.
const MaxSocketPath = 107

// MaxSocketName is the longest socket or FIFO name that drivers create
// inside a runtime directory (for example "vsock.sock_1024"). NewRuntimeDir
// keeps room for it below MaxSocketPath.
const MaxSocketName = 24

// RunDirEnv names the environment variable that replaces /run/cylo (and
// its per-user equivalents) as the parent of the state and runtime
// directories, so that separate cylo installations or test runs do not see
// each other's VMs.
const RunDirEnv = "CYLO_RUN_DIR"

// Dir returns the state directory: $CYLO_RUN_DIR/state when that is set,
// /run/cylo/state for root, else
// $XDG_RUNTIME_DIR/cylo/state, else /tmp/cylo-$UID/state.
func Dir() string {
	return filepath.Join(runRoot(), "state")
}

// RuntimeBase returns the default parent of the per-VM runtime
// directories: /run/cylo/vm for root, else $XDG_RUNTIME_DIR/cylo/vm, else
// /tmp/cylo-$UID/vm.
func RuntimeBase() string {
	return filepath.Join(runRoot(), "vm")
}

func runRoot() string {
	if dir := os.Getenv(RunDirEnv); dir != "" {
		return dir
	}
	if os.Geteuid() == 0 {
		return "/run/cylo"
	}
	if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
		return filepath.Join(xdg, "cylo")
	}
	return "/tmp/cylo-" + strconv.Itoa(os.Getuid())
}

// NewRuntimeDir creates a runtime directory named by a fresh 8-hex-digit
// id under base (RuntimeBase when base is empty) with mode 0700, and
// returns the id and the directory. The caller owns the directory and
// removes it when the VM is gone.
//
// It fails before creating anything when a socket named with
// MaxSocketName bytes inside the directory would pass MaxSocketPath,
// because bind(2) would then fail late, deep inside the VMM.
func NewRuntimeDir(base string) (id, dir string, err error) {
	if base == "" {
		base = RuntimeBase()
	}
	base, err = filepath.Abs(base)
	if err != nil {
		return "", "", fmt.Errorf("runtime directory base %q: %w", base, err)
	}

	// base + "/" + 8 hex digits + "/" + socket name
	longest := len(base) + 1 + 8 + 1 + MaxSocketName
	if longest > MaxSocketPath {
		return "", "", fmt.Errorf("runtime directory base %q is too long: socket paths under it would reach %d bytes, above the %d-byte limit of a Unix socket path (sun_path is 108 bytes): choose a base of at most %d bytes",
			base, longest, MaxSocketPath, MaxSocketPath-(longest-len(base)))
	}

	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", "", fmt.Errorf("create runtime directory base: %w", err)
	}
	for range 8 {
		id, err = NewID()
		if err != nil {
			return "", "", err
		}
		dir = filepath.Join(base, id)
		err = os.Mkdir(dir, 0o700)
		if err == nil {
			return id, dir, nil
		}
		if !os.IsExist(err) {
			return "", "", fmt.Errorf("create runtime directory: %w", err)
		}
	}
	return "", "", fmt.Errorf("create runtime directory under %s: 8 random ids were all taken: remove stale entries with cylo gc", base)
}

// NewID returns 8 random hex digits, the form of VM ids.
func NewID() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate vm id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
