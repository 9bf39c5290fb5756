package qemu

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/cylo-dev/cylo/internal/agentproto"
)

// Agent channels between the host and the guest agent.
const (
	ChannelAuto         = ""
	ChannelVirtioSerial = "virtio-serial"
	ChannelVsock        = "vsock"
)

// vhostVsockDevice is the host device QEMU's vhost-vsock-device needs.
const vhostVsockDevice = "/dev/vhost-vsock"

// chooseChannel returns the agent channel for a configured value: vsock
// when the host offers vhost-vsock (a device QEMU can open read-write),
// else virtio-serial, which every host has.
func chooseChannel(configured, device string) (string, string) {
	if configured != ChannelAuto {
		return configured, "set in configuration"
	}
	f, err := os.OpenFile(device, os.O_RDWR, 0)
	if err != nil {
		return ChannelVirtioSerial, fmt.Sprintf("%s is not usable (%v)", device, err)
	}
	f.Close()
	return ChannelVsock, device + " is usable"
}

// newGuestCID returns a random context id for a guest's vsock device.
// CIDs 0 to 2 are reserved and 0xffffffff means any. A CID that another VM
// already uses makes QEMU exit at start, with the reason in its log.
//
// NOTE: the vsock channel has not run on a host with vhost-vsock; the
// hosts cylo is tested on have none and use virtio-serial.
func newGuestCID() (uint32, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return 3 + binary.BigEndian.Uint32(b[:])%(0xffffffff-3), nil
}

// vsockDialer connects to the agent's vsock port in the guest with cid.
// Until the agent listens, the guest's kernel resets the connection, so
// each attempt is short and agentrun.Connect retries.
func vsockDialer(cid uint32) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		done := make(chan result, 1)
		go func() {
			conn, err := vsock.Dial(cid, agentproto.VsockPort, nil)
			done <- result{conn, err}
		}()
		select {
		case r := <-done:
			return r.conn, r.err
		case <-ctx.Done():
			go func() {
				if r := <-done; r.conn != nil {
					r.conn.Close()
				}
			}()
			return nil, ctx.Err()
		}
	}
}

// vsockAttempt bounds one vsock connection attempt during boot.
const vsockAttempt = 500 * time.Millisecond
