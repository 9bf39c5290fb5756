package firecracker

import (
	"github.com/cylo-dev/cylo/internal/vmnet"

	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    version
		wantErr bool
	}{
		{"1.16.1", version{1, 16, 1}, false},
		{"v1.8.0", version{1, 8, 0}, false},
		{"1.17.0-dev", version{1, 17, 0}, false},
		{"0.24.4", version{0, 24, 4}, false},
		{"1.x", version{}, true},
		{"", version{}, true},
	}
	for _, tt := range tests {
		got, err := parseVersion(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseVersion(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
		}
		if got != tt.want {
			t.Errorf("parseVersion(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParseMetricsSumsLines(t *testing.T) {
	lines := `{"block":{"read_bytes":100,"write_bytes":10},"net":{"rx_bytes_count":1,"tx_bytes_count":2},"vcpu":{"exit_io_in":1,"exit_mmio_read":2,"failures":9,"exit_io_in_agg":{"min_us":5}}}
{"block":{"read_bytes":50,"write_bytes":5},"net":{"rx_bytes_count":3,"tx_bytes_count":4},"vcpu":{"exit_io_out":4}}
`
	m, err := parseMetrics(strings.NewReader(lines))
	if err != nil {
		t.Fatal(err)
	}
	want := vmMetrics{BlockReadBytes: 150, BlockWriteBytes: 15, NetRxBytes: 4, NetTxBytes: 6, VCPUExits: 7, Lines: 2}
	if m != want {
		t.Errorf("parseMetrics = %+v, want %+v", m, want)
	}

	if _, err := parseMetrics(strings.NewReader("{not json\n")); err == nil {
		t.Error("parseMetrics accepted a broken line")
	}
}

func TestBootArgsNetwork(t *testing.T) {
	tap, err := vmnet.PlanTAP("0001abcd", "")
	if err != nil {
		t.Fatal(err)
	}

	agent := bootArgs(&tap, false)
	if !strings.HasSuffix(agent, " cylo.channel=vsock cylo.ip=172.29.0.6/30 cylo.gw=172.29.0.5") {
		t.Errorf("agent boot args with network = %q", agent)
	}
	ssh := bootArgs(&tap, true)
	if !strings.HasSuffix(ssh, " cylo.mode=ssh cylo.ip=172.29.0.6/30 cylo.gw=172.29.0.5") {
		t.Errorf("ssh boot args = %q", ssh)
	}
	if strings.Contains(ssh, "cylo.channel") {
		t.Errorf("ssh boot args = %q, want no agent channel", ssh)
	}
}

// vsockPeer serves one connection on a Unix socket with handle.
func vsockPeer(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		handle(c)
	}()
	return path
}

func TestDialVsock(t *testing.T) {
	tests := []struct {
		name    string
		reply   string
		wantErr string
	}{
		{"ok", "OK 1073741824\nhello", ""},
		{"closed", "", "no acknowledgement"},
		{"garbage", "NO\n", `invalid acknowledgement "NO"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := vsockPeer(t, func(c net.Conn) {
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				if string(buf[:n]) != "CONNECT 1024\n" {
					return
				}
				c.Write([]byte(tt.reply))
				time.Sleep(100 * time.Millisecond)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			conn, err := dialVsock(ctx, path, 1024)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("dialVsock error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// The bytes after the acknowledgement belong to the stream.
			buf := make([]byte, 5)
			if _, err := conn.Read(buf); err != nil || string(buf) != "hello" {
				t.Errorf("first stream bytes = %q, %v, want hello", buf, err)
			}
		})
	}
}
