// Package firecracker is cylo's Firecracker backend. It starts the
// firecracker binary, configures it over the REST API on a Unix socket,
// boots the guest kernel with cylo's initramfs and read-only rootfs, and
// runs the request through the guest agent over vsock.
//
// # Firecracker versions
//
// The driver speaks the 1.x API as Firecracker v1.16.1 defines it. It reads
// vmm_version from GET / and rejects any version below 1.0, because the 0.x
// API differs in ways that make a 1.x request invalid there (from the
// v0.24.4 API definition):
//
//   - machine-config requires ht_enabled, which 1.x renamed to smt (and
//     made optional, default false);
//   - drives require is_read_only and path_on_host, which 1.x made
//     optional for vhost-user drives;
//   - logger requires log_path, and its levels stop at Debug;
//   - network-interfaces take allow_mmds_requests, which 1.x replaced with
//     PUT /mmds/config {"network_interfaces": [...]};
//   - snapshot/load takes only mem_file_path, where 1.x adds mem_backend
//     (File or Uffd) and deprecates mem_file_path;
//   - there is no /entropy device.
//
// # Guest kernels
//
// Debian's cloud kernel builds virtio_mmio as a module and lacks
// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so it cannot see devices that
// Firecracker announces on the kernel command line. It finds them only
// through the ACPI tables that Firecracker builds on x86_64 (the guest
// needs CONFIG_ACPI and CONFIG_PCI). The default image therefore boots
// on Firecracker versions that describe devices through ACPI.
//
// ACPI support for x86_64 arrived during the 1.8.0 development cycle
// (firecracker-microvm/firecracker pull request 4428, "Add ACPI support
// for x86_64"), so the default image needs Firecracker 1.8 or later.
//
// NOTE: no Firecracker binary was run with this image: the host that built
// cylo had no usable KVM. To boot an older Firecracker, set
// Config.KernelPath to a vmlinux built with CONFIG_VIRTIO_MMIO=y and
// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y (Firecracker's own guest configs
// work) and Config.InitrdPath to an initramfs that does not need to load
// virtio_mmio.
package firecracker
