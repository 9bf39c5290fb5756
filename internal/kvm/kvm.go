// Package kvm reports whether this host can run hardware-accelerated
// guests through /dev/kvm.
package kvm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Module names of the KVM implementations that Check recognises.
const (
	ModuleIntel = "kvm_intel"
	ModuleAMD   = "kvm_amd"
	// ModulePVM is a pagetable-based KVM that runs guests without hardware
	// virtualisation. It needs guests built for it and cannot boot the
	// standard kernels that cylo's images use.
	ModulePVM = "kvm_pvm"
)

// Status is the result of Check.
type Status struct {
	// Usable reports that the device exists, opens read-write and is backed
	// by kvm_intel or kvm_amd (or by a KVM whose module Check cannot see).
	Usable bool
	// Reason is, when Usable is false, one sentence naming the cause and
	// what to do about it.
	Reason string
	// Device is the path that was checked.
	Device string
	// Module is the KVM implementation found under /sys/module:
	// ModuleIntel, ModuleAMD, ModulePVM, or empty when none of them is
	// loaded (for example when KVM is built into the host kernel without
	// module parameters).
	Module string
}

// Check inspects /dev/kvm and /sys/module on this host.
func Check() Status {
	return CheckPaths("/dev/kvm", "/sys")
}

// CheckPaths is Check with the device path and the sysfs root given, so
// tests can point it at a fake /sys tree.
func CheckPaths(device, sysRoot string) Status {
	st := Status{Device: device, Module: loadedModule(sysRoot)}

	info, err := os.Stat(device)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		st.Reason = fmt.Sprintf("%s does not exist: load kvm_intel or kvm_amd (or enable nested virtualisation for this VM), or use the qemu backend (TCG)", device)
		return st
	case err != nil:
		st.Reason = fmt.Sprintf("cannot inspect %s: %v: check its permissions, or use the qemu backend (TCG)", device, err)
		return st
	case info.Mode()&fs.ModeCharDevice == 0:
		st.Reason = fmt.Sprintf("%s is not a character device (mode %s): recreate it with mknod %s c 10 232, or use the qemu backend (TCG)", device, info.Mode(), device)
		return st
	}

	if st.Module == ModulePVM {
		st.Reason = fmt.Sprintf("%s is provided by kvm_pvm (a pagetable-based KVM) which cannot boot standard guest kernels; use the qemu backend (TCG) or a host with kvm_intel/kvm_amd", device)
		return st
	}

	f, err := os.OpenFile(device, os.O_RDWR, 0)
	if err != nil {
		st.Reason = fmt.Sprintf("cannot open %s read-write: %v: add your user to the group that owns it (usually kvm), or use the qemu backend (TCG)", device, err)
		return st
	}
	f.Close()

	st.Usable = true
	return st
}

// loadedModule returns the KVM vendor module present under sysRoot/module.
// kvm_intel and kvm_amd win over kvm_pvm: a host that loads both can still
// boot standard kernels through the hardware module.
func loadedModule(sysRoot string) string {
	present := func(name string) bool {
		_, err := os.Stat(filepath.Join(sysRoot, "module", name))
		return err == nil
	}
	for _, name := range []string{ModuleIntel, ModuleAMD, ModulePVM} {
		if present(name) {
			return name
		}
	}
	return ""
}
