package vmnet

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func TestPlanTAP(t *testing.T) {
	tap, err := PlanTAP("0001abcd", "")
	if err != nil {
		t.Fatal(err)
	}
	if tap.Name != "cylo0001abcd" {
		t.Errorf("name = %q, want cylo0001abcd", tap.Name)
	}
	if tap.Host.String() != "172.29.0.5/30" || tap.Guest.String() != "172.29.0.6/30" {
		t.Errorf("addresses = %v, %v, want 172.29.0.5/30 and 172.29.0.6/30", tap.Host, tap.Guest)
	}
	if tap.GuestMAC != "06:00:ac:1d:00:06" {
		t.Errorf("guest MAC = %q, want 06:00:ac:1d:00:06", tap.GuestMAC)
	}

	named, err := PlanTAP("0001abcd", "guest0")
	if err != nil || named.Name != "guest0" {
		t.Errorf("PlanTAP with a name = %+v, %v, want name guest0", named, err)
	}
	for _, bad := range []string{"a-name-of-16-chr", "a/b", "a b", ".."} {
		if _, err := PlanTAP("0001abcd", bad); err == nil {
			t.Errorf("PlanTAP accepted tap name %q", bad)
		}
	}
	if _, err := PlanTAP("xyz", ""); err == nil {
		t.Error("PlanTAP accepted vm id xyz")
	}
}

// TestNamespaceTAP creates a namespace with a TAP device, serves on the
// device's host address inside it and dials that from inside. It sends
// nothing from the host's namespace, where the address would be routed
// out of the machine.
func TestNamespaceTAP(t *testing.T) {
	ns, err := CreateNamespace("cylo-vmnet-test")
	if err != nil {
		t.Skipf("cannot create a network namespace (needs CAP_SYS_ADMIN): %v", err)
	}
	defer ns.Remove(nil)
	tap, err := PlanTAP("00ff1234", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.CreateTAP(tap); err != nil {
		t.Fatalf("CreateTAP: %v", err)
	}
	if _, err := netlink.LinkByName(tap.Name); err == nil {
		t.Errorf("tap %s is in the host's network namespace", tap.Name)
	}

	var l net.Listener
	err = ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp", net.JoinHostPort(tap.Host.Addr().String(), "0"))
		return err
	})
	if err != nil {
		t.Fatalf("listen inside the namespace: %v", err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello"))
			c.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := ns.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial inside the namespace: %v", err)
	}
	buf := make([]byte, 5)
	_, err = conn.Read(buf)
	conn.Close()
	if err != nil || string(buf) != "hello" {
		t.Errorf("read %q, %v; want hello", buf, err)
	}

	if err := ns.Remove([]string{tap.Name}); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if Exists(ns.Name) {
		t.Errorf("namespace %s exists after Remove", ns.Name)
	}
	if err := ns.Do(func() error { return nil }); err == nil {
		t.Error("Do succeeded in a removed namespace")
	}
	if err := RemoveNamespace(ns.Name, nil); err != nil {
		t.Errorf("second RemoveNamespace: %v, want nil for a missing namespace", err)
	}
	var notFound netlink.LinkNotFoundError
	if _, err := netlink.LinkByName(tap.Name); !errors.As(err, &notFound) {
		t.Errorf("tap %s after Remove: %v, want not found", tap.Name, err)
	}
}
