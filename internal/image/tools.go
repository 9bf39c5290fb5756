package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// MissingToolError reports a host program the builder needs and the Debian
// package that provides it.
type MissingToolError struct {
	Tool    string // program name, such as "mkfs.ext4"
	Package string // Debian package that installs it, such as "e2fsprogs"
}

func (e *MissingToolError) Error() string {
	return fmt.Sprintf("%s not found in PATH, /usr/sbin or /sbin: install the Debian package %s (apt-get install %s)", e.Tool, e.Package, e.Package)
}

// toolPackages maps each host program the builder runs to its Debian package.
var toolPackages = map[string]string{
	"apt-cache":   "apt",
	"apt-get":     "apt",
	"dpkg-deb":    "dpkg",
	"depmod":      "kmod",
	"modprobe":    "kmod",
	"debootstrap": "debootstrap",
	"mkfs.ext4":   "e2fsprogs",
	"xz":          "xz-utils",
	"zstd":        "zstd",
}

// findTool looks name up in PATH and then in the sbin directories, which
// are often missing from a non-root user's PATH.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	pkg := toolPackages[name]
	if pkg == "" {
		pkg = name
	}
	return "", &MissingToolError{Tool: name, Package: pkg}
}

// checkTools returns one error listing every missing program among names.
func checkTools(names ...string) error {
	var errs []error
	for _, name := range names {
		if _, err := findTool(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// runTool runs a host program in dir and returns its standard output. The
// program gets its own process group, so cancelling ctx stops it and its
// children (debootstrap runs dpkg and maintainer scripts). The error
// includes the end of standard error.
func runTool(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	path, err := findTool(name)
	if err != nil {
		return nil, err
	}

	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// SIGTERM first so debootstrap's traps can unmount /proc in the
		// target. WaitDelay below kills the group if that hangs.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = 10 * time.Second

	err = cmd.Run()
	if cmd.Process != nil {
		// Children that outlive the leader (a daemon started by a
		// maintainer script) would keep the tree busy: kill the group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s: %w", name, ctxErr)
		}
		// Some tools, debootstrap among them, print their errors on
		// standard output.
		output := stderr.String()
		if strings.TrimSpace(output) == "" {
			output = stdout.String()
		}
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(output, 2000))
	}
	return stdout.Bytes(), nil
}

// tail returns the last n bytes of s, trimmed, for error messages.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}
