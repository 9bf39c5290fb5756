package firecracker

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// guestSubnets is the range from which each networked guest gets a /30:
// the first address is the host's end of the TAP device, the second the
// guest's.
var guestSubnets = netip.MustParsePrefix("172.29.0.0/16")

// tapDevice is a host TAP device with the addresses of one guest link.
type tapDevice struct {
	Name     string
	Host     netip.Prefix // host address with the /30 prefix length
	Guest    netip.Prefix // guest address with the /30 prefix length
	GuestMAC string
}

// planTAP derives the TAP name, addresses and guest MAC from the VM id.
//
// NOTE: the /30 comes from the id's first 14 bits, so two concurrent
// networked VMs share a subnet with a chance of about 1 in 16384. The
// second then fails to add its address and the request fails; nothing
// checks for free subnets first.
func planTAP(id string) (tapDevice, error) {
	raw, err := hex.DecodeString(id)
	if err != nil || len(raw) < 2 {
		return tapDevice{}, fmt.Errorf("plan tap device: invalid vm id %q", id)
	}
	index := uint32(binary.BigEndian.Uint16(raw)) & 0x3fff
	base := guestSubnets.Addr().As4()
	offset := binary.BigEndian.Uint32(base[:]) + index*4
	var host, guest [4]byte
	binary.BigEndian.PutUint32(host[:], offset+1)
	binary.BigEndian.PutUint32(guest[:], offset+2)

	return tapDevice{
		// Interface names have at most 15 bytes (IFNAMSIZ less the NUL).
		Name:  "fc" + id,
		Host:  netip.PrefixFrom(netip.AddrFrom4(host), 30),
		Guest: netip.PrefixFrom(netip.AddrFrom4(guest), 30),
		// 06 marks a locally administered unicast address.
		GuestMAC: fmt.Sprintf("06:00:%02x:%02x:%02x:%02x", guest[0], guest[1], guest[2], guest[3]),
	}, nil
}

// create adds the TAP device in the calling thread's network namespace,
// gives it the host address and brings it up. Firecracker opens it by
// name when the network interface is configured.
func (t tapDevice) create() error {
	link := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: t.Name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// Firecracker opens the device with IFF_VNET_HDR and without
		// packet information.
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := netlink.LinkAdd(link); err != nil {
		return fmt.Errorf("create tap device %s: %w", t.Name, err)
	}
	for _, f := range link.Fds {
		f.Close() // the device is persistent; Firecracker opens its own queue
	}

	addr := &netlink.Addr{IPNet: &net.IPNet{IP: t.Host.Addr().AsSlice(), Mask: net.CIDRMask(t.Host.Bits(), 32)}}
	err := netlink.AddrAdd(link, addr)
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("configure tap device %s: %w", t.Name, err), t.remove())
	}
	return nil
}

// remove deletes the TAP device. A missing device is not an error.
func (t tapDevice) remove() error {
	link, err := netlink.LinkByName(t.Name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find tap device %s: %w", t.Name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete tap device %s: %w", t.Name, err)
	}
	return nil
}
