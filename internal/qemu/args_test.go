package qemu

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cylo-dev/cylo"
)

func TestChooseChannel(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "vhost-vsock")
	if got, why := chooseChannel(ChannelAuto, missing); got != ChannelVirtioSerial || !strings.Contains(why, missing) {
		t.Errorf("without the device: %s (%s), want virtio-serial naming the device", got, why)
	}
	present := filepath.Join(dir, "present")
	if err := os.WriteFile(present, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := chooseChannel(ChannelAuto, present); got != ChannelVsock {
		t.Errorf("with a usable device: %s, want vsock", got)
	}
	if got, _ := chooseChannel(ChannelVirtioSerial, present); got != ChannelVirtioSerial {
		t.Errorf("configured virtio-serial: %s", got)
	}
}

func TestArgsForChannel(t *testing.T) {
	d, err := New(Config{Kernel: "k", Initrd: "i", Rootfs: "r", Accelerator: AccelKVM, Store: nil})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := (&cylo.Request{Language: cylo.Bash}).WithDefaults()

	serial := d.args(&machine{id: "0a0b0c0d", dir: "/run/x", accel: AccelKVM, channel: ChannelVirtioSerial}, req)
	joined := strings.Join(serial, " ")
	if !strings.Contains(joined, "virtserialport,chardev=agent,name=cylo.agent.0") || !strings.Contains(joined, "cylo.channel=virtio-serial") {
		t.Errorf("virtio-serial args lack the port or the kernel parameter: %s", joined)
	}

	vsockArgs := d.args(&machine{id: "0a0b0c0d", dir: "/run/x", accel: AccelKVM, channel: ChannelVsock, cid: 1234}, req)
	joined = strings.Join(vsockArgs, " ")
	if !slices.Contains(vsockArgs, "vhost-vsock-device,guest-cid=1234") || !strings.Contains(joined, "cylo.channel=vsock") {
		t.Errorf("vsock args lack the device or the kernel parameter: %s", joined)
	}
	if strings.Contains(joined, "virtio-serial-device") {
		t.Errorf("vsock args still attach virtio-serial: %s", joined)
	}
	if !slices.Contains(vsockArgs, "host") {
		t.Errorf("kvm args do not use -cpu host: %s", joined)
	}
}

func TestNewGuestCIDAvoidsReserved(t *testing.T) {
	for range 1000 {
		cid, err := newGuestCID()
		if err != nil {
			t.Fatal(err)
		}
		if cid < 3 || cid == 0xffffffff {
			t.Fatalf("cid %d is reserved", cid)
		}
	}
}
