package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"testing"

	"github.com/cylo-dev/cylo/internal/firecracker/fctest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestStartWithNetwork(t *testing.T) {
	e := newEnv(t, map[string]string{fctest.EnvAgentMode: "silent"})

	// The TAP device goes into a network namespace that this test
	// creates. netlink calls and the fork of firecracker act in the
	// namespace of the calling thread, so all of it stays on one locked
	// thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Skipf("cannot create a network namespace (needs CAP_SYS_ADMIN): %v", err)
	}
	defer ns.Close()
	defer netns.Set(orig)

	m, err := e.driver().start(context.Background(), MachineSpec{VCPUs: 1, MemoryMiB: 256, DiskBytes: 16 << 20, Network: true})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	tap, _ := planTAP(m.ID)
	link, err := netlink.LinkByName(tap.Name)
	if err != nil {
		t.Errorf("tap %s missing while the vm runs: %v", tap.Name, err)
	} else if addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4); len(addrs) != 1 || addrs[0].IPNet.String() != tap.Host.String() {
		t.Errorf("tap addresses = %v, want %v", addrs, tap.Host)
	}

	if err := m.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err = netlink.LinkByName(tap.Name)
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		t.Errorf("tap %s still exists after Close: %v", tap.Name, err)
	}

	var sawIface bool
	for _, r := range e.requests() {
		if r.Path != "/network-interfaces/eth0" {
			continue
		}
		sawIface = true
		var body map[string]string
		json.Unmarshal([]byte(r.Body), &body)
		if body["host_dev_name"] != tap.Name || body["guest_mac"] != tap.GuestMAC || r.Status != 204 {
			t.Errorf("network interface request = %+v", r)
		}
	}
	if !sawIface {
		t.Error("no PUT /network-interfaces/eth0 with networking on")
	}
	e.checkClean()
}
