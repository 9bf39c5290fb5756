package guestinit_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cylo-dev/cylo/internal/image"
	"github.com/cylo-dev/cylo/internal/tsc"
)

// bootTimeout bounds one boot under TCG, which takes a few seconds, plus
// the checks bootcheck runs. Compiling Go and Rust in the full profile
// takes longer.
const bootTimeout = 90 * time.Second

// TestBootQEMU builds an image whose /init is testdata/bootcheck, boots it
// under QEMU microvm with TCG and checks what the guest printed.
func TestBootQEMU(t *testing.T) {
	if os.Getenv("CYLO_VM_TESTS") != "1" {
		t.Skip("boots a real VM and may build an image (about a minute, as root, needs the Debian mirror): set CYLO_VM_TESTS=1 to run")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not found: install the Debian package qemu-system-x86")
	}

	img := buildTestImage(t, image.ProfileBase)
	scratch := filepath.Join(t.TempDir(), "scratch.ext4")
	if err := image.NewScratchDisk(scratch, 512<<20); err != nil {
		t.Fatal(err)
	}

	console, timing := bootQEMU(t, qemu, img, scratch,
		"cylo.root=/dev/vda cylo.scratch=/dev/vdb cylo.channel=virtio-serial")
	t.Logf("QEMU start to cylo-boot-ok: %v, to exit: %v", timing.bootOK, timing.exit)

	wants := []string{
		"cylo-boot-ok " + img.KernelRelease + "\n",
		"cylo-check config: channel=virtio-serial mode=agent\n",
		"cylo-check cgroup controllers: cpu memory pids\n",
		"cylo-check agent cgroup: 0::/agent\n",
		"cylo-check root mount: overlay\n",
		"cylo-check tmp write: scratch\n",
		"cylo-check work mode: dtrwxrwxrwx\n",
		"cylo-check python: 42\n",
		"cylo-check node: 42\n",
		"cylo-check hostname: cylo\n",
	}
	for _, want := range wants {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", strings.TrimSpace(want))
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", tailLines(console, 60))
	}
}

// TestBootFullProfile compiles and runs Go and Rust programs in the full
// profile. Building that image takes about two minutes on a cold cache.
func TestBootFullProfile(t *testing.T) {
	if os.Getenv("CYLO_VM_TESTS") != "1" || os.Getenv("CYLO_FULL_IMAGE_TESTS") != "1" {
		t.Skip("builds the full image (about two minutes, as root) and boots it: set CYLO_VM_TESTS=1 and CYLO_FULL_IMAGE_TESTS=1 to run")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not found: install the Debian package qemu-system-x86")
	}

	img := buildTestImage(t, image.ProfileFull)
	scratch := filepath.Join(t.TempDir(), "scratch.ext4")
	if err := image.NewScratchDisk(scratch, 1<<30); err != nil {
		t.Fatal(err)
	}
	console, timing := bootQEMU(t, qemu, img, scratch,
		"cylo.root=/dev/vda cylo.scratch=/dev/vdb cylo.channel=vsock")
	t.Logf("QEMU start to cylo-boot-ok: %v, to exit: %v", timing.bootOK, timing.exit)

	for _, want := range []string{
		"cylo-check config: channel=vsock mode=agent\n",
		"cylo-check python: 42\n",
		"cylo-check go: 42\n",
		"cylo-check rust: 42\n",
	} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", strings.TrimSpace(want))
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", tailLines(console, 60))
	}
}

// buildTestImage builds bootcheck and an image around it. The image cache
// is CYLO_TEST_CACHE_DIR, or the user's default, so later runs reuse the
// root filesystem.
func buildTestImage(t *testing.T, profile image.Profile) *image.Image {
	t.Helper()
	agent := filepath.Join(t.TempDir(), "bootcheck")
	build := exec.Command("go", "build", "-o", agent, "./testdata/bootcheck")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build bootcheck: %v\n%s", err, out)
	}

	var progress bytes.Buffer
	img, err := image.Build(context.Background(), image.Options{
		Profile:   profile,
		AgentPath: agent,
		CacheDir:  os.Getenv("CYLO_TEST_CACHE_DIR"),
		Progress:  image.ProgressWriter(&progress),
	})
	t.Logf("image build:\n%s", progress.String())
	if err != nil {
		t.Fatalf("build image: %v", err)
	}
	return img
}

// bootTiming is measured from QEMU's start.
type bootTiming struct {
	bootOK time.Duration // until the console showed "cylo-boot-ok"
	exit   time.Duration // until QEMU exited
}

// consoleRecorder stores console output and notes when "cylo-boot-ok"
// first appears.
type consoleRecorder struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	start  time.Time
	bootOK time.Duration
}

func (c *consoleRecorder) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if c.bootOK == 0 && bytes.Contains(c.buf.Bytes(), []byte("cylo-boot-ok")) {
		c.bootOK = time.Since(c.start)
	}
	return len(p), nil
}

// qemuArgs returns the flags cylo's QEMU driver uses for img.
func qemuArgs(t *testing.T, img *image.Image, scratch, cmdline string) []string {
	t.Helper()
	tscKHz, err := tsc.HostKHz()
	if err != nil {
		t.Fatal(err)
	}
	return []string{
		"-M", "microvm", // ACPI stays on: the kernel finds virtio-mmio devices through it
		"-accel", "tcg", "-cpu", "max",
		"-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic",
		"-serial", "stdio",
		"-no-reboot", // a guest reboot ends QEMU
		"-kernel", img.Kernel,
		"-initrd", img.Initrd,
		// reboot=t: reboot by triple fault, which -no-reboot turns into an
		// exit. panic=-1: reboot at once on a panic instead of hanging.
		// tsc_early_khz: skip TSC calibration against the emulated PIT,
		// which fails on a busy host and hangs the boot.
		"-append", fmt.Sprintf("console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz=%d %s", tscKHz, cmdline),
		"-drive", "id=root,file=" + img.Rootfs + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=root",
		"-drive", "id=scratch,file=" + scratch + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=scratch",
		"-device", "virtio-rng-device",
	}
}

// bootQEMU runs the image until the guest powers off and returns the
// console output and timings.
func bootQEMU(t *testing.T, qemu string, img *image.Image, scratch, cmdline string) (string, bootTiming) {
	t.Helper()
	timeout := bootTimeout
	if img.Profile == image.ProfileFull {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	out := &consoleRecorder{start: time.Now()}
	cmd := exec.CommandContext(ctx, qemu, qemuArgs(t, img, scratch, cmdline)...)
	cmd.Stdout = out
	cmd.Stderr = out
	err := cmd.Run()
	timing := bootTiming{exit: time.Since(out.start)}
	console, bootOK := out.snapshot()
	timing.bootOK = bootOK
	if ctx.Err() != nil {
		t.Fatalf("VM did not exit within %v\nconsole:\n%s", timeout, tailLines(console, 60))
	}
	if err != nil {
		t.Fatalf("qemu: %v\nconsole:\n%s", err, tailLines(console, 60))
	}
	return console, timing
}

// snapshot returns the console so far, with the serial line's CRLF turned
// into LF, and the time to "cylo-boot-ok" (0 if not seen).
func (c *consoleRecorder) snapshot() (string, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.ReplaceAll(c.buf.String(), "\r\n", "\n"), c.bootOK
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
