package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/firecracker/fctest"
	"github.com/cylo-dev/cylo/internal/kvm"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// Binaries built once by TestMain. agentBin is empty when cylo-agent
// does not build, and the tests that need it skip.
var (
	fakeBin  string
	agentBin string
	agentErr error
	specPath string
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		runHelper()
		return
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "fctest-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)

	specPath, err = fctest.FindSpec()
	if err != nil {
		fmt.Fprintf(os.Stderr, "SKIP firecracker driver tests against the test double: %v\n", err)
		return m.Run() // tests that need the double skip
	}
	if fakeBin, err = fctest.Build(dir, fctest.FakePackage); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	agentBin, agentErr = fctest.Build(dir, fctest.AgentPackage)
	return m.Run()
}

// env is one test's configuration of the double and the driver.
type env struct {
	t      *testing.T
	cfg    Config
	record string
	logs   *bytes.Buffer
	imgDir string
}

// newEnv prepares image files, a short runtime base, a state directory
// and the double's environment. vars are extra FCTEST_* settings.
func newEnv(t *testing.T, vars map[string]string) *env {
	t.Helper()
	if fakeBin == "" {
		t.Skip("the fake firecracker is not built: the Firecracker API definition was not found (set " + fctest.SpecEnv + ")")
	}
	imgDir := t.TempDir()
	for _, name := range []string{"vmlinux", "initrd.cpio", "rootfs.img"} {
		if err := os.WriteFile(filepath.Join(imgDir, name), []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A short base: t.TempDir() paths grow with the test name.
	base, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })

	e := &env{t: t, record: filepath.Join(t.TempDir(), "requests.jsonl"), logs: &bytes.Buffer{}, imgDir: imgDir}
	t.Setenv(fctest.SpecEnv, specPath)
	t.Setenv(fctest.EnvRecord, e.record)
	for _, k := range []string{fctest.EnvAgentBin, fctest.EnvAgentMode, fctest.EnvVersion, fctest.EnvReject, fctest.EnvExitOn, fctest.EnvMetrics} {
		t.Setenv(k, vars[k])
	}
	e.cfg = Config{
		Binary:        fakeBin,
		KernelPath:    filepath.Join(imgDir, "vmlinux"),
		InitrdPath:    filepath.Join(imgDir, "initrd.cpio"),
		RootfsPath:    filepath.Join(imgDir, "rootfs.img"),
		RuntimeBase:   base,
		StateDir:      filepath.Join(t.TempDir(), "state"),
		Logger:        slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		BootTimeout:   5 * time.Second,
		ShutdownGrace: 500 * time.Millisecond,
		KVMCheck:      func() kvm.Status { return kvm.Status{Usable: true, Device: "/dev/kvm", Module: kvm.ModuleIntel} },
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("driver log:\n%s", e.logs)
		}
	})
	return e
}

func (e *env) driver() *Driver {
	e.t.Helper()
	d, err := New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func needAgent(t *testing.T) {
	t.Helper()
	if agentBin == "" {
		t.Skipf("cylo-agent does not build yet, so the double has no agent to run: %v", agentErr)
	}
}

// requests returns what the double recorded, after checking each request
// against the API definition again, independently of the double.
func (e *env) requests() []fctest.Request {
	e.t.Helper()
	reqs, err := fctest.ReadRequests(e.record)
	if err != nil {
		e.t.Fatalf("read the double's request log: %v", err)
	}
	spec, err := fctest.LoadSpec(specPath)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range reqs {
		if err := spec.Validate(context.Background(), r.Method, r.Path, r.ContentType, []byte(r.Body)); err != nil {
			e.t.Errorf("request violates the API definition: %v\nbody: %s", err, r.Body)
		}
	}
	return reqs
}

func paths(reqs []fctest.Request) []string {
	var out []string
	for _, r := range reqs {
		p := r.Method + " " + r.Path
		if r.Path == "/actions" {
			p += " " + actionType(r.Body)
		}
		out = append(out, p)
	}
	return out
}

func actionType(body string) string {
	_, rest, _ := strings.Cut(body, `"action_type":"`)
	name, _, _ := strings.Cut(rest, `"`)
	return name
}

// checkClean fails the test if a runtime directory, a record or a process
// of the double is left.
func (e *env) checkClean() {
	e.t.Helper()
	entries, err := os.ReadDir(e.cfg.RuntimeBase)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.t.Fatal(err)
	}
	for _, ent := range entries {
		e.t.Errorf("runtime directory left behind: %s", filepath.Join(e.cfg.RuntimeBase, ent.Name()))
	}
	st, err := vmstate.Open(e.cfg.StateDir)
	if err != nil {
		e.t.Fatal(err)
	}
	recs, err := st.List()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range recs {
		e.t.Errorf("vm record left behind: %+v", r)
	}
	for _, pid := range processesOf(e.t, fakeBin, agentBin) {
		e.t.Errorf("process %d (%s) left running", pid, exeOf(pid))
	}
}

