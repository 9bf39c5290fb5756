package guestinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ModulesManifest lists the module files in the initramfs, one absolute
// path a line, in load order. The image builder writes it.
const ModulesManifest = "/etc/cylo/modules"

// DeviceTimeout bounds the wait for a device to appear after its driver
// loads. Probing is asynchronous, and under TCG it can take a moment.
const DeviceTimeout = 5 * time.Second

// Mount points in the initramfs. They are left behind, unreachable, when
// Setup switches to the new root.
const (
	lowerDir   = "/lower"   // the read-only root filesystem
	scratchDir = "/scratch" // the scratch disk: overlay upper and work directories
	newRootDir = "/newroot" // the overlay, which becomes /
)

// CgroupRoot is the mount point of the cgroup2 hierarchy.
const CgroupRoot = "/sys/fs/cgroup"

// AgentCgroup is the cgroup Setup moves the calling process into, so that
// runs in sibling cgroups are accounted apart from the agent.
const AgentCgroup = CgroupRoot + "/agent"

// cgroupControllers are enabled for the children of the root cgroup.
var cgroupControllers = []string{"memory", "pids", "cpu"}

// Setup prepares the guest when the agent runs as PID 1 in the initramfs
// and returns the boot configuration. On return the process runs in the
// overlay root with /proc, /sys, /dev, /dev/pts, /dev/shm and cgroup2
// mounted, lo up, and eth0 configured when cylo.ip is set. On error the
// caller should report it on the console and call PowerOff.
func Setup() (*Config, error) {
	if err := mountEarly(); err != nil {
		return nil, err
	}
	if err := loadModules(ModulesManifest); err != nil {
		return nil, err
	}

	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, err
	}
	cfg, err := ParseCmdline(string(cmdline))
	if err != nil {
		return nil, fmt.Errorf("kernel command line %q: %w", strings.TrimSpace(string(cmdline)), err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	cfg.KernelRelease = unix.ByteSliceToString(uts.Release[:])

	if err := mountOverlay(cfg.Root, cfg.Scratch); err != nil {
		return nil, err
	}
	if err := switchRoot(newRootDir); err != nil {
		return nil, err
	}
	if err := mountSystem(); err != nil {
		return nil, err
	}
	if err := setupCgroups(); err != nil {
		return nil, err
	}
	if err := unix.Sethostname([]byte("cylo")); err != nil {
		return nil, fmt.Errorf("set hostname: %w", err)
	}
	if err := setupNetwork(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// mountEarly mounts what module loading and device waits need in the
// initramfs.
func mountEarly() error {
	mounts := []mount{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	}
	for _, m := range mounts {
		if err := m.mount(); err != nil {
			return err
		}
	}
	return nil
}

// mount is one mount(2) call.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

func (m mount) mount() error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s on %s (%s, %s): %w", m.source, m.target, m.fstype, m.data, err)
	}
	return nil
}

// loadModules loads each module file listed in manifest with
// finit_module(2). A module that is already loaded is not an error. A
// missing manifest means a kernel with everything built in.
func loadModules(manifest string) error {
	data, err := os.ReadFile(manifest)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, path := range parseModuleList(string(data)) {
		if err := loadModule(path); err != nil {
			return err
		}
	}
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load kernel module: %w", err)
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load kernel module %s: %w", path, err)
	}
	return nil
}

