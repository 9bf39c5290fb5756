package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/firecracker/fctest"
	"github.com/cylo-dev/cylo/internal/kvm"
	"github.com/cylo-dev/cylo/internal/vmstate"
	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary run runHelper instead of the tests: an
// owner process that the test kills in the middle of a run.
const helperEnv = "CYLO_FC_TEST_HELPER"

// helperConfig is what the test passes to the helper, as JSON in
// helperEnv.
type helperConfig struct {
	Binary, Kernel, Initrd, Rootfs, RuntimeBase, StateDir, WorkDir string
	WithAgent                                                      bool
}

// runHelper boots a VM and, with an agent, runs a long program in it. It
// prints "booted <runtime dir>" once the VM has started and never returns
// on its own: the test kills it.
func runHelper() {
	var hc helperConfig
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv)), &hc); err != nil {
		fmt.Println("helper: bad config:", err)
		os.Exit(2)
	}
	d, err := New(Config{
		Binary: hc.Binary, KernelPath: hc.Kernel, InitrdPath: hc.Initrd, RootfsPath: hc.Rootfs,
		RuntimeBase: hc.RuntimeBase, StateDir: hc.StateDir, BootTimeout: time.Minute,
		KVMCheck: func() kvm.Status { return kvm.Status{Usable: true} },
	})
	if err != nil {
		fmt.Println("helper:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	m, err := d.start(ctx, MachineSpec{VCPUs: 1, MemoryMiB: 256, DiskBytes: 16 << 20})
	if err != nil {
		fmt.Println("helper:", err)
		os.Exit(2)
	}
	fmt.Println("booted", m.Dir)
	if hc.WithAgent {
		sess, err := d.connectAgent(ctx, m)
		if err != nil {
			fmt.Println("helper:", err)
			os.Exit(2)
		}
		req, _ := (&cylo.Request{Language: cylo.Bash, Code: "echo running\nsleep 60\n", Dir: hc.WorkDir}).WithDefaults()
		fmt.Println("running")
		sess.Exec(ctx, req)
	}
	select {}
}

func TestOwnerKilledThenGC(t *testing.T) {
	withAgent := agentBin != ""
	vars := map[string]string{fctest.EnvAgentBin: agentBin}
	if !withAgent {
		vars[fctest.EnvAgentMode] = "silent"
	}
	e := newEnv(t, vars)

	// Orphans of the killed owner become children of this process, so GC's
	// reaping is exercised and no zombie waits on an init that may not
	// reap.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become child subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

	hc, _ := json.Marshal(helperConfig{
		Binary: e.cfg.Binary, Kernel: e.cfg.KernelPath, Initrd: e.cfg.InitrdPath, Rootfs: e.cfg.RootfsPath,
		RuntimeBase: e.cfg.RuntimeBase, StateDir: e.cfg.StateDir, WorkDir: t.TempDir(), WithAgent: withAgent,
	})
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"="+string(hc))
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Process.Kill()

	// Wait until the helper is mid-run: booted, and with an agent, the
	// program has started.
	lines := bufio.NewScanner(out)
	var runtimeDir string
	wantLine := "booted"
	if withAgent {
		wantLine = "running"
	}
	deadline := time.AfterFunc(20*time.Second, func() { helper.Process.Kill() })
	for lines.Scan() {
		line := lines.Text()
		if dir, ok := strings.CutPrefix(line, "booted "); ok {
			runtimeDir = dir
		}
		if strings.HasPrefix(line, wantLine) {
			break
		}
		if strings.HasPrefix(line, "helper:") {
			t.Fatalf("helper failed: %s", line)
		}
	}
	deadline.Stop()
	if runtimeDir == "" {
		t.Fatal("helper exited before booting a VM")
	}
	if withAgent {
		time.Sleep(200 * time.Millisecond) // let the program reach sleep
	}
	st, _ := vmstate.Open(e.cfg.StateDir)
	recs, _ := st.List()
	if len(recs) != 1 {
		t.Fatalf("records while the owner runs = %+v, want one", recs)
	}
	vmmPID := recs[0].VMMPID

	// Owner is alive: GC must leave everything alone.
	report, err := st.GC(context.Background(), nil)
	if err != nil || len(report.Live) != 1 || len(report.Reclaimed) != 0 {
		t.Fatalf("GC with a live owner = %+v, %v; want the record kept as live", report, err)
	}

	helper.Process.Kill()
	helper.Wait()
	if !vmstate.Alive(vmmPID, recs[0].VMMStart) {
		t.Fatalf("the VMM died with its owner; the test needs it to survive")
	}

	report, err = st.GC(context.Background(), nil)
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if len(report.Reclaimed) != 1 || len(report.Killed) != 1 || report.Killed[0] != vmmPID {
		t.Errorf("GC report = %+v, want the vm reclaimed and pid %d killed", report, vmmPID)
	}

	// Reap the remaining orphans (the agent and its program) that were
	// reparented to this process when GC killed their group.
	reapOrphans(t)
	if _, err := os.Stat(runtimeDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("runtime directory %s still exists: %v", runtimeDir, err)
	}
	e.checkClean()
	if left, _ := filepath.Glob(filepath.Join(runtimeDir, "*")); len(left) > 0 {
		t.Errorf("files left: %v", left)
	}
}

// reapOrphans waits for the children of this process that are not Go's
// own exec.Cmd children, within a second.
func reapOrphans(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			return
		}
		if pid == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}
