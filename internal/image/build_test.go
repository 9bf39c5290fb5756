package image

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// skipUnlessBuildTests skips tests that run debootstrap (root, network
// access to the Debian mirror, about a minute on a cold cache).
func skipUnlessBuildTests(t *testing.T) {
	t.Helper()
	if os.Getenv("CYLO_VM_TESTS") != "1" {
		t.Skip("builds a real image (as root, needs the Debian mirror): set CYLO_VM_TESTS=1 to run")
	}
	if os.Geteuid() != 0 {
		t.Skip("debootstrap needs root")
	}
}

// testAgent writes a stand-in agent binary. Its contents only change the
// image key.
func testAgent(t *testing.T, contents string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(path, []byte(contents), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestBuildInitramfsModules(t *testing.T) {
	skipUnlessBuildTests(t)
	var progress bytes.Buffer
	img, err := Build(context.Background(), Options{
		AgentPath: testAgent(t, "agent for TestBuildInitramfsModules"),
		CacheDir:  os.Getenv("CYLO_TEST_CACHE_DIR"),
		Progress:  ProgressWriter(&progress),
	})
	t.Logf("build:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(progress.String(), "\n"); lines != len(stepNames) {
		t.Errorf("progress has %d lines, want one per step (%d)", lines, len(stepNames))
	}

	vmlinux, err := os.ReadFile(img.VMLinux)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(vmlinux, elfMagic) {
		t.Errorf("%s does not start with the ELF magic", img.VMLinux)
	}
	if !strings.HasSuffix(img.KernelRelease, "-cloud-amd64") {
		t.Errorf("KernelRelease = %q, want a cloud kernel release", img.KernelRelease)
	}

	listing := cpioList(t, img.Initrd)
	if !slices.Contains(listing, "init") {
		t.Errorf("initramfs has no /init: %v", listing)
	}
	manifest := cpioExtract(t, img.Initrd, strings.TrimPrefix(ModulesManifest, "/"))
	modules := strings.Fields(manifest)
	for _, m := range modules {
		if !slices.Contains(listing, strings.TrimPrefix(m, "/")) {
			t.Errorf("manifest lists %s, which is not in the initramfs", m)
		}
		if !strings.HasSuffix(m, ".ko") {
			t.Errorf("manifest lists %s, want an uncompressed .ko", m)
		}
	}
	order := func(name string) int {
		return slices.IndexFunc(modules, func(m string) bool { return filepath.Base(m) == name })
	}
	for _, pair := range [][2]string{
		{"virtio_ring.ko", "virtio.ko"},
		{"virtio.ko", "virtio_mmio.ko"},
		{"virtio.ko", "virtio_blk.ko"},
		{"vsock.ko", "vmw_vsock_virtio_transport_common.ko"},
		{"vmw_vsock_virtio_transport_common.ko", "vmw_vsock_virtio_transport.ko"},
		{"failover.ko", "net_failover.ko"},
		{"net_failover.ko", "virtio_net.ko"},
	} {
		first, second := order(pair[0]), order(pair[1])
		if first < 0 || second < 0 || first > second {
			t.Errorf("%s (index %d) must load before %s (index %d):\n%s", pair[0], first, pair[1], second, manifest)
		}
	}
	if n := len(modules); n != len(slices.Compact(slices.Sorted(slices.Values(modules)))) {
		t.Errorf("manifest lists a module twice:\n%s", manifest)
	}

	again, err := Lookup(Options{AgentPath: testAgent(t, "agent for TestBuildInitramfsModules"), CacheDir: os.Getenv("CYLO_TEST_CACHE_DIR")})
	if err != nil {
		t.Fatalf("Lookup after Build: %v", err)
	}
	if again.Dir != img.Dir {
		t.Errorf("Lookup returned %s, Build %s", again.Dir, img.Dir)
	}
}

func TestBuildCancelLeavesNothing(t *testing.T) {
	skipUnlessBuildTests(t)
	cache := filepath.Join(t.TempDir(), "cache")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Cancel a few seconds into debootstrap, when it is downloading and
	// may have mounted /proc in the target.
	progress := func(s Step) {
		if s.Name == "debootstrap" && !s.Done {
			time.AfterFunc(4*time.Second, cancel)
		}
	}
	_, err := Build(ctx, Options{AgentPath: testAgent(t, "cancel"), CacheDir: cache, Profile: ProfileSSH, Progress: progress})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}

	entries, err := os.ReadDir(cache)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "kernel-") {
			t.Errorf("cache contains %s after a cancelled build, want only the finished kernel part", e.Name())
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), cache) {
		t.Errorf("mounts left under %s:\n%s", cache, mounts)
	}
	if pids := processesMentioning(cache); len(pids) > 0 {
		t.Errorf("processes still running in the build directory: %v", pids)
	}
	if _, err := Lookup(Options{AgentPath: testAgent(t, "cancel"), CacheDir: cache, Profile: ProfileSSH}); !errors.Is(err, ErrNotBuilt) {
		t.Errorf("Lookup after a cancelled build: err = %v, want ErrNotBuilt", err)
	}
}

// processesMentioning returns the pids whose command line contains s.
func processesMentioning(s string) []string {
	var pids []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(s)) {
			pids = append(pids, filepath.Base(d))
		}
	}
	return pids
}

func cpioList(t *testing.T, archive string) []string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("cpio", "-t", "--quiet")
	cmd.Stdin = f
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t %s: %v", archive, err)
	}
	return strings.Fields(string(out))
}

func cpioExtract(t *testing.T, archive, name string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("cpio", "-i", "--quiet", "--to-stdout", name)
	cmd.Stdin = f
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -i %s %s: %v", archive, name, err)
	}
	return string(out)
}
