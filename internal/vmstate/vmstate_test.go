package vmstate

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func TestNewRuntimeDir(t *testing.T) {
	base := t.TempDir()
	id, dir, err := NewRuntimeDir(base)
	if err != nil {
		t.Fatal(err)
	}
	if !validID.MatchString(id) || len(id) != 8 {
		t.Errorf("id = %q, want 8 hex digits", id)
	}
	if dir != filepath.Join(base, id) {
		t.Errorf("dir = %q, want %q", dir, filepath.Join(base, id))
	}
	info, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o700 {
		t.Errorf("mode = %v, want 0700", info.Mode().Perm())
	}

	// A socket with the longest allowed name must bind inside it.
	sock := filepath.Join(dir, strings.Repeat("s", MaxSocketName))
	if len(sock) <= MaxSocketPath {
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Errorf("listen on %d-byte path: %v", len(sock), err)
		} else {
			l.Close()
		}
	}
}

func TestNewRuntimeDirBaseTooLong(t *testing.T) {
	base := filepath.Join(t.TempDir(), strings.Repeat("b", 90))
	_, _, err := NewRuntimeDir(base)
	if err == nil {
		t.Fatal("NewRuntimeDir succeeded with a base that pushes socket paths past the limit")
	}
	if !strings.Contains(err.Error(), "107-byte limit of a Unix socket path") {
		t.Errorf("error = %q, want it to name the limit", err)
	}
	if _, err := os.Stat(base); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("base was created despite the error (stat: %v)", err)
	}
}

func TestStartTimeOddCommand(t *testing.T) {
	// The command name in /proc/PID/stat may contain spaces and ')'.
	odd := filepath.Join(t.TempDir(), "a) b (c")
	sleepPath, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("sleep not found")
	}
	if err := os.Symlink(sleepPath, odd); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(odd, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	start, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	self, err := StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if start < self {
		t.Errorf("child start %d is before the test's own start %d", start, self)
	}
	if !Alive(cmd.Process.Pid, start) {
		t.Error("Alive(child, its start) = false")
	}
	if Alive(cmd.Process.Pid, start+1) {
		t.Error("Alive(child, another start) = true")
	}
}

func TestStoreRegisterListRemove(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rec, err := Owned("0123abcd", "firecracker")
	if err != nil {
		t.Fatal(err)
	}
	rec.RuntimeDir = "/run/cylo/vm/0123abcd"
	if err := st.Register(rec); err != nil {
		t.Fatal(err)
	}
	rec.VMMPID = 42
	if err := st.Register(rec); err != nil {
		t.Fatal(err)
	}

	recs, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("List returned %d records, want 1: %+v", len(recs), recs)
	}
	if recs[0].VMMPID != 42 || recs[0].OwnerPID != os.Getpid() || recs[0].RuntimeDir != rec.RuntimeDir {
		t.Errorf("List()[0] = %+v, want %+v", recs[0], rec)
	}

	if err := st.Remove(rec.ID); err != nil {
		t.Fatal(err)
	}
	if err := st.Remove(rec.ID); err != nil {
		t.Errorf("second Remove: %v, want nil", err)
	}
	if err := st.Register(Record{ID: "../etc"}); err == nil {
		t.Error("Register accepted id ../etc")
	}
}

// deadProcess returns the pid and start time of a process that has
// exited and been reaped.
func deadProcess(t *testing.T) (int, uint64) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	start, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	return cmd.Process.Pid, start
}

// startVMM starts a stand-in VMM leading its own process group, with a
// second process in the group (as the fake firecracker's agent would be).
// The test does not Wait for it: GC must reap it.
func startVMM(t *testing.T) (*exec.Cmd, uint64) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 60 & exec sleep 61")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(cmd.Process.Pid, &ws, unix.WNOHANG, nil)
	})
	// Wait until the group has both sleeps, so the kill reaches both.
	deadline := time.Now().Add(5 * time.Second)
	for groupSize(t, cmd.Process.Pid) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	start, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return cmd, start
}

// groupSize counts the live (non-zombie) processes in process group pgid.
func groupSize(t *testing.T, pgid int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		got, err := unix.Getpgid(pid)
		if err == nil && got == pgid && Alive(pid, 0) {
			n++
		}
	}
	return n
}

