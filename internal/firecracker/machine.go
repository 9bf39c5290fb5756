package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cylo-dev/cylo/internal/agentproto"
	"github.com/cylo-dev/cylo/internal/procfs"
	"github.com/cylo-dev/cylo/internal/undo"
	"github.com/cylo-dev/cylo/internal/vmnet"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// Names of the files in a VM's runtime directory. All stay well below
// vmstate.MaxSocketName, so socket paths fit in sun_path.
const (
	apiSocketName   = "api.sock"
	vsockSocketName = "vsock.sock"
	consoleLogName  = "console.log" // firecracker's stdout and stderr: the guest serial console and early errors
	vmmLogName      = "firecracker.log"
	metricsName     = "metrics.json"
	scratchName     = "scratch.img"
)

// guestCID is the guest's vsock context id. Every guest has its own vsock
// device behind its own Unix socket, so all use 3, the lowest that is not
// reserved (0 to 2 are the hypervisor, local and host).
const guestCID = 3

// MachineSpec sizes one guest.
type MachineSpec struct {
	VCPUs     int
	MemoryMiB int
	// DiskBytes is the size of the writable scratch disk, a sparse file
	// that the guest formats.
	DiskBytes int64
	// Network gives the guest eth0 on a TAP device in a network
	// namespace of the VM's own, where firecracker runs too.
	Network bool
	// SSH boots the guest with cylo.mode=ssh, so that it starts the
	// image's sshd instead of serving the agent. It needs Network.
	SSH bool
}

// Machine is one booted Firecracker guest. The caller must Close it.
type Machine struct {
	// ID is the VM id, also the name of its runtime directory and record.
	ID string
	// Dir is the runtime directory.
	Dir string
	// VMMVersion is the vmm_version that Firecracker reported.
	VMMVersion string
	// BootArgs is the kernel command line the guest booted with.
	BootArgs string

	cfg     *Config
	store   *vmstate.Store
	logger  *slog.Logger
	proc    *process
	client  *Client
	version version
	record  vmstate.Record
	// ns and tap are the guest network, nil without MachineSpec.Network.
	ns      *vmnet.Namespace
	tap     *vmnet.TAP
	started bool
	closed  bool
	undo    undo.Stack
}

// start creates the runtime directory, starts firecracker, configures the
// guest and boots it. On error everything it made is released.
func (d *Driver) start(ctx context.Context, spec MachineSpec) (_ *Machine, err error) {
	bin, err := d.cfg.findBinary()
	if err != nil {
		return nil, err
	}
	id, dir, err := vmstate.NewRuntimeDir(d.cfg.RuntimeBase)
	if err != nil {
		return nil, err
	}

	m := &Machine{ID: id, Dir: dir, cfg: &d.cfg, store: d.store, logger: d.cfg.Logger.With("vm_id", id, "vmm", "firecracker")}
	defer func() {
		if err != nil {
			err = errors.Join(err, m.teardown(context.WithoutCancel(ctx)))
		}
	}()
	m.undo.Push("remove runtime directory", func() error { return os.RemoveAll(dir) })

	// The record exists before anything else that GC would have to find.
	m.record, err = vmstate.Owned(id, "firecracker")
	if err != nil {
		return nil, err
	}
	m.record.RuntimeDir = dir
	if err := m.register(); err != nil {
		return nil, err
	}

	if err := m.createFiles(spec); err != nil {
		return nil, err
	}
	if spec.Network {
		if err := m.createNetwork(); err != nil {
			return nil, err
		}
	}
	if err := m.startProcess(ctx, bin); err != nil {
		return nil, err
	}
	if err := m.checkVersion(ctx); err != nil {
		return nil, err
	}
	m.BootArgs = bootArgs(m.tap, spec.SSH)
	if err := m.configure(ctx, spec, m.tap); err != nil {
		return nil, err
	}

	if err := m.client.Action(ctx, "InstanceStart"); err != nil {
		return nil, m.withProcessState(err)
	}
	m.started = true
	m.logger.Info("guest started", "pid", m.proc.pid(), "vmm_version", m.VMMVersion,
		"vcpus", spec.VCPUs, "memory_mib", spec.MemoryMiB, "network", spec.Network)
	return m, nil
}

func (m *Machine) register() error {
	return m.store.Register(m.record)
}

func (m *Machine) path(name string) string { return filepath.Join(m.Dir, name) }

// createFiles makes the files that Firecracker opens but does not create:
// the log and metrics files and the sparse scratch disk.
func (m *Machine) createFiles(spec MachineSpec) error {
	for _, name := range []string{vmmLogName, metricsName} {
		if err := os.WriteFile(m.path(name), nil, 0o600); err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
	}
	f, err := os.OpenFile(m.path(scratchName), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("create scratch disk: %w", err)
	}
	err = f.Truncate(spec.DiskBytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("size scratch disk to %d bytes: %w", spec.DiskBytes, err)
	}
	return nil
}

