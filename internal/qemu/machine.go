package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/agentproto"
	"github.com/cylo-dev/cylo/internal/agentrun"
	"github.com/cylo-dev/cylo/internal/image"
	"github.com/cylo-dev/cylo/internal/procfs"
	"github.com/cylo-dev/cylo/internal/tsc"
	"github.com/cylo-dev/cylo/internal/undo"
	"github.com/cylo-dev/cylo/internal/vmnet"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// Files in a VM's runtime directory.
const (
	agentSocket = "agent.sock"
	consoleLog  = "console.log"
	vmmLog      = "qemu.log"
	scratchDisk = "scratch.ext4"
)

// teardownTimeout bounds stopping the VMM and removing its files.
const teardownTimeout = 10 * time.Second

// machine is one running QEMU process and its runtime directory.
type machine struct {
	id     string
	dir    string
	accel  string
	cmd    *exec.Cmd
	exited chan struct{} // closed when the QEMU process has exited
	undo   undo.Stack
	record vmstate.Record
	// net is the guest network of the ssh transport, nil for the agent.
	net *netPlan
	// channel is the agent channel; cid the guest's vsock context id when
	// the channel is vsock.
	channel string
	cid     uint32
}

// Run boots a fresh VM for req, runs req through the guest agent or over
// SSH (Config.Transport), and destroys the VM, on every path.
func (d *Driver) Run(ctx context.Context, req *cylo.Request) (_ *cylo.Result, err error) {
	req, err = req.WithDefaults()
	if err != nil {
		return nil, err
	}
	ssh := d.cfg.Transport == cylo.TransportSSH
	var phases []cylo.Phase
	mark := phaseClock(&phases)

	m, err := d.start(ctx, req)
	if err != nil {
		return nil, err
	}
	defer func() {
		if terr := m.teardown(); terr != nil {
			d.cfg.Logger.Warn("teardown failed", "vm_id", m.id, "err", terr)
			err = errors.Join(err, terr)
		}
	}()
	mark("vmm_start")

	var result *cylo.Result
	health := &agentproto.Health{} // stays empty for the ssh transport
	if ssh {
		result, err = d.runSSH(ctx, m, req, mark)
	} else {
		result, health, err = d.runAgent(ctx, m, req, mark)
	}
	if err != nil {
		return nil, err
	}
	result.Usage.VMMRSSBytes = procfs.RSS(m.cmd.Process.Pid)
	if err := m.teardown(); err != nil {
		return nil, fmt.Errorf("vm %s: teardown: %w", m.id, err)
	}
	mark("teardown")

	version, _ := d.vmmVersion(ctx)
	result.Usage.Phases = phases
	result.Metadata = cylo.Metadata{
		Backend:      d.Name(),
		VMM:          filepath.Base(d.cfg.Binary),
		VMMVersion:   version,
		Accelerator:  m.accel,
		Transport:    d.cfg.Transport,
		AgentVersion: health.AgentVersion,
		Kernel:       health.Kernel,
		Image:        d.cfg.ImageName,
		VMID:         m.id,
	}
	return result, nil
}

// runAgent waits for the guest agent and runs req through it. It closes
// the session before it returns.
func (d *Driver) runAgent(ctx context.Context, m *machine, req *cylo.Request, mark func(string)) (*cylo.Result, *agentproto.Health, error) {
	session, err := m.connect(ctx, d.cfg.BootTimeout)
	if err != nil {
		return nil, nil, err
	}
	defer session.Close()
	mark("boot")
	d.cfg.Logger.Info("guest ready", "vm_id", m.id, "accelerator", m.accel, "transport", "agent")

	result, err := session.Exec(ctx, req)
	if err != nil {
		return nil, nil, m.withConsole(fmt.Errorf("run in vm %s: %w", m.id, err))
	}
	mark("run")
	return result, session.Health, nil
}

