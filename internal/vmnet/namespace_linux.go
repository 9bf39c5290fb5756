package vmnet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// namespaceDir is where named network namespaces are bind-mounted, the
// directory iproute2's ip netns uses too.
const namespaceDir = "/run/netns"

// Namespace is a named network namespace that contains one VM's TAP
// device. The caller must Remove it.
type Namespace struct {
	Name string
}

// NamespaceName returns the namespace name of VM id.
func NamespaceName(id string) string { return "cylo-" + id }

// CreateNamespace creates the network namespace name, bind-mounted at
// /run/netns/NAME like ip netns add does, and brings its loopback
// interface up. It needs CAP_SYS_ADMIN.
func CreateNamespace(name string) (*Namespace, error) {
	if err := validNamespaceName(name); err != nil {
		return nil, err
	}
	err := onThread(func(orig netns.NsHandle) error {
		// NewNamed moves this thread into the new namespace, also when it
		// fails after the unshare.
		defer func() {
			if setErr := netns.Set(orig); setErr != nil {
				panic(fmt.Sprintf("return to the original network namespace: %v", setErr))
			}
		}()
		ns, err := netns.NewNamed(name)
		if err != nil {
			return err
		}
		ns.Close()
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		// NewNamed leaves its mount point behind when the mount fails.
		return nil, errors.Join(fmt.Errorf("create network namespace %s: %w", name, err), RemoveNamespace(name, nil))
	}
	return &Namespace{Name: name}, nil
}

// Do runs fn with the calling goroutine's thread in the namespace, and
// moves the thread back before it returns.
func (n *Namespace) Do(fn func() error) error {
	handle, err := netns.GetFromName(n.Name)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", n.Name, err)
	}
	defer handle.Close()
	return onThread(func(orig netns.NsHandle) error {
		if err := netns.Set(handle); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", n.Name, err)
		}
		defer func() {
			if setErr := netns.Set(orig); setErr != nil {
				panic(fmt.Sprintf("return to the original network namespace: %v", setErr))
			}
		}()
		return fn()
	})
}

// onThread runs fn on a locked OS thread and passes it the thread's
// network namespace. fn may switch namespaces but must switch back.
//
// NOTE: a thread whose namespace cannot be restored must never run other
// goroutines. fn panics then, and the panic is recovered here with the
// thread still locked, so the runtime ends the thread when the goroutine
// exits. A child that was started from that thread with Pdeathsig gets
// its signal then.
func onThread(fn func(orig netns.NsHandle) error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("open the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("%v", r) // the thread stays locked and ends
				return
			}
			runtime.UnlockOSThread()
		}()
		done <- fn(orig)
	}()
	return <-done
}

// Start starts cmd inside the namespace. The child inherits the namespace
// from the thread that forks it.
func (n *Namespace) Start(cmd *exec.Cmd) error {
	return n.Do(cmd.Start)
}

// DialContext connects to address from inside the namespace. The socket
// belongs to the namespace it was created in, so only its creation needs
// the thread there, but net.Dialer creates and connects in one call.
func (n *Namespace) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// CreateTAP adds the TAP device t inside the namespace, gives it the host
// address and brings it up. The device is persistent: the VMM opens it by
// name, and it stays until RemoveTAP or the namespace's removal.
func (n *Namespace) CreateTAP(t TAP) error {
	return n.Do(func() error {
		link := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: t.Name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// Firecracker opens the device with IFF_VNET_HDR and without
			// packet information; QEMU adapts to either.
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		}
		if err := netlink.LinkAdd(link); err != nil {
			return fmt.Errorf("create tap device %s in network namespace %s: %w", t.Name, n.Name, err)
		}
		for _, f := range link.Fds {
			f.Close() // the VMM opens its own queue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: t.Host.Addr().AsSlice(), Mask: net.CIDRMask(t.Host.Bits(), 32)}}
		err := netlink.AddrAdd(link, addr)
		if err == nil {
			err = netlink.LinkSetUp(link)
		}
		if err != nil {
			return errors.Join(fmt.Errorf("configure tap device %s: %w", t.Name, err), deleteLink(t.Name))
		}
		return nil
	})
}

// RemoveTAP deletes the TAP device name inside the namespace. A missing
// device is not an error.
func (n *Namespace) RemoveTAP(name string) error {
	return n.Do(func() error { return deleteLink(name) })
}

// Remove deletes the namespace's TAP devices named in taps and then the
// namespace. A missing namespace is not an error.
func (n *Namespace) Remove(taps []string) error {
	return RemoveNamespace(n.Name, taps)
}

// RemoveNamespace deletes the TAP devices named in taps inside the
// namespace name, then unmounts and removes /run/netns/NAME. The kernel
// frees the namespace when no process is left in it. A missing namespace
// is not an error, so cylo gc can retry after a partial teardown.
func RemoveNamespace(name string, taps []string) error {
	if err := validNamespaceName(name); err != nil {
		return err
	}
	path := filepath.Join(namespaceDir, name)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}

	var errs []error
	if len(taps) > 0 {
		ns := &Namespace{Name: name}
		for _, tap := range taps {
			errs = append(errs, ns.RemoveTAP(tap))
		}
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		errs = append(errs, fmt.Errorf("unmount network namespace %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove network namespace %s: %w", path, err))
	}
	return errors.Join(errs...)
}

// validNamespaceName rejects a name that is not one plain file name in
// /run/netns, because records name the namespace that gc removes.
func validNamespaceName(name string) error {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name || len(name) > 64 {
		return fmt.Errorf("invalid network namespace name %q: want one file name of at most 64 bytes", name)
	}
	return nil
}

// Exists reports whether the namespace name is mounted.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(namespaceDir, name))
	return err == nil
}

// DeleteLink deletes the network interface name in the calling thread's
// namespace. A missing interface is not an error.
func DeleteLink(name string) error { return deleteLink(name) }

func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find tap device %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete tap device %s: %w", name, err)
	}
	return nil
}
