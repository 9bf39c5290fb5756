package firecracker

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/cylo-dev/cylo"
)

// TestRealFirecracker boots a real guest. It needs a KVM host with
// kvm_intel or kvm_amd, a firecracker binary and a built image:
//
//	CYLO_FIRECRACKER_BIN=/usr/local/bin/firecracker \
//	CYLO_FIRECRACKER_KERNEL=.../vmlinux CYLO_FIRECRACKER_INITRD=.../initrd.cpio \
//	CYLO_FIRECRACKER_ROOTFS=.../rootfs.img go test -run TestRealFirecracker ./internal/firecracker/
func TestRealFirecracker(t *testing.T) {
	bin := os.Getenv("CYLO_FIRECRACKER_BIN")
	if bin == "" {
		t.Skip("set CYLO_FIRECRACKER_BIN (and CYLO_FIRECRACKER_KERNEL, _INITRD, _ROOTFS) on a host with kvm_intel or kvm_amd to boot a real Firecracker guest; the e2e package runs the whole property suite on it with CYLO_FIRECRACKER_BIN alone")
	}
	d, err := New(Config{
		Binary:     bin,
		KernelPath: os.Getenv("CYLO_FIRECRACKER_KERNEL"),
		InitrdPath: os.Getenv("CYLO_FIRECRACKER_INITRD"),
		RootfsPath: os.Getenv("CYLO_FIRECRACKER_ROOTFS"),
		StateDir:   t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if h := d.Health(context.Background()); !h.Usable {
		t.Fatalf("firecracker backend unusable: %s", h.Reason)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := cylo.Run(ctx, d, &cylo.Request{Language: cylo.Python, Code: "print(1)\n"})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if string(res.Stdout) != "1\n" || res.ExitCode != 0 {
		t.Errorf("stdout %q exit %d, want \"1\\n\" and 0 (stderr %q)", res.Stdout, res.ExitCode, res.Stderr)
	}
	if res.Usage.BlockReadBytes == 0 {
		t.Error("block read bytes = 0: the guest read its rootfs, so metrics were not parsed")
	}
	t.Logf("metadata %+v usage %+v", res.Metadata, res.Usage)
}
