package guestinit

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		want    Config
	}{
		{
			name:    "agent over virtio-serial",
			cmdline: "console=ttyS0 reboot=t panic=-1 quiet cylo.root=/dev/vda cylo.scratch=/dev/vdb cylo.channel=virtio-serial\n",
			want:    Config{Root: "/dev/vda", Scratch: "/dev/vdb", Channel: ChannelVirtioSerial, Mode: ModeAgent},
		},
		{
			name:    "ssh with static address",
			cmdline: "cylo.root=/dev/vda cylo.scratch=/dev/vdb cylo.mode=ssh cylo.ip=10.0.2.15/24 cylo.gw=10.0.2.2",
			want: Config{Root: "/dev/vda", Scratch: "/dev/vdb", Mode: ModeSSH,
				IP: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2")},
		},
		{
			name:    "vsock with address and no gateway",
			cmdline: `init=/init "foo=a b" cylo.channel=vsock cylo.root=/dev/vda cylo.scratch=/dev/vdb cylo.ip=fd00::2/64`,
			want:    Config{Root: "/dev/vda", Scratch: "/dev/vdb", Channel: ChannelVsock, Mode: ModeAgent, IP: netip.MustParsePrefix("fd00::2/64")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCmdline(tt.cmdline)
			if err != nil {
				t.Fatalf("ParseCmdline: %v", err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Fatalf("got %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	const disks = "cylo.root=/dev/vda cylo.scratch=/dev/vdb "
	tests := []struct {
		name    string
		cmdline string
		wantErr string
	}{
		{"empty", "console=ttyS0", "cylo.root is missing"},
		{"no scratch", "cylo.root=/dev/vda cylo.channel=vsock", "cylo.scratch is missing"},
		{"no channel", disks, "cylo.channel is missing"},
		{"bad channel", disks + "cylo.channel=tcp", `invalid cylo.channel "tcp"`},
		{"bad mode", disks + "cylo.channel=vsock cylo.mode=shell", `invalid cylo.mode "shell"`},
		{"unknown key", disks + "cylo.channel=vsock cylo.rooot=/dev/vdc", "unknown kernel parameter cylo.rooot"},
		{"empty value", disks + "cylo.channel=", "cylo.channel has no value"},
		{"ip without prefix", disks + "cylo.mode=ssh cylo.ip=10.0.2.15", "invalid cylo.ip"},
		{"gw without ip", disks + "cylo.mode=ssh cylo.gw=10.0.2.2", "cylo.gw is set without cylo.ip"},
		{"mixed families", disks + "cylo.mode=ssh cylo.ip=10.0.2.15/24 cylo.gw=fd00::1", "different address families"},
		{"same disk", "cylo.root=/dev/vda cylo.scratch=/dev/vda cylo.channel=vsock", "same device"},
		{"not a device", "cylo.root=vda cylo.scratch=/dev/vdb cylo.channel=vsock", `"vda" is not under /dev`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCmdline(tt.cmdline)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(`  a=1  b="x y"  "c=3 4" d` + "\n")
	want := []string{"a=1", "b=x y", "c=3 4", "d"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestParseModuleList(t *testing.T) {
	got := parseModuleList("# load order\n/lib/modules/r/a.ko\n\n  /lib/modules/r/b.ko  \n")
	want := []string{"/lib/modules/r/a.ko", "/lib/modules/r/b.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
