// Package vmnet gives a guest its network: a TAP device inside a network
// namespace of its own, or the plan for QEMU's user networking. The
// namespace keeps the TAP device out of the host's own namespace, so the
// guest reaches nothing but the host end of its link, and the VMM and the
// host's SSH client act inside it (Namespace.Start, Namespace.DialContext).
package vmnet

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
)

// Network modes of a guest.
const (
	// ModeNone gives the guest no network interface.
	ModeNone = ""
	// ModeUser is QEMU's user networking (slirp) with restrict=on: the
	// guest reaches nothing, and the host reaches the guest's port 22
	// through a forward bound to 127.0.0.1.
	ModeUser = "user"
	// ModeTAP is a TAP device in a network namespace of the VM's own.
	ModeTAP = "tap"
)

// ValidateMode reports an unknown network mode.
func ValidateMode(mode string) error {
	switch mode {
	case ModeNone, ModeUser, ModeTAP:
		return nil
	}
	return fmt.Errorf("unknown network mode %q: use user (QEMU only) or tap", mode)
}

// User-networking addresses: QEMU's slirp puts the guest at 10.0.2.15 and
// itself, the gateway, at 10.0.2.2 unless configured otherwise.
var (
	UserGuest   = netip.MustParsePrefix("10.0.2.15/24")
	UserGateway = netip.MustParseAddr("10.0.2.2")
)

// guestSubnets is the range from which each TAP link gets a /30: the
// first address is the host's end of the TAP device, the second the
// guest's.
var guestSubnets = netip.MustParsePrefix("172.29.0.0/16")

// TAP is a TAP device with the addresses of one guest link.
type TAP struct {
	Name     string
	Host     netip.Prefix // host address with the /30 prefix length
	Guest    netip.Prefix // guest address with the /30 prefix length
	GuestMAC string
}

// maxNameLen is the longest interface name: IFNAMSIZ less the NUL.
const maxNameLen = 15

// PlanTAP derives a TAP device's addresses and guest MAC from the VM id.
// name is the device's name, or "" for "cylo" followed by the id.
//
// NOTE: the /30 comes from the id's first 14 bits, so two VMs can get the
// same subnet. Each TAP device sits in its VM's own namespace, so that
// does not clash.
func PlanTAP(id, name string) (TAP, error) {
	raw, err := hex.DecodeString(id)
	if err != nil || len(raw) < 2 {
		return TAP{}, fmt.Errorf("plan tap device: invalid vm id %q", id)
	}
	if name == "" {
		name = "cylo" + id
	}
	if err := validName(name); err != nil {
		return TAP{}, err
	}
	index := uint32(binary.BigEndian.Uint16(raw)) & 0x3fff
	base := guestSubnets.Addr().As4()
	offset := binary.BigEndian.Uint32(base[:]) + index*4
	var host, guest [4]byte
	binary.BigEndian.PutUint32(host[:], offset+1)
	binary.BigEndian.PutUint32(guest[:], offset+2)

	return TAP{
		Name:  name,
		Host:  netip.PrefixFrom(netip.AddrFrom4(host), 30),
		Guest: netip.PrefixFrom(netip.AddrFrom4(guest), 30),
		// 06 marks a locally administered unicast address.
		GuestMAC: fmt.Sprintf("06:00:%02x:%02x:%02x:%02x", guest[0], guest[1], guest[2], guest[3]),
	}, nil
}

// validName checks a user-supplied interface name.
func validName(name string) error {
	if len(name) > maxNameLen || name == "." || name == ".." {
		return fmt.Errorf("invalid tap name %q: use 1 to %d characters", name, maxNameLen)
	}
	for _, r := range name {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return fmt.Errorf("invalid tap name %q: use letters, digits, - and _ only", name)
		}
	}
	return nil
}

// GuestAddress returns the guest's SSH address on a TAP link.
func (t TAP) GuestAddress(port int) string {
	return net.JoinHostPort(t.Guest.Addr().String(), fmt.Sprint(port))
}
