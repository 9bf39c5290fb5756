package firecracker

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/ssh"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/firecracker/fctest"
	"github.com/cylo-dev/cylo/internal/sshexec"
	"github.com/cylo-dev/cylo/internal/sshrun"
	"github.com/cylo-dev/cylo/internal/vmnet"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// needNamespaces skips a test when this process cannot create network
// namespaces.
func needNamespaces(t *testing.T) {
	t.Helper()
	id, err := vmstate.NewID()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := vmnet.CreateNamespace("cylo-probe-" + id)
	if err != nil {
		t.Skipf("cannot create a network namespace (needs CAP_SYS_ADMIN): %v", err)
	}
	if err := ns.Remove(nil); err != nil {
		t.Fatal(err)
	}
}

func TestStartWithNetwork(t *testing.T) {
	needNamespaces(t)
	e := newEnv(t, map[string]string{fctest.EnvAgentMode: "silent"})

	m, err := e.driver().start(context.Background(), MachineSpec{VCPUs: 1, MemoryMiB: 256, DiskBytes: 16 << 20, Network: true})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	tap, _ := vmnet.PlanTAP(m.ID, "")
	nsName := vmnet.NamespaceName(m.ID)
	if !vmnet.Exists(nsName) {
		t.Errorf("network namespace %s missing while the vm runs", nsName)
	}
	if _, err := netlink.LinkByName(tap.Name); err == nil {
		t.Errorf("tap %s is in the host's network namespace, want it only in %s", tap.Name, nsName)
	}
	err = m.ns.Do(func() error {
		link, err := netlink.LinkByName(tap.Name)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != tap.Host.String() {
			t.Errorf("tap addresses = %v, want %v", addrs, tap.Host)
		}
		return nil
	})
	if err != nil {
		t.Errorf("tap %s in namespace %s: %v", tap.Name, nsName, err)
	}

	if err := m.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if vmnet.Exists(nsName) {
		t.Errorf("network namespace %s still exists after Close", nsName)
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

// TestSSHTransportConfiguresNetwork runs a request with the ssh transport
// against the double. The double runs no sshd, so the run ends at the
// boot timeout. The test checks the configuration the double received and
// that nothing stays behind.
func TestSSHTransportConfiguresNetwork(t *testing.T) {
	needNamespaces(t)
	e := newEnv(t, map[string]string{fctest.EnvAgentMode: "silent"})
	e.cfg.Transport = cylo.TransportSSH
	e.cfg.TAPName = "guest0"
	e.cfg.BootTimeout = 2 * time.Second
	e.cfg.SSH = sshexec.Config{KeyPath: writeTestKey(t), HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl pinned"}

	before, _ := filepath.Glob("/run/netns/cylo-*")
	_, err := e.driver().Run(context.Background(), &cylo.Request{Language: cylo.Bash, Code: "echo hi"})
	var waitErr *sshexec.WaitError
	if !errors.As(err, &waitErr) {
		t.Fatalf("Run error = %v, want an sshexec.WaitError after the boot timeout", err)
	}
	if !strings.HasPrefix(waitErr.Addr, "172.29.") || !strings.HasSuffix(waitErr.Addr, ":22") {
		t.Errorf("ssh address = %s, want the guest's TAP address on port 22", waitErr.Addr)
	}
	if errors.Is(err, sshrun.ErrVMMExited) {
		t.Errorf("Run error = %v, want a timeout while the vmm runs", err)
	}

	var bootArgs string
	var iface map[string]string
	for _, r := range e.requests() {
		switch r.Path {
		case "/boot-source":
			var body map[string]string
			json.Unmarshal([]byte(r.Body), &body)
			bootArgs = body["boot_args"]
		case "/network-interfaces/eth0":
			json.Unmarshal([]byte(r.Body), &iface)
			if r.Status != 204 {
				t.Errorf("network interface request = %+v, want status 204", r)
			}
		}
	}
	if iface == nil {
		t.Fatal("the double received no PUT /network-interfaces/eth0 with the ssh transport")
	}
	if iface["host_dev_name"] != "guest0" {
		t.Errorf("host_dev_name = %q, want the configured tap name guest0", iface["host_dev_name"])
	}
	if !strings.HasPrefix(iface["guest_mac"], "06:00:ac:1d:") {
		t.Errorf("guest_mac = %q, want 06:00:ac:1d:...", iface["guest_mac"])
	}
	for _, want := range []string{"cylo.mode=ssh", "cylo.ip=" + strings.TrimSuffix(waitErr.Addr, ":22") + "/30", "cylo.gw=172.29."} {
		if !strings.Contains(bootArgs, want) {
			t.Errorf("boot args = %q, want %s", bootArgs, want)
		}
	}
	if strings.Contains(bootArgs, "cylo.channel") {
		t.Errorf("boot args = %q, want no agent channel", bootArgs)
	}
	e.checkClean()
	after, _ := filepath.Glob("/run/netns/cylo-*")
	for _, ns := range after {
		if !slices.Contains(before, ns) {
			t.Errorf("network namespace %s left behind", ns)
		}
	}
}

// writeTestKey writes a new ed25519 private key and returns its path.
func writeTestKey(t *testing.T) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "test")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "id")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
