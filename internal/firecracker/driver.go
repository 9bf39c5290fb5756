package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/agentproto"
	"github.com/cylo-dev/cylo/internal/agentrun"
	"github.com/cylo-dev/cylo/internal/sshexec"
	"github.com/cylo-dev/cylo/internal/sshrun"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// Name is the backend name of this driver.
const Name = "firecracker"

// agentAttemptTimeout bounds one attempt to reach the agent. Firecracker
// closes a vsock connection at once while nothing listens in the guest,
// so short attempts repeated until BootTimeout find the agent soon after
// it starts.
const agentAttemptTimeout = 500 * time.Millisecond

// Driver runs requests in Firecracker microVMs. It implements
// cylo.Backend and is safe for concurrent use: each Run boots its own VM.
type Driver struct {
	cfg   Config
	store *vmstate.Store
}

var _ cylo.Backend = (*Driver)(nil)

// New validates cfg and returns a driver. It opens the vmstate store but
// does not look for the binary or the images; Health does.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	store, err := vmstate.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	return &Driver{cfg: cfg, store: store}, nil
}

// Name returns "firecracker".
func (d *Driver) Name() string { return Name }

// Health reports whether this host can run Firecracker guests: the binary,
// a usable /dev/kvm, and the kernel, initrd and rootfs files.
func (d *Driver) Health(ctx context.Context) cylo.Health {
	// Every problem is listed, not only the first, so that a user fixes
	// them in one pass.
	h := cylo.Health{Backend: Name}
	var problems []string

	if bin, err := d.cfg.findBinary(); err != nil {
		problems = append(problems, err.Error())
	} else {
		h.Details = append(h.Details, "binary: "+bin)
		if v, err := binaryVersion(ctx, bin); err == nil {
			h.Details = append(h.Details, "version: "+v)
		} else {
			h.Details = append(h.Details, "version: unknown ("+err.Error()+")")
		}
	}

	if st := d.cfg.KVMCheck(); !st.Usable {
		problems = append(problems, st.Reason)
	} else {
		h.Details = append(h.Details, "accelerator: kvm ("+st.Device+")")
	}

	files := []struct{ what, path, flag string }{
		{"guest kernel", d.cfg.KernelPath, "the kernel path"},
		{"initramfs", d.cfg.InitrdPath, "the initrd path"},
		{"rootfs image", d.cfg.RootfsPath, "the rootfs path"},
	}
	for _, f := range files {
		if _, err := os.Stat(f.path); err != nil {
			problems = append(problems, fmt.Sprintf("%s %s is missing: build the image with cylo image build or set %s", f.what, f.path, f.flag))
			break
		}
	}
	if len(problems) > 0 {
		h.Reason = strings.Join(problems, "; and ")
		return h
	}
	h.Usable = true
	return h
}

// binaryVersion runs `firecracker --version` and returns its first line.
func binaryVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return first, nil
}

// Run boots a VM sized for req, runs req through the guest agent or over
// SSH (Config.Transport), and destroys the VM. A teardown failure is logged and leaves the vmstate
// record for `cylo gc`, but does not fail a request that ran.
func (d *Driver) Run(ctx context.Context, req *cylo.Request) (*cylo.Result, error) {
	full, err := req.WithDefaults()
	if err != nil {
		return nil, err
	}
	spec := MachineSpec{
		VCPUs:     full.Limits.VCPUs,
		MemoryMiB: int((full.Limits.MemoryBytes+(1<<20)-1)>>20) + d.cfg.MemoryOverheadMiB,
		DiskBytes: full.Limits.DiskBytes,
		Network:   full.Network,
	}
	ssh := d.cfg.Transport == cylo.TransportSSH
	if ssh {
		spec.Network, spec.SSH = true, true
	}

	bootStart := time.Now()
	m, err := d.start(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start firecracker vm: %w", err)
	}
	defer func() {
		if err := m.Close(ctx); err != nil {
			d.cfg.Logger.Warn("firecracker vm teardown failed; run cylo gc", "vm_id", m.ID, "err", err)
		}
	}()

	var res *cylo.Result
	var boot, run time.Duration
	health := &agentproto.Health{} // stays empty for the ssh transport
	if ssh {
		res, boot, run, err = d.runSSH(ctx, m, full, bootStart)
	} else {
		res, health, boot, run, err = d.runAgent(ctx, m, full, bootStart)
	}
	if err != nil {
		return nil, err
	}

	d.addUsage(ctx, m, res)
	res.Usage.Phases = append(res.Usage.Phases, cylo.Phase{Name: "boot", Duration: boot}, cylo.Phase{Name: "run", Duration: run})
	res.Metadata = cylo.Metadata{
		Backend:      Name,
		VMM:          "firecracker",
		VMMVersion:   m.VMMVersion,
		Accelerator:  "kvm",
		Transport:    d.cfg.Transport,
		AgentVersion: health.AgentVersion,
		Kernel:       health.Kernel,
		VMID:         m.ID,
	}
	return res, nil
}

