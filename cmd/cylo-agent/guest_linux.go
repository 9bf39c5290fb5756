package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/cylo-dev/cylo/internal/agent"
	"github.com/cylo-dev/cylo/internal/agentproto"
	"github.com/cylo-dev/cylo/internal/guestinit"
)

// runAs is the user programs run as in a guest. Running them as root would
// let them raise their own cgroup limits.
var runAs = &agent.Credential{UID: 1000, GID: 1000}

const runHome = "/home/cylo"

// runGuest boots the guest and serves the host until power-off. Any error
// is printed to the console, where the host's console log shows it, and
// the guest powers off so that the host does not wait for its timeout.
func runGuest() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := serveGuest(logger); err != nil {
		fmt.Fprintln(os.Stderr, "cylo-agent: fatal:", err)
		time.Sleep(100 * time.Millisecond)
		guestinit.PowerOff()
	}
}

func serveGuest(logger *slog.Logger) error {
	start := time.Now()
	boot, err := guestinit.Setup()
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	logger.Info("guest booted", "setup_ms", time.Since(start).Milliseconds(), "kernel", boot.KernelRelease, "channel", boot.Channel, "mode", boot.Mode)
	if boot.Mode == guestinit.ModeSSH {
		return serveSSH(logger)
	}

	parent := "/sys/fs/cgroup/runs"
	limits, err := agent.PrepareCgroupParent(parent)
	if err != nil {
		return err
	}
	if !limits {
		logger.Warn("memory or pids controller missing: those limits are not enforced")
	}
	if err := agent.EnsureUser("cylo", runAs.UID, runAs.GID, runHome); err != nil {
		return err
	}
	server := agent.NewServer(agent.Config{
		Kernel:       boot.KernelRelease,
		CgroupParent: parent,
		RunAs:        runAs,
		Home:         runHome,
		PowerOff:     func() { _ = guestinit.PowerOff() },
		Logger:       logger,
	})

	switch boot.Channel {
	case guestinit.ChannelVirtioSerial:
		path, err := agent.SerialPortPath(agentproto.SerialPortName, 10*time.Second)
		if err != nil {
			return err
		}
		logger.Info("agent serving", "port", path)
		return server.ServeSerial(path)
	case guestinit.ChannelVsock:
		l, err := vsock.Listen(agentproto.VsockPort, nil)
		if err != nil {
			return fmt.Errorf("listen on vsock port %d: %w", agentproto.VsockPort, err)
		}
		logger.Info("agent serving", "vsock_port", agentproto.VsockPort)
		return server.Serve(l)
	default:
		return fmt.Errorf("unknown channel %q in cylo.channel: use virtio-serial or vsock", boot.Channel)
	}
}

// serveSSH starts the image's sshd and reaps orphans until power-off. The
// host reaches the guest over SSH only.
func serveSSH(logger *slog.Logger) error {
	sshd, err := guestinit.StartSSHD()
	if err != nil {
		return err
	}
	logger.Warn("sshd started", "pid", sshd.Pid)
	// NewServer starts the reaper, which reaps every orphan for PID 1.
	agent.NewServer(agent.Config{Logger: logger})
	select {}
}