// processesOf returns the live pids whose executable is one of bins.
func processesOf(t *testing.T, bins ...string) []int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		exe := exeOf(pid)
		if exe != "" && slices.Contains(bins, exe) && vmstate.Alive(pid, 0) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func exeOf(pid int) string {
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return exe
}

var wantSequence = []string{
	"GET /",
	"PUT /logger",
	"PUT /metrics",
	"PUT /machine-config",
	"PUT /boot-source",
	"PUT /drives/rootfs",
	"PUT /drives/scratch",
	"PUT /vsock",
	"PUT /entropy",
	"PUT /actions InstanceStart",
}

func TestStartAndVsockHandshake(t *testing.T) {
	e := newEnv(t, map[string]string{fctest.EnvAgentMode: "silent"})
	d := e.driver()
	ctx := context.Background()

	m, err := d.start(ctx, MachineSpec{VCPUs: 2, MemoryMiB: 384, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	st, _ := vmstate.Open(e.cfg.StateDir)
	recs, _ := st.List()
	if len(recs) != 1 || recs[0].VMMPID != m.proc.pid() || recs[0].RuntimeDir != m.Dir {
		t.Errorf("vm record = %+v, want one with vmm pid %d and dir %s", recs, m.proc.pid(), m.Dir)
	}
	if info, err := os.Stat(m.path(scratchName)); err != nil || info.Size() != 64<<20 {
		t.Errorf("scratch disk: %v, size %d, want %d bytes", err, info.Size(), 64<<20)
	}

	conn, err := m.DialAgent(ctx)
	if err != nil {
		t.Fatalf("vsock handshake: %v", err)
	}
	conn.Close()

	if err := m.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	reqs := e.requests()
	want := append(slices.Clone(wantSequence), "PUT /actions SendCtrlAltDel")
	if got := paths(reqs); !slices.Equal(got, want) {
		t.Errorf("request sequence:\n got %q\nwant %q", got, want)
	}
	for _, r := range reqs {
		if r.Status >= 300 {
			t.Errorf("%s %s answered %d: %s", r.Method, r.Path, r.Status, r.Fault)
		}
	}
	checkBodies(t, reqs, m, e)
	e.checkClean()
}

// checkBodies checks the values the driver sent.
func checkBodies(t *testing.T, reqs []fctest.Request, m *Machine, e *env) {
	t.Helper()
	want := map[string]string{
		"/machine-config": `{"vcpu_count":2,"mem_size_mib":384}`,
		"/boot-source":    fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":%q,"boot_args":%q}`, e.cfg.KernelPath, e.cfg.InitrdPath, m.BootArgs),
		"/drives/rootfs":  fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":false,"is_read_only":true}`, e.cfg.RootfsPath),
		"/drives/scratch": fmt.Sprintf(`{"drive_id":"scratch","path_on_host":%q,"is_root_device":false,"is_read_only":false}`, m.path(scratchName)),
		"/vsock":          fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, m.path(vsockSocketName)),
	}
	for _, r := range reqs {
		if w, ok := want[r.Path]; ok && r.Body != w {
			t.Errorf("PUT %s body:\n got %s\nwant %s", r.Path, r.Body, w)
		}
	}
	const wantArgs = "console=ttyS0 reboot=k panic=1 pci=off quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cylo.root=/dev/vda cylo.scratch=/dev/vdb cylo.channel=vsock"
	if m.BootArgs != wantArgs {
		t.Errorf("boot args = %q, want %q", m.BootArgs, wantArgs)
	}
}

func TestRunEcho(t *testing.T) {
	needAgent(t)
	e := newEnv(t, map[string]string{
		fctest.EnvAgentBin: agentBin,
		fctest.EnvMetrics:  `{"block":{"read_bytes":4096,"write_bytes":512},"net":{"rx_bytes_count":7,"tx_bytes_count":9},"vcpu":{"exit_io_in":3,"exit_mmio_write":4}}`,
	})
	d := e.driver()

	res, err := cylo.Run(context.Background(), d, &cylo.Request{Language: cylo.Bash, Code: "echo 1\necho err >&2\n", Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if string(res.Stdout) != "1\n" {
		t.Errorf("stdout = %q, want %q", res.Stdout, "1\n")
	}
	if string(res.Stderr) != "err\n" {
		t.Errorf("stderr = %q, want %q", res.Stderr, "err\n")
	}
	if res.ExitCode != 0 {
		t.Errorf("exit code = %d, want 0", res.ExitCode)
	}
	u := res.Usage
	if u.BlockReadBytes != 4096 || u.BlockWriteBytes != 512 || u.NetRxBytes != 7 || u.NetTxBytes != 9 || u.VCPUExits != 7 {
		t.Errorf("vmm usage = block %d/%d net %d/%d exits %d, want 4096/512 7/9 7", u.BlockReadBytes, u.BlockWriteBytes, u.NetRxBytes, u.NetTxBytes, u.VCPUExits)
	}
	if u.VMMRSSBytes <= 0 {
		t.Errorf("vmm rss = %d, want > 0", u.VMMRSSBytes)
	}
	if md := res.Metadata; md.Backend != "firecracker" || md.VMMVersion != "1.16.1" || md.Transport != "agent" || md.VMID == "" {
		t.Errorf("metadata = %+v", md)
	}

	want := append(slices.Clone(wantSequence), "PUT /actions FlushMetrics", "PUT /actions SendCtrlAltDel")
	if got := paths(e.requests()); !slices.Equal(got, want) {
		t.Errorf("request sequence:\n got %q\nwant %q", got, want)
	}
	e.checkClean()
}

func TestRunBinaryMissing(t *testing.T) {
	e := newEnv(t, nil)
	e.cfg.Binary = filepath.Join(t.TempDir(), "firecracker")
	_, err := e.driver().Run(context.Background(), &cylo.Request{Language: cylo.Bash, Code: "true"})
	if !errors.Is(err, ErrBinaryNotFound) {
		t.Fatalf("Run error = %v, want ErrBinaryNotFound", err)
	}
	if !strings.Contains(err.Error(), "install it or set --firecracker-bin") {
		t.Errorf("error = %q, want it to say what to do", err)
	}

	e.cfg.Binary = ""
	t.Setenv("PATH", t.TempDir())
	_, err = e.driver().Run(context.Background(), &cylo.Request{Language: cylo.Bash, Code: "true"})
	if err == nil || !strings.Contains(err.Error(), "firecracker binary not found on PATH: install it or set --firecracker-bin") {
		t.Errorf("Run error with an empty PATH = %v", err)
	}
	e.checkClean()
}

func TestRunSocketPathTooLong(t *testing.T) {
	e := newEnv(t, nil)
	e.cfg.RuntimeBase = filepath.Join(e.cfg.RuntimeBase, strings.Repeat("d", 100))
	_, err := e.driver().Run(context.Background(), &cylo.Request{Language: cylo.Bash, Code: "true"})
	if err == nil || !strings.Contains(err.Error(), "107-byte limit of a Unix socket path") {
		t.Fatalf("Run error = %v, want one naming the socket path limit", err)
	}
	if _, err := os.Stat(e.cfg.RuntimeBase); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the too-long base was created: %v", err)
	}
}

func TestRunAPIRejection(t *testing.T) {
	const fault = "Invalid vCPU count: 2. It must be 1 or an even number (test)."
	e := newEnv(t, map[string]string{fctest.EnvReject: "PUT /machine-config=" + fault})
	_, err := e.driver().Run(context.Background(), &cylo.Request{Language: cylo.Bash, Code: "true"})
	if err == nil {
		t.Fatal("Run succeeded although the double rejected machine-config")
	}
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("error %v is not an *APIError", err)
	}
	if apiErr.FaultMessage != fault || apiErr.Method != "PUT" || apiErr.Path != "/machine-config" || apiErr.StatusCode != 400 {
		t.Errorf("APIError = %+v, want PUT /machine-config 400 %q", apiErr, fault)
	}
	if !strings.Contains(err.Error(), "PUT /machine-config") || !strings.Contains(err.Error(), fault) {
		t.Errorf("error %q does not name the request and the verbatim fault", err)
	}
	got := paths(e.requests())
	if slices.Contains(got, "PUT /actions InstanceStart") {
		t.Errorf("driver went on to InstanceStart after a rejection: %q", got)
	}
	e.checkClean()
}

func TestRunProcessDies(t *testing.T) {
	tests := []struct {
		name   string
		exitOn string
		want   []string
	}{
		{"before socket", "start=3", []string{"exited before its API socket appeared", "exit status 3", "exiting with status 3 before creating the API socket"}},
		{"during configuration", "PUT /boot-source=4", []string{"exit status 4", "exiting with status 4 on PUT /boot-source", "PUT /boot-source"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, map[string]string{fctest.EnvExitOn: tt.exitOn})
			_, err := e.driver().Run(context.Background(), &cylo.Request{Language: cylo.Bash, Code: "true"})
			if err == nil {
				t.Fatal("Run succeeded although firecracker exited")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
			e.checkClean()
		})
	}
}

func TestRunVersionTooOld(t *testing.T) {
	e := newEnv(t, map[string]string{fctest.EnvVersion: "0.24.4"})
	_, err := e.driver().Run(context.Background(), &cylo.Request{Language: cylo.Bash, Code: "true"})
	if err == nil || !strings.Contains(err.Error(), "firecracker 0.24.4 is not supported: cylo needs Firecracker 1.0 or later") {
		t.Fatalf("Run error = %v, want one naming 0.24.4 and the minimum 1.0", err)
	}
	if got := paths(e.requests()); !slices.Equal(got, []string{"GET /"}) {
		t.Errorf("requests after the version check = %q, want only GET /", got)
	}
	e.checkClean()
}

func TestRunAgentNeverAnswers(t *testing.T) {
	tests := []struct {
		name string
		vars map[string]string
	}{
		// No agent: the double closes every vsock connection, as
		// Firecracker does while nothing listens in the guest.
		{"nothing listening", nil},
		// The handshake succeeds but the agent never speaks.
		{"silent agent", map[string]string{fctest.EnvAgentMode: "silent"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.vars)
			e.cfg.BootTimeout = 1500 * time.Millisecond
			start := time.Now()
			_, err := e.driver().Run(context.Background(), &cylo.Request{Language: cylo.Bash, Code: "true"})
			elapsed := time.Since(start)
			if err == nil {
				t.Fatal("Run succeeded without an agent")
			}
			if !strings.Contains(err.Error(), "guest agent did not respond within 1.5s of InstanceStart") {
				t.Errorf("error = %v, want the bounded boot wait named", err)
			}
			if elapsed > 5*time.Second {
				t.Errorf("Run took %v with a 1.5s boot timeout", elapsed)
			}
			e.checkClean()
		})
	}
}

