package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SerialPortPath finds the virtio-serial port called name, as
// /dev/vportNpM. Ports appear shortly after virtio_console loads, so it
// polls until timeout.
func SerialPortPath(name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, p := range ports {
			data, err := os.ReadFile(p)
			if err == nil && strings.TrimSpace(string(data)) == name {
				return "/dev/" + filepath.Base(filepath.Dir(p)), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("virtio-serial port %q not found after %s (ports: %v)", name, timeout, ports)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ServeSerial serves the agent protocol on a virtio-serial port forever.
// The port reads EOF while no host is connected to the VMM's end, so the
// port is reopened after each connection ends.
func (s *Server) ServeSerial(path string) error {
	backoff := time.Millisecond
	for {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		start := time.Now()
		s.ServeConn(&fileConn{File: f})
		f.Close()
		if time.Since(start) > time.Second {
			backoff = time.Millisecond
		} else if backoff < 50*time.Millisecond {
			backoff *= 2
		}
		time.Sleep(backoff)
	}
}

// fileConn adapts a character device to net.Conn. Deadlines work because
// the Go runtime polls the device like a socket.
type fileConn struct {
	*os.File
}

type fileAddr string

func (a fileAddr) Network() string { return "file" }
func (a fileAddr) String() string  { return string(a) }

func (c *fileConn) LocalAddr() net.Addr  { return fileAddr(c.Name()) }
func (c *fileConn) RemoteAddr() net.Addr { return fileAddr("host") }

// ErrUnknownListen is returned by Listen for an address it does not parse.
var ErrUnknownListen = errors.New("listen address must be unix:PATH or tcp:127.0.0.1:PORT")

// Listen opens a host-side listener for a host-process agent.
func Listen(address string) (net.Listener, error) {
	network, addr, ok := strings.Cut(address, ":")
	if !ok || (network != "unix" && network != "tcp") || addr == "" {
		return nil, fmt.Errorf("%w: got %q", ErrUnknownListen, address)
	}
	return net.Listen(network, addr)
}
