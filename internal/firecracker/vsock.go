package firecracker

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// dialVsock opens a stream to guest vsock port through Firecracker's
// host-side Unix socket at udsPath. In Firecracker's handshake the host
// sends "CONNECT <port>\n" and Firecracker replies "OK <host port>\n" once
// the guest has accepted. When nothing listens on the port in the guest, Firecracker
// closes the connection instead.
func dialVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("dial vsock socket: %w", err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock CONNECT %d: %w", port, err)
	}
	line, err := readLine(conn, 64)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock CONNECT %d: no acknowledgement (is the guest listening on the port?): %w", port, err)
	}
	hostPort, ok := strings.CutPrefix(line, "OK ")
	if _, perr := strconv.ParseUint(hostPort, 10, 32); !ok || perr != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock CONNECT %d: invalid acknowledgement %q: want \"OK <port>\"", port, line)
	}

	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("vsock CONNECT %d: %w", port, ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// readLine reads one '\n'-terminated line a byte at a time, so no byte
// after the newline is consumed.
func readLine(conn net.Conn, maxLen int) (string, error) {
	var buf []byte
	b := make([]byte, 1)
	for len(buf) < maxLen {
		if _, err := conn.Read(b); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(buf), nil
		}
		buf = append(buf, b[0])
	}
	return "", fmt.Errorf("line longer than %d bytes: %q", maxLen, buf)
}