// createNetwork creates the VM's network namespace and the TAP device in
// it. Both are recorded before they exist, so a crash in between still
// leaves cylo gc the names to delete.
func (m *Machine) createNetwork() error {
	tap, err := vmnet.PlanTAP(m.ID, m.cfg.TAPName)
	if err != nil {
		return err
	}
	m.record.NetNS = vmnet.NamespaceName(m.ID)
	m.record.TAPDevices = append(m.record.TAPDevices, tap.Name)
	if err := m.register(); err != nil {
		return err
	}
	ns, err := vmnet.CreateNamespace(m.record.NetNS)
	if err != nil {
		return err
	}
	m.undo.Push("remove network namespace", func() error { return ns.Remove([]string{tap.Name}) })
	if err := ns.CreateTAP(tap); err != nil {
		return err
	}
	m.ns, m.tap = ns, &tap
	return nil
}

func (m *Machine) startProcess(ctx context.Context, bin string) error {
	sock := m.path(apiSocketName)
	proc, err := startProcess(bin, []string{"--api-sock", sock, "--id", m.ID}, m.Dir, m.path(consoleLogName), m.ns)
	if err != nil {
		return err
	}
	m.proc = proc
	m.undo.Push("stop firecracker", proc.kill)

	m.record.VMMPID = proc.pid()
	m.record.VMMStart, err = vmstate.StartTime(proc.pid())
	if err != nil {
		return fmt.Errorf("read firecracker start time: %w", err)
	}
	if err := m.register(); err != nil {
		return err
	}
	m.logger.Debug("firecracker started", "pid", proc.pid(), "binary", bin)

	if err := proc.waitSocket(ctx, sock, m.cfg.SocketTimeout); err != nil {
		return err
	}
	m.client = NewClient(sock, m.logger)
	return nil
}

// minVersion is the oldest Firecracker whose API the driver speaks.
var minVersion = version{1, 0, 0}

func (m *Machine) checkVersion(ctx context.Context) error {
	info, err := m.client.DescribeInstance(ctx)
	if err != nil {
		return m.withProcessState(err)
	}
	v, err := parseVersion(info.VMMVersion)
	if err != nil {
		return err
	}
	if !v.atLeast(minVersion.major, minVersion.minor) {
		return fmt.Errorf("firecracker %s is not supported: cylo needs Firecracker 1.0 or later, whose API it speaks (0.x needs ht_enabled and lacks smt): install a newer firecracker or set --firecracker-bin", info.VMMVersion)
	}
	m.VMMVersion = info.VMMVersion
	m.version = v
	return nil
}

// configure sends the pre-boot configuration, in the order Firecracker's
// getting-started guide uses, with the logger and metrics first so they
// capture the rest.
func (m *Machine) configure(ctx context.Context, spec MachineSpec, tap *vmnet.TAP) error {
	type put struct {
		path string
		body any
	}
	puts := []put{
		{"/logger", loggerBody{LogPath: m.path(vmmLogName), Level: "Info", ShowLevel: true}},
		{"/metrics", metricsBody{MetricsPath: m.path(metricsName)}},
		{"/machine-config", machineConfigBody{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB}},
		{"/boot-source", bootSourceBody{KernelImagePath: m.cfg.KernelPath, InitrdPath: m.cfg.InitrdPath, BootArgs: m.BootArgs}},
		// The initramfs mounts both drives, so neither is the root device
		// that Firecracker would name in root= on the command line. The
		// order of the PUTs sets the order of the devices: vda, then vdb.
		{"/drives/rootfs", driveBody{DriveID: "rootfs", PathOnHost: m.cfg.RootfsPath, IsRootDevice: false, IsReadOnly: true}},
		{"/drives/scratch", driveBody{DriveID: "scratch", PathOnHost: m.path(scratchName), IsRootDevice: false, IsReadOnly: false}},
		{"/vsock", vsockBody{GuestCID: guestCID, UDSPath: m.path(vsockSocketName)}},
	}
	if tap != nil {
		puts = append(puts, put{"/network-interfaces/eth0", networkInterfaceBody{IfaceID: "eth0", HostDevName: tap.Name, GuestMAC: tap.GuestMAC}})
	}
	// NOTE: the entropy device arrived in Firecracker 1.4.0 according to
	// its release notes; older 1.x versions would reject the request.
	if m.version.atLeast(1, 4) {
		puts = append(puts, put{"/entropy", entropyBody{}})
	}

	for _, p := range puts {
		if err := m.client.Put(ctx, p.path, p.body); err != nil {
			return m.withProcessState(err)
		}
	}
	return nil
}

