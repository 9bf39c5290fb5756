package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// agentPort is the guest vsock port the agent listens on.
const agentPort = 1024

// vsockBridge models the host side of Firecracker's vsock device: a Unix
// socket that takes "CONNECT <port>\n" and replies "OK <host port>\n" once
// the guest accepted. The guest's port 1024 is the agent's Unix socket.
type vsockBridge struct {
	l         net.Listener
	agentSock string
	silent    bool
	rx, tx    atomic.Int64
	nextPort  atomic.Uint32
}

func newVsockBridge(udsPath, agentSock string, silent bool) (*vsockBridge, error) {
	l, err := net.Listen("unix", udsPath)
	if err != nil {
		return nil, err
	}
	b := &vsockBridge{l: l, agentSock: agentSock, silent: silent}
	// Firecracker numbers host-side ports from 2^30 upwards.
	b.nextPort.Store(1 << 30)
	go b.serve()
	return b, nil
}

func (b *vsockBridge) bytes() (rx, tx int64) { return b.rx.Load(), b.tx.Load() }

func (b *vsockBridge) serve() {
	for {
		conn, err := b.l.Accept()
		if err != nil {
			return
		}
		go b.handle(conn)
	}
}

func (b *vsockBridge) handle(conn net.Conn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	portText, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "CONNECT ")
	port, perr := strconv.ParseUint(portText, 10, 32)
	if !ok || perr != nil || port != agentPort {
		return // nothing listens there in the guest: close, as Firecracker does
	}
	conn.SetReadDeadline(time.Time{})

	if b.silent {
		fmt.Fprintf(conn, "OK %d\n", b.nextPort.Add(1)-1)
		io.Copy(io.Discard, r)
		return
	}
	agent, err := net.Dial("unix", b.agentSock)
	if err != nil {
		return // the agent is not listening yet
	}
	defer agent.Close()
	fmt.Fprintf(conn, "OK %d\n", b.nextPort.Add(1)-1)

	done := make(chan struct{})
	go func() {
		n, _ := io.Copy(agent, r) // r holds any bytes read past the handshake
		b.rx.Add(n)
		agent.(*net.UnixConn).CloseWrite()
		close(done)
	}()
	n, _ := io.Copy(conn, agent)
	b.tx.Add(n)
	conn.(*net.UnixConn).CloseWrite()
	<-done
}
