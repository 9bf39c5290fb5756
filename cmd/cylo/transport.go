package main

import (
	"os"

	"github.com/spf13/pflag"
)

// registerTransport adds the flags of the transport, network and SSH
// settings. Each flag is the config file key with dashes.
func (g *globalFlags) registerTransport(f *pflag.FlagSet) {
	c := &g.cfg
	f.StringVar(&c.Transport, "transport", "", "how code reaches the guest: agent (cylo's guest agent) or ssh (the image's SSH server; default profile ssh) (default agent)")
	f.StringVar(&c.NetworkMode, "network-mode", "", "guest network of the ssh transport: user (QEMU user networking, forward on 127.0.0.1; the QEMU default) or tap (a TAP device in a network namespace of the VM's own; the Firecracker default)")
	f.StringVar(&c.TAPName, "tap-name", "", "name of the guest's TAP device in network mode tap (default cylo followed by the VM id)")
	f.DurationVar(&c.BootTimeout, "boot-timeout", 0, "how long to wait from VMM start until the guest agent or SSH server answers, e.g. 90s (default 60s on QEMU, 30s on Firecracker)")

	s := &c.SSH
	f.StringVar(&s.Host, "ssh-host", "", "SSH server to run the code on (default: the guest cylo boots)")
	f.IntVar(&s.Port, "ssh-port", 0, "SSH server port (default 22)")
	f.StringVar(&s.Username, "ssh-username", "", "user to log in as (default root)")
	f.StringVar(&s.KeyPath, "ssh-key-path", "", "private key file to log in with (default: the key the ssh image was built with)")
	f.StringVar(&s.Password, "ssh-password", "", "password to log in with. Other users can read it in the process list: prefer ssh_password in the config file or the "+passwordEnv+" environment variable")
	f.BoolVar(&s.Agent, "ssh-agent", false, "log in with the keys of the SSH agent at SSH_AUTH_SOCK, also when a key file or password is set")
	f.StringVar(&s.KnownHosts, "ssh-known-hosts", "", "OpenSSH known_hosts file that lists the server's host key")
	f.StringVar(&s.HostKey, "ssh-host-key", "", `the server's public host key, "ssh-ed25519 AAAA..." (default: the key the ssh image recorded)`)
	f.BoolVar(&s.InsecureIgnoreHostKey, "ssh-insecure-ignore-host-key", false, "accept any host key, so anyone on the path can impersonate the server; logged as a warning on every connection")
}

// loadPasswordEnv sets ssh_password from CYLO_SSH_PASSWORD unless the flag
// is given. It runs before the config file is read, which then cannot
// override it.
func (g *globalFlags) loadPasswordEnv(flags *pflag.FlagSet) {
	if pw := os.Getenv(passwordEnv); pw != "" && !flags.Changed("ssh-password") {
		g.cfg.SSH.Password = pw
	}
}

// loadTransport fills the transport settings that neither a flag nor
// CYLO_SSH_PASSWORD set from the config file.
func (g *globalFlags) loadTransport(flags *pflag.FlagSet, file fileConfig) {
	c, s := &g.cfg, &g.cfg.SSH
	str := func(flag string, dst *string, value string) {
		if !flags.Changed(flag) && *dst == "" && value != "" {
			*dst = value
		}
	}
	str("transport", &c.Transport, file.Transport)
	str("network-mode", &c.NetworkMode, file.NetworkMode)
	str("tap-name", &c.TAPName, file.TAPName)
	str("ssh-host", &s.Host, file.SSH.Host)
	str("ssh-username", &s.Username, file.SSH.Username)
	str("ssh-key-path", &s.KeyPath, file.SSH.KeyPath)
	str("ssh-password", &s.Password, file.SSH.Password)
	str("ssh-known-hosts", &s.KnownHosts, file.SSH.KnownHosts)
	str("ssh-host-key", &s.HostKey, file.SSH.HostKey)

	if !flags.Changed("boot-timeout") && file.BootTimeout != 0 {
		c.BootTimeout = file.BootTimeout
	}
	if !flags.Changed("ssh-port") && file.SSH.Port != 0 {
		s.Port = file.SSH.Port
	}
	if !flags.Changed("ssh-agent") && file.SSH.Agent {
		s.Agent = true
	}
	if !flags.Changed("ssh-insecure-ignore-host-key") && file.SSH.InsecureIgnoreHostKey {
		s.InsecureIgnoreHostKey = true
	}
}
