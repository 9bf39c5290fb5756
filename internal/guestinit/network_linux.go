package guestinit

import (
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
)

// setupNetwork brings lo up and, when cfg.IP is set, assigns it to eth0
// with a default route through cfg.Gateway. The Debian cloud kernel has no
// ip= autoconfiguration (CONFIG_IP_PNP), so this is done from user space.
func setupNetwork(cfg *Config) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if !cfg.IP.IsValid() {
		return nil
	}

	eth0, err := waitForLink("eth0", DeviceTimeout)
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   cfg.IP.Addr().AsSlice(),
		Mask: net.CIDRMask(cfg.IP.Bits(), cfg.IP.Addr().BitLen()),
	}}
	if err := netlink.AddrAdd(eth0, addr); err != nil {
		return fmt.Errorf("add address %s to eth0: %w", cfg.IP, err)
	}
	if err := netlink.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("bring eth0 up: %w", err)
	}
	if !cfg.Gateway.IsValid() {
		return nil
	}
	route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: cfg.Gateway.AsSlice()}
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("add default route via %s: %w", cfg.Gateway, err)
	}
	return nil
}

// waitForLink polls for a network interface, which appears when its
// driver finishes probing.
func waitForLink(name string, timeout time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(timeout)
	for {
		link, err := netlink.LinkByName(name)
		if err == nil {
			return link, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("network interface %s did not appear within %v: %w: check that the VM has a virtio-net device", name, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
