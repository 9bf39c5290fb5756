package qemu

import (
	"context"
	"fmt"
	"net"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/sshexec"
	"github.com/cylo-dev/cylo/internal/sshrun"
	"github.com/cylo-dev/cylo/internal/vmnet"
)

// validateTransport checks the transport settings and fills the network
// default of the ssh transport.
func (c *Config) validateTransport() error {
	switch c.Transport {
	case "", cylo.TransportAgent:
		c.Transport = cylo.TransportAgent
		if c.Network != vmnet.ModeNone || c.TAPName != "" {
			return fmt.Errorf("network mode %q is set with the agent transport, which has no guest network on qemu: use --transport ssh or leave the network mode empty", c.Network)
		}
		return nil
	case cylo.TransportSSH:
	default:
		return fmt.Errorf("unknown transport %q: use agent or ssh", c.Transport)
	}

	if c.Network == vmnet.ModeNone {
		c.Network = vmnet.ModeUser
	}
	if err := vmnet.ValidateMode(c.Network); err != nil {
		return err
	}
	if c.TAPName != "" && c.Network != vmnet.ModeTAP {
		return fmt.Errorf("tap name %q is set with network mode %s: set the network mode to tap", c.TAPName, c.Network)
	}
	if c.Network == vmnet.ModeUser && c.SSH.Host != "" {
		return fmt.Errorf("ssh_host %q is set with qemu user networking, where the guest is reachable only through its forward on 127.0.0.1: leave ssh_host empty, or use network mode tap", c.SSH.Host)
	}
	check := c.SSH
	if check.Host == "" {
		check.Host = "guest" // filled in per VM
	}
	return check.Validate()
}

// netPlan is the network of one VM with the ssh transport.
type netPlan struct {
	mode string
	// forwardPort is the 127.0.0.1 port forwarded to the guest's port 22
	// in vmnet.ModeUser.
	forwardPort int
	// ns and tap are the namespace and TAP device in vmnet.ModeTAP.
	ns  *vmnet.Namespace
	tap vmnet.TAP
}

// freeLoopbackPort returns a TCP port that was free on 127.0.0.1 a moment
// ago.
//
// NOTE: another process can take the port before QEMU binds it. QEMU then
// exits with "Could not set up host forwarding rule" and the request
// fails with QEMU's log.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1 for the ssh forward: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// setupNetwork prepares the network of m in mode: a loopback port for
// user networking (the ssh transport's forward), or a namespace with a TAP
// device, recorded for cylo gc before it is created.
func (d *Driver) setupNetwork(m *machine, mode string) error {
	plan := &netPlan{mode: mode}
	m.net = plan
	if plan.mode == vmnet.ModeUser {
		port, err := freeLoopbackPort()
		plan.forwardPort = port
		return err
	}

	tap, err := vmnet.PlanTAP(m.id, d.cfg.TAPName)
	if err != nil {
		return err
	}
	plan.tap = tap
	m.record.NetNS = vmnet.NamespaceName(m.id)
	m.record.TAPDevices = []string{tap.Name}
	if err := d.cfg.Store.Register(m.record); err != nil {
		return err
	}
	ns, err := vmnet.CreateNamespace(m.record.NetNS)
	if err != nil {
		return err
	}
	m.undo.Push("remove network namespace", func() error { return ns.Remove([]string{tap.Name}) })
	plan.ns = ns
	return ns.CreateTAP(tap)
}

// netArgs returns the kernel parameters and QEMU flags of the network.
// restrict=on keeps a user-networked guest from reaching anything but
// the forward, which listens on 127.0.0.1 only.
func (p *netPlan) netArgs() (kernel, qemuArgs []string) {
	switch p.mode {
	case vmnet.ModeUser:
		kernel = append(kernel, "cylo.ip="+vmnet.UserGuest.String(), "cylo.gw="+vmnet.UserGateway.String())
		qemuArgs = []string{
			"-netdev", fmt.Sprintf("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", p.forwardPort),
			"-device", "virtio-net-device,netdev=net0",
		}
	case vmnet.ModeTAP:
		kernel = append(kernel, "cylo.ip="+p.tap.Guest.String(), "cylo.gw="+p.tap.Host.Addr().String())
		qemuArgs = []string{
			// script=no: QEMU must not run /etc/qemu-ifup; the device is
			// configured already.
			"-netdev", "tap,id=net0,ifname=" + p.tap.Name + ",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=net0,mac=" + p.tap.GuestMAC,
		}
	}
	return kernel, qemuArgs
}

// sshTarget returns how to reach the guest of m over SSH.
func (d *Driver) sshTarget(m *machine) sshrun.Target {
	cfg := d.cfg.SSH
	var dial sshexec.DialFunc
	switch {
	case m.net.mode == vmnet.ModeUser:
		cfg.Host, cfg.Port = "127.0.0.1", m.net.forwardPort
	case cfg.Host == "":
		cfg.Host, cfg.Port = m.net.tap.Guest.Addr().String(), sshexec.DefaultPort
	}
	if m.net.ns != nil {
		dial = m.net.ns.DialContext
	}
	return sshrun.Target{
		Config:      cfg,
		Dial:        dial,
		BootTimeout: d.cfg.BootTimeout,
		Exited:      m.exited,
		ConsoleTail: m.consoleTail,
		Logger:      d.cfg.Logger.With("vm_id", m.id),
	}
}

// runSSH waits for the guest's sshd and runs req over SSH.
func (d *Driver) runSSH(ctx context.Context, m *machine, req *cylo.Request, mark func(string)) (*cylo.Result, error) {
	target := d.sshTarget(m)
	client, err := sshrun.Connect(ctx, target)
	if err != nil {
		// A timeout's error contains the console tail already.
		return nil, fmt.Errorf("vm %s: connect over ssh: %w", m.id, err)
	}
	defer client.Close()
	mark("boot")
	d.cfg.Logger.Info("guest ready", "vm_id", m.id, "transport", "ssh", "ssh_addr", target.Config.Address())

	result, err := sshrun.Exec(ctx, client, req)
	if err != nil {
		return nil, m.withConsole(fmt.Errorf("run in vm %s over ssh: %w", m.id, err))
	}
	mark("run")
	return result, nil
}