// withProcessState adds the exit status and log tail to err when
// firecracker has exited, which explains most failed API calls. A
// transport error (no HTTP response) waits briefly for the exit, because the
// connection breaks a moment before the process is gone.
func (m *Machine) withProcessState(err error) error {
	wait := time.Duration(0)
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		wait = time.Second
	}
	select {
	case <-m.proc.exited:
		return errors.Join(err, m.proc.exitError("exited during configuration"))
	case <-time.After(wait):
		return err
	}
}

// bootArgs returns the guest kernel command line. With ssh the guest
// starts the image's sshd on eth0 instead of the agent.
func bootArgs(tap *vmnet.TAP, ssh bool) string {
	args := []string{
		"console=ttyS0", // the serial console, written to console.log
		"reboot=k",      // reboot through the i8042 reset line, on which Firecracker exits
		"panic=1",       // reboot one second after a panic, so a failed boot ends the VMM
		"pci=off",       // no PCI bus to probe: devices are virtio-mmio
		"quiet",
		// Skip i8042 probing (tens of milliseconds at boot, per
		// Firecracker's actions guide) while keeping the keyboard that
		// SendCtrlAltDel needs.
		"i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
		// cylo's initramfs reads these: the read-only rootfs, the
		// scratch disk, and the agent's channel or ssh mode.
		"cylo.root=/dev/vda",
		"cylo.scratch=/dev/vdb",
	}
	if ssh {
		args = append(args, "cylo.mode=ssh")
	} else {
		args = append(args, "cylo.channel=vsock")
	}
	if tap != nil {
		args = append(args, "cylo.ip="+tap.Guest.String(), "cylo.gw="+tap.Host.Addr().String())
	}
	return strings.Join(args, " ")
}

// DialAgent opens a stream to the guest agent through the vsock device.
// It fails while the agent is not listening yet.
func (m *Machine) DialAgent(ctx context.Context) (net.Conn, error) {
	return dialVsock(ctx, m.path(vsockSocketName), agentproto.VsockPort)
}

// Usage flushes Firecracker's metrics and returns the VMM's counters and
// resident set size. Call it after the run, before Close.
func (m *Machine) Usage(ctx context.Context) (metrics vmMetrics, rss int64, err error) {
	rss = procfs.RSS(m.proc.pid())
	if err := m.client.Action(ctx, "FlushMetrics"); err != nil {
		return metrics, rss, m.withProcessState(err)
	}
	f, err := os.Open(m.path(metricsName))
	if err != nil {
		return metrics, rss, fmt.Errorf("open firecracker metrics: %w", err)
	}
	defer f.Close()
	metrics, err = parseMetrics(f)
	if err != nil {
		return metrics, rss, err
	}
	if rss == 0 {
		return metrics, rss, fmt.Errorf("read firecracker rss: no VmRSS in /proc/%d/status", m.proc.pid())
	}
	return metrics, rss, nil
}

// Close shuts the guest down and removes everything the machine made. It
// sends the guest a reboot request (SendCtrlAltDel, on which Firecracker exits),
// waits ShutdownGrace, then kills the process group. It runs under its own
// TeardownTimeout, also when ctx has ended. The vmstate record is removed
// last and only when every other step succeeded, so `cylo gc` can retry.
func (m *Machine) Close(ctx context.Context) error {
	if m.closed {
		return nil
	}
	return m.teardown(context.WithoutCancel(ctx))
}

func (m *Machine) teardown(ctx context.Context) error {
	m.closed = true
	ctx, cancel := context.WithTimeout(ctx, m.cfg.TeardownTimeout)
	defer cancel()

	if m.started {
		m.shutdownGuest(ctx)
	}
	if m.client != nil {
		m.client.Close()
	}
	if err := m.undo.Run(); err != nil {
		m.logger.Warn("teardown incomplete; vm record kept for cylo gc", "err", err)
		return fmt.Errorf("tear down vm %s: %w", m.ID, err)
	}
	if err := m.store.Remove(m.ID); err != nil {
		return fmt.Errorf("tear down vm %s: %w", m.ID, err)
	}
	return nil
}

// shutdownGuest sends SendCtrlAltDel and waits up to ShutdownGrace for
// Firecracker to exit. Failures only mean the kill that follows does the
// work, so they are logged at Debug.
func (m *Machine) shutdownGuest(ctx context.Context) {
	select {
	case <-m.proc.exited:
		return
	default:
	}
	actionCtx, cancel := context.WithTimeout(ctx, m.cfg.ShutdownGrace)
	defer cancel()
	if err := m.client.Action(actionCtx, "SendCtrlAltDel"); err != nil {
		m.logger.Debug("SendCtrlAltDel failed; killing firecracker", "err", err)
		return
	}
	select {
	case <-m.proc.exited:
		m.logger.Debug("guest shut down", "pid", m.proc.pid())
	case <-actionCtx.Done():
		m.logger.Debug("guest did not shut down within the grace period; killing firecracker", "grace", m.cfg.ShutdownGrace)
	}
}