// runAgent waits for the guest agent and runs req through it.
func (d *Driver) runAgent(ctx context.Context, m *Machine, req *cylo.Request, bootStart time.Time) (_ *cylo.Result, _ *agentproto.Health, boot, run time.Duration, _ error) {
	sess, err := d.connectAgent(ctx, m)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	defer sess.Close()
	boot = time.Since(bootStart)
	d.cfg.Logger.Info("guest agent ready", "vm_id", m.ID, "boot_ms", boot.Milliseconds(), "agent_version", sess.Health.AgentVersion)

	runStart := time.Now()
	res, err := sess.Exec(ctx, req)
	if err != nil {
		return nil, nil, 0, 0, fmt.Errorf("run in firecracker vm %s: %w", m.ID, err)
	}
	return res, sess.Health, boot, time.Since(runStart), nil
}

// runSSH waits for the guest's sshd on its TAP address, dialing from
// inside the VM's network namespace, and runs req over SSH.
func (d *Driver) runSSH(ctx context.Context, m *Machine, req *cylo.Request, bootStart time.Time) (_ *cylo.Result, boot, run time.Duration, _ error) {
	cfg := d.cfg.SSH
	if cfg.Host == "" {
		cfg.Host, cfg.Port = m.tap.Guest.Addr().String(), sshexec.DefaultPort
	}
	client, err := sshrun.Connect(ctx, sshrun.Target{
		Config:      cfg,
		Dial:        m.ns.DialContext,
		BootTimeout: d.cfg.BootTimeout,
		Exited:      m.proc.exited,
		ConsoleTail: func() string { return logTail(m.path(consoleLogName), 20) },
		Logger:      d.cfg.Logger.With("vm_id", m.ID),
	})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("firecracker vm %s: connect over ssh: %w", m.ID, err)
	}
	defer client.Close()
	boot = time.Since(bootStart)
	d.cfg.Logger.Info("guest ready", "vm_id", m.ID, "transport", "ssh", "boot_ms", boot.Milliseconds(), "ssh_addr", cfg.Address())

	runStart := time.Now()
	res, err := sshrun.Exec(ctx, client, req)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("run in firecracker vm %s over ssh: %w", m.ID, err)
	}
	return res, boot, time.Since(runStart), nil
}

// connectAgent waits up to BootTimeout for the guest agent.
func (d *Driver) connectAgent(ctx context.Context, m *Machine) (*agentrun.Session, error) {
	bootCtx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()

	sess, err := agentrun.Connect(bootCtx, m.DialAgent, agentAttemptTimeout)
	if err == nil {
		return sess, nil
	}
	select {
	case <-m.proc.exited:
		return nil, fmt.Errorf("firecracker vm %s: guest agent did not respond: %w", m.ID, m.proc.exitError("exited during boot"))
	default:
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return nil, fmt.Errorf("firecracker vm %s: guest agent did not respond within %v of InstanceStart (raise the boot timeout, or check the guest console): %w; last lines of the console:\n%s",
			m.ID, d.cfg.BootTimeout, err, logTail(m.path(consoleLogName), 20))
	}
	return nil, fmt.Errorf("firecracker vm %s: connect to guest agent: %w", m.ID, err)
}

// addUsage fills the VMM's counters into res. Missing metrics are logged
// and leave the counters at zero, because the run itself succeeded.
func (d *Driver) addUsage(ctx context.Context, m *Machine, res *cylo.Result) {
	metrics, rss, err := m.Usage(ctx)
	if err != nil {
		d.cfg.Logger.Warn("firecracker usage incomplete", "vm_id", m.ID, "err", err)
	}
	u := &res.Usage
	u.BlockReadBytes = metrics.BlockReadBytes
	u.BlockWriteBytes = metrics.BlockWriteBytes
	u.NetRxBytes = metrics.NetRxBytes
	u.NetTxBytes = metrics.NetTxBytes
	u.VCPUExits = metrics.VCPUExits
	u.VMMRSSBytes = rss
}