// start creates the runtime directory and scratch disk and starts QEMU.
func (d *Driver) start(ctx context.Context, req *cylo.Request) (*machine, error) {
	id, dir, err := vmstate.NewRuntimeDir(d.cfg.RuntimeBase)
	if err != nil {
		return nil, err
	}
	m := &machine{id: id, dir: dir, exited: make(chan struct{})}
	m.undo.Push("remove runtime directory", func() error { return os.RemoveAll(dir) })
	m.channel, _ = chooseChannel(d.cfg.Channel, vhostVsockDevice)
	if m.channel == ChannelVsock {
		if m.cid, err = newGuestCID(); err != nil {
			m.undo.Run()
			return nil, fmt.Errorf("choose a guest cid: %w", err)
		}
	}

	rec, err := vmstate.Owned(id, d.Name())
	if err != nil {
		m.undo.Run()
		return nil, err
	}
	rec.RuntimeDir = dir
	if err := d.cfg.Store.Register(rec); err != nil {
		m.undo.Run()
		return nil, err
	}
	m.undo.Push("remove vm record", func() error { return d.cfg.Store.Remove(id) })
	m.record = rec

	if d.cfg.Transport == cylo.TransportSSH || req.Network {
		mode := d.cfg.Network
		if d.cfg.Transport != cylo.TransportSSH {
			// The agent needs no forward: a requested network is eth0 on a
			// TAP device in the VM's own namespace, as on Firecracker.
			mode = vmnet.ModeTAP
		}
		if err := d.setupNetwork(m, mode); err != nil {
			m.undo.Run()
			return nil, fmt.Errorf("vm %s: set up the guest network: %w", id, err)
		}
		rec = m.record
	}

	if err := image.NewScratchDisk(filepath.Join(dir, scratchDisk), req.Limits.DiskBytes); err != nil {
		m.undo.Run()
		return nil, fmt.Errorf("create scratch disk: %w", err)
	}

	accel, _ := d.accelerator()
	m.accel = accel
	args := d.args(m, req)
	logFile, err := os.Create(filepath.Join(dir, vmmLog))
	if err != nil {
		m.undo.Run()
		return nil, err
	}
	defer logFile.Close()

	// The VM outlives ctx only as long as teardown takes: Run stops it.
	cmd := exec.Command(d.cfg.Binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// A cylo killed with SIGKILL takes its VMs with it; cylo gc then
		// removes the files they left.
		Pdeathsig: syscall.SIGKILL,
	}
	d.cfg.Logger.Debug("starting qemu", "vm_id", id, "args", strings.Join(args, " "))
	start := cmd.Start
	if m.net != nil && m.net.ns != nil {
		// QEMU opens the TAP device by name in its own namespace.
		start = func() error { return m.net.ns.Start(cmd) }
	}
	if err := start(); err != nil {
		m.undo.Run()
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("QEMU binary %q not found: install the qemu-system-x86 package or set the qemu binary path", d.cfg.Binary)
		}
		return nil, fmt.Errorf("start %s: %w", d.cfg.Binary, err)
	}
	m.cmd = cmd
	go func() {
		cmd.Wait()
		close(m.exited)
	}()
	m.undo.Push("stop qemu", m.stop)

	rec.VMMPID = cmd.Process.Pid
	if start, err := vmstate.StartTime(cmd.Process.Pid); err == nil {
		rec.VMMStart = start
	}
	if err := d.cfg.Store.Register(rec); err != nil {
		m.undo.Run()
		return nil, err
	}
	d.cfg.Logger.Info("vm started", "vm_id", id, "vmm", "qemu", "pid", cmd.Process.Pid, "accelerator", accel)
	return m, nil
}

// args returns QEMU's command line for req.
func (d *Driver) args(m *machine, req *cylo.Request) []string {
	memMiB := (req.Limits.MemoryBytes + d.cfg.GuestOverheadBytes + (1<<20 - 1)) >> 20
	cpu := "max"
	if m.accel == AccelKVM {
		cpu = "host"
	}
	cmdline := strings.Join([]string{
		"console=ttyS0",
		// Reboot by triple fault, and on panic at once: with -no-reboot
		// QEMU then exits instead of booting again.
		"reboot=t", "panic=-1",
		"quiet", "loglevel=4",
		// The guest has RDRAND under -cpu max and host; crediting it
		// initialises the kernel's RNG at boot.
		"random.trust_cpu=on",
		"cylo.root=/dev/vda", "cylo.scratch=/dev/vdb",
	}, " ")
	if m.accel == AccelTCG {
		// Under TCG the guest reads the host's TSC. Telling the kernel its
		// frequency skips the calibration against the emulated PIT, which
		// fails on a busy host and hangs the boot before init.
		if khz, err := tsc.HostKHz(); err == nil {
			cmdline += fmt.Sprintf(" tsc_early_khz=%d", khz)
		}
	}
	channel := []string{
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + filepath.Join(m.dir, agentSocket) + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + agentproto.SerialPortName,
	}
	if m.channel == ChannelVsock {
		channel = []string{"-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", m.cid)}
	}
	var network []string
	if m.net != nil {
		var kernel []string
		kernel, network = m.net.netArgs()
		cmdline += " " + strings.Join(kernel, " ")
	}
	if d.cfg.Transport == cylo.TransportSSH {
		// No agent channel: with cylo.mode=ssh the guest starts sshd.
		cmdline += " cylo.mode=ssh"
		channel = nil
	} else {
		cmdline += " cylo.channel=" + m.channel
	}
	args := []string{
		"-name", "cylo-" + m.id,
		// microvm with ACPI on (its default): Debian's cloud kernel finds
		// the virtio-mmio devices through ACPI and ignores the command-line
		// device list QEMU passes when ACPI is off.
		"-M", "microvm",
		"-accel", m.accel,
		"-cpu", cpu,
		"-m", strconv.FormatInt(memMiB, 10),
		"-smp", strconv.Itoa(req.Limits.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + filepath.Join(m.dir, consoleLog),
		"-kernel", d.cfg.Kernel,
		"-initrd", d.cfg.Initrd,
		"-append", cmdline,
		"-drive", "id=root,file=" + d.cfg.Rootfs + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=root",
		"-drive", "id=scratch,file=" + filepath.Join(m.dir, scratchDisk) + ",format=raw,if=none,cache=unsafe",
		"-device", "virtio-blk-device,drive=scratch",
		"-device", "virtio-rng-device",
	}
	args = append(args, channel...)
	return append(args, network...)
}

