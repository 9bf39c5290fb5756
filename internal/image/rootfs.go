package image

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// rootfsFile is the ext4 image of the root filesystem in a rootfs part.
const rootfsFile = "rootfs.ext4"

// debootstrap installs a minbase Debian system with extra packages into
// tree. It needs root, because it chroots and runs maintainer scripts.
func debootstrap(ctx context.Context, suite, mirror string, packages []string, tree string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("debootstrap must run as root to build the root filesystem (it chroots and creates device nodes): run the build as root, for example with sudo")
	}
	if err := checkMirror(ctx, mirror, suite); err != nil {
		return err
	}

	args := []string{"--variant=minbase"}
	if len(packages) > 0 {
		args = append(args, "--include="+strings.Join(packages, ","))
	}
	args = append(args, suite, tree, mirror)
	defer unmountUnder(tree)
	if _, err := runTool(ctx, "", "debootstrap", args...); err != nil {
		// The reason is often only in debootstrap's own log, which is
		// removed with the tree.
		if log, readErr := os.ReadFile(filepath.Join(tree, "debootstrap", "debootstrap.log")); readErr == nil {
			err = fmt.Errorf("%w\nend of debootstrap.log:\n%s", err, tail(string(log), 3000))
		}
		return fmt.Errorf("debootstrap %s from %s: %w", suite, mirror, err)
	}
	return nil
}

// checkMirror fetches the suite's Release file, so an unreachable mirror
// fails in seconds with a clear message instead of deep in debootstrap.
func checkMirror(ctx context.Context, mirror, suite string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()

	url := strings.TrimSuffix(mirror, "/") + "/dists/" + suite + "/Release"
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return fmt.Errorf("invalid Debian mirror %q: %w", mirror, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("Debian mirror %s unreachable: %w: check the network or pass another mirror", mirror, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("Debian mirror %s has no suite %s: HEAD %s returned %s", mirror, suite, url, resp.Status)
	}
	return nil
}

// unmountUnder detaches every mount point at or below dir, deepest first.
// debootstrap mounts /proc and /sys in the target and can leave them behind
// when it is killed, and removing a tree with /proc mounted inside it
// would descend into the host's /proc.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	dir = filepath.Clean(dir)
	var points []string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		// Field 5 is the mount point, with spaces escaped as \040.
		point := strings.ReplaceAll(fields[4], `\040`, " ")
		if point == dir || strings.HasPrefix(point, dir+"/") {
			points = append(points, point)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var firstErr error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	return firstErr
}

// removeTree removes a debootstrap tree after detaching any mounts in it.
func removeTree(dir string) error {
	if err := unmountUnder(dir); err != nil {
		return fmt.Errorf("%w: not removing %s", err, dir)
	}
	return os.RemoveAll(dir)
}

// trimmedPaths are removed from the root filesystem to keep it small. The
// kernel and modules are removed because the guest boots cylo's kernel,
// and the host's name and resolver configuration that debootstrap copies
// are replaced by configureRootfs.
var trimmedPaths = []string{
	"boot",
	"lib/modules",
	"usr/lib/modules",
	"usr/share/doc",
	"usr/share/man",
	"usr/share/info",
	"usr/share/lintian",
	"var/cache/apt",
	"var/lib/apt/lists",
	"var/log",
	"dev",
	"etc/resolv.conf",
	"etc/hostname",
}

// configureRootfs cleans a debootstrap tree and adds what cylo's guest
// expects: /work and /tmp with mode 1777, a neutral hostname, and the
// directories that were trimmed but must exist as mount points.
func configureRootfs(tree string) error {
	for _, rel := range trimmedPaths {
		if err := removeInTree(tree, rel); err != nil {
			return err
		}
	}

	for _, d := range []struct {
		rel  string
		mode fs.FileMode
	}{
		{"dev", 0o755},
		{"proc", 0o555},
		{"sys", 0o555},
		{"run", 0o755},
		{"tmp", fs.ModeSticky | 0o777},
		{"work", fs.ModeSticky | 0o777},
		{"var/log", 0o755},
		{"var/cache/apt/archives/partial", 0o755},
		{"var/lib/apt/lists/partial", 0o755},
	} {
		p := filepath.Join(tree, d.rel)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		// Chmod, because MkdirAll applies the umask and drops the sticky bit.
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}

	files := map[string]string{
		"etc/hostname":    "cylo\n",
		"etc/hosts":       "127.0.0.1\tlocalhost\n127.0.1.1\tcylo\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/resolv.conf": "",
	}
	for rel, content := range files {
		if err := os.WriteFile(filepath.Join(tree, rel), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// removeInTree removes tree/rel unless a directory on the way is a
// symbolic link. A link such as lib -> usr/lib is resolved by the host, not
// inside the tree, so following it could reach host files; the merged-/usr
// spelling of the path is listed separately instead.
func removeInTree(tree, rel string) error {
	parts := strings.Split(rel, "/")
	p := tree
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		st, err := os.Lstat(p)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if st.Mode()&fs.ModeSymlink != 0 || !st.IsDir() {
			return nil
		}
	}
	return os.RemoveAll(filepath.Join(tree, rel))
}

// makeExt4 writes tree into a new ext4 image at dst, sized to the tree plus
// headroom. The image has no journal (the guest mounts it read-only) and no
// reserved blocks.
func makeExt4(ctx context.Context, tree, dst, label string) error {
	used, inodes, err := treeUsage(tree)
	if err != nil {
		return err
	}
	// Headroom: 10% plus 32 MiB for ext4 metadata (inode tables, bitmaps,
	// directories).
	sizeKiB := (used+used/10)/1024 + 32*1024
	inodeCount := inodes + inodes/5 + 1024

	_, err = runTool(ctx, "", "mkfs.ext4", "-q", "-F",
		"-L", label,
		"-m", "0",
		"-O", "^has_journal",
		"-N", fmt.Sprint(inodeCount),
		"-E", "root_owner=0:0",
		"-d", tree,
		dst, fmt.Sprintf("%dk", sizeKiB))
	return err
}

// treeUsage returns the bytes allocated to the files under dir and the
// number of files, not following symbolic links.
func treeUsage(dir string) (bytes int64, files int64, err error) {
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		files++
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			bytes += st.Blocks * 512
		} else {
			bytes += info.Size()
		}
		return nil
	})
	return bytes, files, err
}