// runtimeDirWithFiles makes a runtime directory containing a listening
// socket's file, a FIFO and a regular file, as a driver leaves them.
func runtimeDirWithFiles(t *testing.T) (id, dir string) {
	t.Helper()
	id, dir, err := NewRuntimeDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if err := unix.Mkfifo(filepath.Join(dir, "metrics.fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "firecracker.log"), []byte("log"), 0o600); err != nil {
		t.Fatal(err)
	}
	return id, dir
}

func TestGCReclaimsDeadOwner(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ownerPID, ownerStart := deadProcess(t)
	vmm, vmmStart := startVMM(t)
	id, dir := runtimeDirWithFiles(t)
	scratch := filepath.Join(t.TempDir(), "scratch.img")
	if err := os.WriteFile(scratch, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := Record{
		ID: id, Backend: "firecracker",
		OwnerPID: ownerPID, OwnerStart: ownerStart,
		VMMPID: vmm.Process.Pid, VMMStart: vmmStart,
		RuntimeDir: dir, Paths: []string{scratch},
		Created: time.Now(),
	}
	if err := st.Register(rec); err != nil {
		t.Fatal(err)
	}

	report, err := st.GC(context.Background(), nil)
	if err != nil {
		t.Fatalf("GC: %v", err)
	}

	if !slices.Equal(report.Reclaimed, []string{id}) {
		t.Errorf("Reclaimed = %v, want [%s]", report.Reclaimed, id)
	}
	if !slices.Equal(report.Killed, []int{vmm.Process.Pid}) {
		t.Errorf("Killed = %v, want [%d]", report.Killed, vmm.Process.Pid)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(vmm.Process.Pid)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("vmm pid %d still has a /proc entry (not reaped): %v", vmm.Process.Pid, err)
	}
	if n := groupSize(t, vmm.Process.Pid); n != 0 {
		t.Errorf("%d processes of the vmm's group still run", n)
	}
	for _, p := range []string{dir, scratch} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still exists after GC (stat: %v)", p, err)
		}
	}
	recs, _ := st.List()
	if len(recs) != 0 {
		t.Errorf("records left after GC: %+v", recs)
	}
}

func TestGCKeepsLiveOwner(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	vmm, vmmStart := startVMM(t)
	id, dir := runtimeDirWithFiles(t)
	rec, err := Owned(id, "firecracker")
	if err != nil {
		t.Fatal(err)
	}
	rec.VMMPID, rec.VMMStart, rec.RuntimeDir = vmm.Process.Pid, vmmStart, dir
	if err := st.Register(rec); err != nil {
		t.Fatal(err)
	}

	report, err := st.GC(context.Background(), nil)
	if err != nil {
		t.Fatalf("GC: %v", err)
	}

	if !slices.Equal(report.Live, []string{id}) {
		t.Errorf("Live = %v, want [%s]", report.Live, id)
	}
	if len(report.Reclaimed) != 0 || len(report.Killed) != 0 {
		t.Errorf("GC acted on a live owner's vm: %+v", report)
	}
	if !Alive(vmm.Process.Pid, vmmStart) {
		t.Error("GC killed the vmm of a live owner")
	}
	if _, err := os.Stat(filepath.Join(dir, "metrics.fifo")); err != nil {
		t.Errorf("GC removed files of a live owner: %v", err)
	}
	if recs, _ := st.List(); len(recs) != 1 {
		t.Errorf("List returned %d records, want the live one", len(recs))
	}
}

func TestGCSparesRecycledVMMPid(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ownerPID, ownerStart := deadProcess(t)
	vmm, vmmStart := startVMM(t)
	id, dir := runtimeDirWithFiles(t)
	// The recorded start time differs, as it would if the VMM had died
	// and its pid gone to an unrelated process.
	rec := Record{
		ID: id, Backend: "firecracker",
		OwnerPID: ownerPID, OwnerStart: ownerStart,
		VMMPID: vmm.Process.Pid, VMMStart: vmmStart - 1,
		RuntimeDir: dir, Created: time.Now(),
	}
	if err := st.Register(rec); err != nil {
		t.Fatal(err)
	}

	report, err := st.GC(context.Background(), nil)
	if err != nil {
		t.Fatalf("GC: %v", err)
	}

	if !Alive(vmm.Process.Pid, vmmStart) {
		t.Error("GC killed a process whose start time does not match the record")
	}
	if len(report.Killed) != 0 {
		t.Errorf("Killed = %v, want none", report.Killed)
	}
	if !slices.Equal(report.Reclaimed, []string{id}) {
		t.Errorf("Reclaimed = %v, want [%s]", report.Reclaimed, id)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("runtime dir still exists: %v", err)
	}
}

func TestGCDeletesTAPDevice(t *testing.T) {
	// The TAP device lives in a network namespace that this test creates,
	// never in the host's. netlink calls act in the namespace of the
	// calling thread, so the test and GC run on one locked thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Skipf("cannot create a network namespace (needs CAP_SYS_ADMIN): %v", err)
	}
	defer ns.Close()
	defer netns.Set(orig)

	const tapName = "cylotest0"
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tapName}, Mode: netlink.TUNTAP_MODE_TAP}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Skipf("cannot create a tap device (needs /dev/net/tun and CAP_NET_ADMIN): %v", err)
	}
	for _, f := range tap.Fds {
		f.Close() // a persistent tap outlives its creating descriptor
	}

	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ownerPID, ownerStart := deadProcess(t)
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	rec := Record{ID: id, Backend: "firecracker", OwnerPID: ownerPID, OwnerStart: ownerStart, TAPDevices: []string{tapName, "cylogone0"}, Created: time.Now()}
	if err := st.Register(rec); err != nil {
		t.Fatal(err)
	}

	if _, err := st.GC(context.Background(), nil); err != nil {
		t.Fatalf("GC: %v", err)
	}

	_, err = netlink.LinkByName(tapName)
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		t.Errorf("tap %s still exists after GC (LinkByName error: %v)", tapName, err)
	}
}