// connect waits for the guest agent. It fails early, with the console
// tail, when QEMU exits during boot.
func (m *machine) connect(ctx context.Context, bootTimeout time.Duration) (*agentrun.Session, error) {
	bootCtx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	go func() {
		select {
		case <-m.exited:
			cancel()
		case <-bootCtx.Done():
		}
	}()

	if m.channel == ChannelVsock {
		session, err := agentrun.Connect(bootCtx, vsockDialer(m.cid), vsockAttempt)
		return m.bootResult(ctx, session, bootTimeout, err)
	}
	socket := filepath.Join(m.dir, agentSocket)
	dial := func(ctx context.Context) (net.Conn, error) {
		var dialer net.Dialer
		for {
			conn, err := dialer.DialContext(ctx, "unix", socket)
			if err == nil {
				return conn, nil
			}
			// QEMU creates the socket a few milliseconds after it starts.
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	// One long attempt: the port queues the request until the agent opens
	// it, and a reconnect would discard what the guest already read.
	session, err := agentrun.Connect(bootCtx, dial, bootTimeout)
	return m.bootResult(ctx, session, bootTimeout, err)
}

// bootResult turns the outcome of waiting for the agent into the error a
// user reads: QEMU's exit, an interruption, or a timeout with the console.
func (m *machine) bootResult(ctx context.Context, session *agentrun.Session, bootTimeout time.Duration, err error) (*agentrun.Session, error) {
	if err == nil {
		return session, nil
	}
	select {
	case <-m.exited:
		return nil, m.withConsole(fmt.Errorf("vm %s: qemu exited during boot (%s)", m.id, m.cmd.ProcessState))
	default:
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("vm %s: boot interrupted: %w", m.id, ctx.Err())
	}
	return nil, m.withConsole(fmt.Errorf("vm %s: guest agent not ready after %s: %w", m.id, bootTimeout, err))
}

// stop kills QEMU's process group and waits for QEMU to exit. The guest
// keeps no state worth a clean shutdown: its scratch disk is deleted next.
func (m *machine) stop() error {
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-m.exited:
		return nil
	case <-time.After(teardownTimeout):
		return fmt.Errorf("qemu pid %d did not exit %s after SIGKILL", m.cmd.Process.Pid, teardownTimeout)
	}
}

func (m *machine) teardown() error {
	return m.undo.Run()
}

// withConsole appends the tail of the guest console and of QEMU's own log
// to err, which is where a failed boot explains itself.
func (m *machine) withConsole(err error) error {
	return fmt.Errorf("%w\n%s", err, m.consoleTail())
}

// consoleTail returns the last lines of the guest console and of QEMU's
// own log, or a note saying that both are empty.
func (m *machine) consoleTail() string {
	var b strings.Builder
	for _, f := range []struct{ name, file string }{{"guest console", consoleLog}, {"qemu log", vmmLog}} {
		if tail := procfs.Tail(filepath.Join(m.dir, f.file), 30); tail != "" {
			fmt.Fprintf(&b, "--- %s (last lines) ---\n%s\n", f.name, tail)
		}
	}
	if b.Len() == 0 {
		return "(the guest console is empty: the kernel printed nothing yet; under TCG on a busy host, a longer boot timeout helps)"
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// phaseClock returns a function that appends a phase ending now.
func phaseClock(phases *[]cylo.Phase) func(name string) {
	last := time.Now()
	return func(name string) {
		now := time.Now()
		*phases = append(*phases, cylo.Phase{Name: name, Duration: now.Sub(last)})
		last = now
	}
}