func TestRunContextCanceledDuringBoot(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := e.driver().Run(ctx, &cylo.Request{Language: cylo.Bash, Code: "true"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Run error = %v, want the context's deadline", err)
	}
	e.checkClean()
}

func TestHealth(t *testing.T) {
	e := newEnv(t, nil)
	pvm := func() kvm.Status {
		return kvm.CheckPaths("/dev/null", fakeSysRoot(t, kvm.ModulePVM))
	}
	tests := []struct {
		name       string
		change     func(c *Config)
		wantUsable bool
		wantReason string
	}{
		{"usable", func(c *Config) {}, true, ""},
		{"binary missing", func(c *Config) { c.Binary = "/nonexistent/firecracker" }, false, "firecracker binary not found at /nonexistent/firecracker: install it or set --firecracker-bin"},
		{"kvm_pvm", func(c *Config) { c.KVMCheck = pvm }, false, "kvm_pvm (a pagetable-based KVM) which cannot boot standard guest kernels"},
		{"kernel missing", func(c *Config) { c.KernelPath = "/nonexistent/vmlinux" }, false, "guest kernel /nonexistent/vmlinux is missing"},
		{"rootfs missing", func(c *Config) { c.RootfsPath = "/nonexistent/rootfs.img" }, false, "rootfs image /nonexistent/rootfs.img is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.cfg
			tt.change(&cfg)
			d, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			h := d.Health(context.Background())
			if h.Usable != tt.wantUsable {
				t.Errorf("Usable = %v, want %v (reason %q)", h.Usable, tt.wantUsable, h.Reason)
			}
			if !strings.Contains(h.Reason, tt.wantReason) {
				t.Errorf("Reason = %q, want it to contain %q", h.Reason, tt.wantReason)
			}
			if tt.wantUsable && !slices.Contains(h.Details, "version: Firecracker v1.16.1 (fake-firecracker test double)") {
				t.Errorf("Details = %q, want the binary's version", h.Details)
			}
		})
	}
}

func fakeSysRoot(t *testing.T, modules ...string) string {
	root := t.TempDir()
	for _, m := range modules {
		os.MkdirAll(filepath.Join(root, "module", m), 0o755)
	}
	return root
}
