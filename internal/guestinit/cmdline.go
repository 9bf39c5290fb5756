// Package guestinit is the boot stage of cylo's guest agent when it runs as
// PID 1 from the initramfs: it loads the kernel modules, mounts the
// read-only root with a writable overlay from the scratch disk, switches
// into it, and sets up cgroups and the network. The kernel command line,
// written by cylo's VM drivers, says which devices to use.
package guestinit

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Channel is the transport between the host and the agent.
type Channel string

// Channels.
const (
	ChannelVirtioSerial Channel = "virtio-serial" // a virtio-serial port, /dev/vport*p*
	ChannelVsock        Channel = "vsock"         // AF_VSOCK
)

// Mode is the service the guest runs after boot.
type Mode string

// Modes.
const (
	ModeAgent Mode = "agent" // the agent serves requests on Channel (the default)
	ModeSSH   Mode = "ssh"   // the image's sshd serves requests on eth0
)

// Config is the guest's boot configuration, parsed from the kernel command
// line.
type Config struct {
	Root    string       // read-only root filesystem device (cylo.root)
	Scratch string       // writable scratch disk device (cylo.scratch)
	Channel Channel      // agent transport (cylo.channel); empty in ssh mode if unset
	Mode    Mode         // cylo.mode, ModeAgent when unset
	IP      netip.Prefix // static eth0 address (cylo.ip); invalid when unset
	Gateway netip.Addr   // default route (cylo.gw); invalid when unset

	// KernelRelease is the running kernel's uname -r, set by Setup.
	KernelRelease string
}

// ParseCmdline reads the cylo.* parameters from a kernel command line and
// ignores the others. It rejects unknown cylo.* parameters, so a typo
// fails the boot instead of being ignored.
func ParseCmdline(cmdline string) (*Config, error) {
	cfg := &Config{Mode: ModeAgent}
	for _, param := range splitCmdline(cmdline) {
		key, value, _ := strings.Cut(param, "=")
		if !strings.HasPrefix(key, "cylo.") {
			continue
		}
		if value == "" {
			return nil, fmt.Errorf("kernel parameter %s has no value", key)
		}
		switch key {
		case "cylo.root":
			cfg.Root = value
		case "cylo.scratch":
			cfg.Scratch = value
		case "cylo.channel":
			cfg.Channel = Channel(value)
		case "cylo.mode":
			cfg.Mode = Mode(value)
		case "cylo.ip":
			p, err := netip.ParsePrefix(value)
			if err != nil {
				return nil, fmt.Errorf("invalid cylo.ip %q: want ADDRESS/PREFIX: %w", value, err)
			}
			cfg.IP = p
		case "cylo.gw":
			a, err := netip.ParseAddr(value)
			if err != nil {
				return nil, fmt.Errorf("invalid cylo.gw %q: %w", value, err)
			}
			cfg.Gateway = a
		default:
			return nil, fmt.Errorf("unknown kernel parameter %s", key)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (c *Config) validate() error {
	var errs []error
	if c.Root == "" {
		errs = append(errs, errors.New("cylo.root is missing: the root filesystem device, such as /dev/vda"))
	}
	if c.Scratch == "" {
		errs = append(errs, errors.New("cylo.scratch is missing: the scratch disk device, such as /dev/vdb"))
	}
	for _, dev := range []string{c.Root, c.Scratch} {
		if dev != "" && !strings.HasPrefix(dev, "/dev/") {
			errs = append(errs, fmt.Errorf("device %q is not under /dev", dev))
		}
	}
	if c.Root != "" && c.Root == c.Scratch {
		errs = append(errs, fmt.Errorf("cylo.root and cylo.scratch are the same device %s", c.Root))
	}

	switch c.Mode {
	case ModeAgent:
		if c.Channel == "" {
			errs = append(errs, fmt.Errorf("cylo.channel is missing: want %s or %s", ChannelVirtioSerial, ChannelVsock))
		}
	case ModeSSH:
	default:
		errs = append(errs, fmt.Errorf("invalid cylo.mode %q: want %s or %s", c.Mode, ModeAgent, ModeSSH))
	}
	switch c.Channel {
	case "", ChannelVirtioSerial, ChannelVsock:
	default:
		errs = append(errs, fmt.Errorf("invalid cylo.channel %q: want %s or %s", c.Channel, ChannelVirtioSerial, ChannelVsock))
	}

	if c.Gateway.IsValid() {
		switch {
		case !c.IP.IsValid():
			errs = append(errs, errors.New("cylo.gw is set without cylo.ip"))
		case c.Gateway.Is4() != c.IP.Addr().Is4():
			errs = append(errs, fmt.Errorf("cylo.gw %s and cylo.ip %s are of different address families", c.Gateway, c.IP))
		}
	}
	return errors.Join(errs...)
}

// splitCmdline splits a kernel command line into parameters the way the
// kernel does: at spaces, except inside double quotes, which are removed.
func splitCmdline(cmdline string) []string {
	var params []string
	var cur strings.Builder
	inQuote := false
	for _, r := range strings.TrimSpace(cmdline) {
		switch {
		case r == '"':
			inQuote = !inQuote
		case (r == ' ' || r == '\t' || r == '\n') && !inQuote:
			if cur.Len() > 0 {
				params = append(params, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		params = append(params, cur.String())
	}
	return params
}

// parseModuleList returns the paths in the module manifest, one a line,
// skipping blank lines and # comments.
func parseModuleList(data string) []string {
	var paths []string
	for _, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		paths = append(paths, line)
	}
	return paths
}