// waitForPath polls until path exists or timeout passes.
func waitForPath(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := os.Stat(path)
		if err == nil {
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v: check that the VM has the device and its driver module is listed in %s", path, timeout, ModulesManifest)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mountOverlay mounts root read-only and scratch read-write, and builds
// the overlay of the two on newRootDir.
func mountOverlay(root, scratch string) error {
	for _, dev := range []string{root, scratch} {
		if err := waitForPath(dev, DeviceTimeout); err != nil {
			return err
		}
	}

	// MS_RDONLY is required: a drive attached read-only rejects a
	// read-write mount. noload skips journal replay, which would write.
	lower := mount{root, lowerDir, "ext4", unix.MS_RDONLY | unix.MS_NODEV, "noload"}
	if err := lower.mount(); err != nil {
		return err
	}
	// noinit_itable keeps the kernel from zeroing the scratch disk's
	// uninitialized inode tables in the background, which would fill in
	// the sparse file on the host.
	upper := mount{scratch, scratchDir, "ext4", unix.MS_NODEV, "noinit_itable"}
	if err := upper.mount(); err != nil {
		return err
	}
	for _, dir := range []string{scratchDir + "/upper", scratchDir + "/work"} {
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	overlay := mount{"overlay", newRootDir, "overlay", 0,
		"lowerdir=" + lowerDir + ",upperdir=" + scratchDir + "/upper,workdir=" + scratchDir + "/work"}
	return overlay.mount()
}

// switchRoot makes newRoot the root directory the way switch_root(8)
// does. pivot_root(2) cannot be used because the initramfs is the rootfs
// mount itself. The initramfs's own /proc, /sys and /dev are unmounted
// and its files deleted to free their memory. The mounts under
// lowerDir and scratchDir stay, since the overlay uses them.
func switchRoot(newRoot string) error {
	for _, dir := range []string{"/dev", "/sys", "/proc"} {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s in the initramfs: %w", dir, err)
		}
	}
	if err := freeInitramfs(); err != nil {
		return err
	}

	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(newRoot, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into the new root: %w", err)
	}
	return unix.Chdir("/")
}

// freeInitramfs deletes the initramfs's files, which are in RAM, without
// crossing into other file systems (the mounted disks and overlay).
func freeInitramfs() error {
	var root unix.Stat_t
	if err := unix.Stat("/", &root); err != nil {
		return err
	}
	var walk func(dir string) error
	walk = func(dir string) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			var st unix.Stat_t
			if err := unix.Lstat(path, &st); err != nil {
				return err
			}
			if st.Dev != root.Dev {
				continue // a mount point
			}
			if e.IsDir() {
				if err := walk(path); err != nil {
					return err
				}
				if isEmptyDirKept(path) {
					continue
				}
				if err := unix.Rmdir(path); err != nil {
					return fmt.Errorf("free initramfs: %w", err)
				}
				continue
			}
			if err := unix.Unlink(path); err != nil {
				return fmt.Errorf("free initramfs: %w", err)
			}
		}
		return nil
	}
	return walk("/")
}

// isEmptyDirKept reports the initramfs directories that stay: the mount
// points, whose mounts live on after the switch.
func isEmptyDirKept(path string) bool {
	switch path {
	case lowerDir, scratchDir, newRootDir, "/dev", "/proc", "/sys":
		return true
	}
	return false
}

// mountSystem mounts the API file systems in the new root. /tmp is not a
// tmpfs: it stays on the overlay, so files there count against the scratch
// disk instead of guest memory.
func mountSystem() error {
	mounts := []mount{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		// gid 5 is the tty group in Debian's base-passwd.
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"cgroup2", CgroupRoot, "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate"},
	}
	for _, m := range mounts {
		if err := m.mount(); err != nil {
			return err
		}
	}

	// /dev/ptmx must reach the devpts instance mounted above.
	if err := os.Remove("/dev/ptmx"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil {
		return err
	}
	for _, dir := range []string{"/tmp", "/work"} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(dir, os.ModeSticky|0o777); err != nil {
			return err
		}
	}
	return nil
}

// setupCgroups moves this process into AgentCgroup and enables the memory,
// pids and cpu controllers for the root's children. The root cgroup is
// exempt from the rule that a cgroup with enabled controllers holds no
// processes, but the agent's children are not: keeping the agent in a leaf
// lets the caller enable controllers in the cgroups it creates.
func setupCgroups() error {
	if err := os.Mkdir(AgentCgroup, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create agent cgroup: %w", err)
	}
	pid := fmt.Sprint(os.Getpid())
	if err := os.WriteFile(AgentCgroup+"/cgroup.procs", []byte(pid), 0); err != nil {
		return fmt.Errorf("move pid %s into %s: %w", pid, AgentCgroup, err)
	}
	for _, c := range cgroupControllers {
		if err := os.WriteFile(CgroupRoot+"/cgroup.subtree_control", []byte("+"+c), 0); err != nil {
			return fmt.Errorf("enable cgroup controller %s: %w", c, err)
		}
	}
	return nil
}

// PowerOff flushes file systems and powers the VM off. It returns only on
// failure. Under QEMU microvm, ACPI power-off ends the QEMU process.
// NOTE: Firecracker has no ACPI power-off on x86_64; for it the kernel's
// reboot (with reboot=k on the command line) is what stops the VM, which
// Reboot provides.
func PowerOff() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// Reboot flushes file systems and restarts the VM, which ends the VMM when
// it runs with QEMU's -no-reboot or under Firecracker. It returns only on
// failure.
func Reboot() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}
