package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// GuestModules are the kernel modules the guest loads at boot, with their
// dependencies added by the builder. Modules built into the kernel are
// skipped. The guest needs:
//   - virtio_mmio: the transport of every microvm and Firecracker device
//   - virtio_blk: the root and scratch disks
//   - virtio_console: the virtio-serial agent channel
//   - virtio_net: eth0 for the ssh mode
//   - vsock, vmw_vsock_virtio_transport: the vsock agent channel
//   - virtio_rng: entropy, so getrandom does not block in early boot
//   - overlay: the writable root on top of the read-only one
//   - ext4: the disks (built in on Debian's cloud kernel)
var GuestModules = []string{
	"virtio_mmio",
	"virtio_blk",
	"virtio_console",
	"virtio_net",
	"vsock",
	"vmw_vsock_virtio_transport",
	"virtio_rng",
	"overlay",
	"ext4",
}

// ModulesManifest is the initramfs file that lists the module files to load,
// one absolute path a line, in load order.
const ModulesManifest = "/etc/cylo/modules"

// resolveModules returns the module files, relative to the kernel's module
// directory, that load names and all their dependencies, in an order where
// each file follows its dependencies. The order comes from modprobe
// --show-depends, which reads the indexes depmod wrote into kernelDir.
func resolveModules(ctx context.Context, kernelDir, release string, names []string) ([]string, error) {
	base := modulesDir(kernelDir, release) + "/"
	seen := map[string]bool{}
	var files []string
	for _, name := range names {
		out, err := runTool(ctx, "", "modprobe", "-d", kernelDir, "-S", release, "--show-depends", name)
		if err != nil {
			return nil, fmt.Errorf("resolve kernel module %s for %s: %w", name, release, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 2 {
				continue
			}
			switch fields[0] {
			case "builtin":
				continue
			case "insmod":
				rel, ok := strings.CutPrefix(fields[1], base)
				if !ok {
					return nil, fmt.Errorf("modprobe listed %s for %s, outside %s", fields[1], name, base)
				}
				if !seen[rel] {
					seen[rel] = true
					files = append(files, rel)
				}
			default:
				return nil, fmt.Errorf("modprobe --show-depends %s: unexpected line %q", name, sc.Text())
			}
		}
	}
	return files, nil
}

// initramfsInput is the content of an initramfs.
type initramfsInput struct {
	Agent     []byte   // the /init binary
	KernelDir string   // kernel part directory, holding lib/modules
	Release   string   // kernel release
	Modules   []string // module files relative to the module directory, in load order
}

// writeInitramfs writes an uncompressed newc initramfs to dst. Compressed
// module files are decompressed here, so the guest loads each one with a
// plain finit_module call.
func writeInitramfs(ctx context.Context, dst string, in initramfsInput) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	cw := newCPIOWriter(bw)

	// Mount points and the console the kernel opens for init's stdio.
	for _, dir := range []string{"/dev", "/proc", "/sys", "/run", "/newroot"} {
		cw.Dir(dir, 0o755)
	}
	cw.CharDevice("/dev/console", 0o600, 5, 1)
	cw.File("/init", 0o755, in.Agent)

	var manifest strings.Builder
	guestBase := path.Join("/lib/modules", in.Release)
	for _, rel := range in.Modules {
		data, plain, err := readModule(ctx, modulesDir(in.KernelDir, in.Release), rel)
		if err != nil {
			f.Close()
			return err
		}
		guestPath := path.Join(guestBase, plain)
		cw.File(guestPath, 0o644, data)
		manifest.WriteString(guestPath + "\n")
	}
	cw.File(ModulesManifest, 0o644, []byte(manifest.String()))

	err = cw.Close()
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	return err
}

// readModule returns the uncompressed contents of the module file rel
// under dir, and rel without its compression suffix.
func readModule(ctx context.Context, dir, rel string) (data []byte, plainRel string, err error) {
	file := filepath.Join(dir, rel)
	switch {
	case strings.HasSuffix(rel, ".ko"):
		data, err = os.ReadFile(file)
	case strings.HasSuffix(rel, ".ko.gz"):
		data, err = gunzipFile(file)
	case strings.HasSuffix(rel, ".ko.xz"):
		data, err = runTool(ctx, "", "xz", "-d", "-c", file)
	case strings.HasSuffix(rel, ".ko.zst"):
		data, err = runTool(ctx, "", "zstd", "-d", "-q", "-c", file)
	default:
		return nil, "", fmt.Errorf("kernel module %s has an unknown suffix: want .ko, .ko.gz, .ko.xz or .ko.zst", file)
	}
	if err != nil {
		return nil, "", fmt.Errorf("read kernel module %s: %w", file, err)
	}
	return data, rel[:strings.LastIndex(rel, ".ko")+len(".ko")], nil
}

func gunzipFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}
