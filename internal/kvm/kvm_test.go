package kvm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSys builds a /sys tree containing the named module directories.
func fakeSys(t *testing.T, modules ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, m := range modules {
		if err := os.MkdirAll(filepath.Join(root, "module", m, "parameters"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCheckPaths(t *testing.T) {
	// /dev/null is a character device that opens read-write, so it replaces
	// a working /dev/kvm here.
	const goodDevice = "/dev/null"
	regular := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		device     string
		modules    []string
		wantUsable bool
		wantModule string
		wantReason string
	}{
		{"intel", goodDevice, []string{"kvm", ModuleIntel}, true, ModuleIntel, ""},
		{"amd", goodDevice, []string{"kvm", ModuleAMD}, true, ModuleAMD, ""},
		{"built-in kvm", goodDevice, nil, true, "", ""},
		{"pvm only", goodDevice, []string{"kvm", ModulePVM}, false, ModulePVM, "kvm_pvm (a pagetable-based KVM) which cannot boot standard guest kernels; use the qemu backend (TCG) or a host with kvm_intel/kvm_amd"},
		{"pvm beside intel", goodDevice, []string{"kvm", ModulePVM, ModuleIntel}, true, ModuleIntel, ""},
		{"device missing", "/nonexistent/kvm", []string{ModuleIntel}, false, ModuleIntel, "/nonexistent/kvm does not exist"},
		{"regular file", regular, []string{ModuleIntel}, false, ModuleIntel, "is not a character device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := CheckPaths(tt.device, fakeSys(t, tt.modules...))
			if st.Usable != tt.wantUsable {
				t.Errorf("Usable = %v, want %v (reason %q)", st.Usable, tt.wantUsable, st.Reason)
			}
			if st.Module != tt.wantModule {
				t.Errorf("Module = %q, want %q", st.Module, tt.wantModule)
			}
			if tt.wantUsable && st.Reason != "" {
				t.Errorf("Reason = %q, want empty for a usable device", st.Reason)
			}
			if !strings.Contains(st.Reason, tt.wantReason) {
				t.Errorf("Reason = %q, want it to contain %q", st.Reason, tt.wantReason)
			}
		})
	}
}

func TestCheckPathsOpenFails(t *testing.T) {
	// A character device node with no driver behind it (major 240 is
	// reserved for local use) exists but fails to open with ENXIO, even
	// for root.
	dev := filepath.Join(t.TempDir(), "kvm")
	if err := unix.Mknod(dev, unix.S_IFCHR|0o600, int(unix.Mkdev(240, 0))); err != nil {
		t.Skipf("cannot create a device node here (mknod: %v)", err)
	}
	st := CheckPaths(dev, fakeSys(t, ModuleIntel))
	if st.Usable {
		t.Fatalf("Usable = true for a device that cannot be opened")
	}
	if !strings.Contains(st.Reason, "cannot open "+dev+" read-write") {
		t.Errorf("Reason = %q, want it to name the open failure", st.Reason)
	}
}

func TestCheckThisHost(t *testing.T) {
	// Check must agree with the rule on whatever host runs the tests:
	// kvm_pvm alone means unusable.
	st := Check()
	_, pvm := os.Stat("/sys/module/kvm_pvm")
	_, intel := os.Stat("/sys/module/kvm_intel")
	_, amd := os.Stat("/sys/module/kvm_amd")
	if pvm == nil && intel != nil && amd != nil && st.Usable {
		t.Errorf("Check() is usable on a kvm_pvm-only host: %+v", st)
	}
	t.Logf("this host: %+v", st)
}
