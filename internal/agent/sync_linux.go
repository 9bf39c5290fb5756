package agent

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cylo-dev/cylo/internal/agentproto"
)

// applySync sets the clock and seeds the entropy pool in a guest. A
// host-process agent (guest false) leaves the host's clock and pool alone.
func applySync(s agentproto.Sync, guest bool) error {
	if !guest {
		return nil
	}
	if s.UnixNanos > 0 {
		tv := unix.NsecToTimeval(s.UnixNanos)
		if err := unix.Settimeofday(&tv); err != nil {
			return fmt.Errorf("set clock: %w", err)
		}
	}
	if len(s.Seed) > 0 {
		if err := addEntropy(s.Seed); err != nil {
			return fmt.Errorf("seed entropy pool: %w", err)
		}
	}
	return nil
}

// addEntropy mixes seed into the kernel's pool and credits it, so that
// getrandom(2) and the first os.urandom in a fresh guest do not block. The
// seed comes from the host's own getrandom.
func addEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(buf[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(seed)))
	copy(buf[8:], seed)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	return nil
}
