package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cylo-dev/cylo/internal/firecracker/fctest"
)

// machine is the state of the modelled microVM. Firecracker handles one
// API request at a time, and so does the fake: mu is held for each.
type machine struct {
	mu      sync.Mutex
	spec    *fctest.Spec
	id      string
	version string
	dir     string
	record  *os.File
	exit    chan int

	started     bool
	loggerPath  string
	metricsPath string
	bootSource  *bootSource
	drives      map[string]drive
	vsock       *vsockConfig
	netIfaces   map[string]bool
	bridge      *vsockBridge
	agent       *exec.Cmd
}

type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path"`
	BootArgs        string `json:"boot_args"`
}

type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

type vsockConfig struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

func newMachine(spec *fctest.Spec, id, version, dir, recordPath string) (*machine, error) {
	f, err := os.OpenFile(recordPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open request log: %w", err)
	}
	return &machine{
		spec: spec, id: id, version: version, dir: dir, record: f,
		exit:      make(chan int, 1),
		drives:    make(map[string]drive),
		netIfaces: make(map[string]bool),
	}, nil
}

// fault is an error returned in Firecracker's error shape: HTTP 400 with
// {"fault_message": ...}.
type fault string

func (m *machine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()

	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		body = nil
	}
	rec := fctest.Request{Method: r.Method, Path: r.URL.Path, ContentType: r.Header.Get("Content-Type"), Body: string(body)}

	key := r.Method + " " + r.URL.Path
	if status, ok := exitOn(key); ok {
		m.log(rec)
		fmt.Fprintf(os.Stderr, "fake-firecracker: exiting with status %d on %s (%s)\n", status, key, fctest.EnvExitOn)
		m.stopAgent()
		os.Exit(status)
	}

	out, f := m.handle(r.Context(), r.Method, r.URL.Path, rec.ContentType, body)
	switch {
	case f != "":
		rec.Status = http.StatusBadRequest
		rec.Fault = string(f)
		writeJSON(w, rec.Status, map[string]string{"fault_message": string(f)})
	case out != nil:
		rec.Status = http.StatusOK
		writeJSON(w, rec.Status, out)
	default:
		rec.Status = http.StatusNoContent
		w.WriteHeader(rec.Status)
	}
	m.log(rec)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (m *machine) log(rec fctest.Request) {
	line, _ := json.Marshal(rec)
	m.record.Write(append(line, '\n'))
}

// handle applies one request and returns the response body (nil for 204)
// or a fault.
func (m *machine) handle(ctx context.Context, method, path, contentType string, body []byte) (any, fault) {
	if err := m.spec.Validate(ctx, method, path, contentType, body); err != nil {
		return nil, fault("fake-firecracker: request does not match the Firecracker API definition: " + err.Error())
	}
	if method != http.MethodGet && len(bytes.TrimSpace(body)) == 0 {
		return nil, fault("fake-firecracker: empty request body")
	}
	if msg, ok := rejection(method + " " + path); ok {
		return nil, fault(msg)
	}

	if method == http.MethodGet && path == "/" {
		state := "Not started"
		if m.started {
			state = "Running"
		}
		return map[string]string{"app_name": "Firecracker", "id": m.id, "state": state, "vmm_version": m.version}, ""
	}
	if method == http.MethodGet && path == "/version" {
		return map[string]string{"firecracker_version": m.version}, ""
	}
	if method != http.MethodPut {
		return nil, fault(fmt.Sprintf("fake-firecracker: %s %s is valid but not modelled by the test double", method, path))
	}

	if path == "/actions" {
		var a struct {
			ActionType string `json:"action_type"`
		}
		json.Unmarshal(body, &a)
		return nil, m.action(a.ActionType)
	}
	if path == "/logger" || path == "/metrics" {
		return nil, m.putObservability(path, body)
	}
	if m.started {
		return nil, "The requested operation is not supported after starting the microVM."
	}
	return nil, m.putPreBoot(path, body)
}

func (m *machine) putObservability(path string, body []byte) fault {
	var cfg struct {
		LogPath     string `json:"log_path"`
		MetricsPath string `json:"metrics_path"`
	}
	json.Unmarshal(body, &cfg)
	target, current := cfg.LogPath, &m.loggerPath
	if path == "/metrics" {
		target, current = cfg.MetricsPath, &m.metricsPath
	}
	if *current != "" {
		return fault(fmt.Sprintf("Reinitialization of %s not allowed.", strings.TrimPrefix(path, "/")))
	}
	// Firecracker opens the file or FIFO; it does not create it.
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fault(fmt.Sprintf("Failed to open target file: %v", err))
	}
	f.Close()
	*current = target
	return ""
}

func (m *machine) putPreBoot(path string, body []byte) fault {
	switch {
	case path == "/boot-source":
		var b bootSource
		json.Unmarshal(body, &b)
		if err := readable(b.KernelImagePath); err != nil {
			return fault("Invalid kernel path: " + err.Error())
		}
		if b.InitrdPath != "" {
			if err := readable(b.InitrdPath); err != nil {
				return fault("Invalid initrd path: " + err.Error())
			}
		}
		m.bootSource = &b
	case strings.HasPrefix(path, "/drives/"):
		var d drive
		json.Unmarshal(body, &d)
		if d.DriveID != strings.TrimPrefix(path, "/drives/") {
			return "The id from the path does not match the id from the body!"
		}
		if d.PathOnHost == "" {
			return "fake-firecracker: path_on_host is required for a virtio-block drive"
		}
		flag := os.O_RDWR
		if d.IsReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(d.PathOnHost, flag, 0)
		if err != nil {
			return fault("Unable to create the block device: " + err.Error())
		}
		f.Close()
		if d.IsRootDevice {
			for id, other := range m.drives {
				if other.IsRootDevice && id != d.DriveID {
					return "A root block device already exists!"
				}
			}
		}
		m.drives[d.DriveID] = d
	case strings.HasPrefix(path, "/network-interfaces/"):
		var n struct {
			IfaceID     string `json:"iface_id"`
			HostDevName string `json:"host_dev_name"`
		}
		json.Unmarshal(body, &n)
		if n.IfaceID != strings.TrimPrefix(path, "/network-interfaces/") {
			return "The id from the path does not match the id from the body!"
		}
		if _, err := net.InterfaceByName(n.HostDevName); err != nil {
			return fault(fmt.Sprintf("Open tap device failed: %s: no such device", n.HostDevName))
		}
		m.netIfaces[n.IfaceID] = true
	case path == "/vsock":
		var v vsockConfig
		json.Unmarshal(body, &v)
		m.vsock = &v
	case path == "/machine-config", path == "/entropy":
		// Accepted as validated; the fake has no use for them.
	default:
		return fault(fmt.Sprintf("fake-firecracker: PUT %s is valid but not modelled by the test double", path))
	}
	return ""
}

func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

func (m *machine) action(actionType string) fault {
	switch actionType {
	case "InstanceStart":
		if m.started {
			return "The requested operation is not supported after starting the microVM."
		}
		if m.bootSource == nil {
			return "Cannot start microvm without kernel configuration."
		}
		return m.start()
	case "FlushMetrics":
		if !m.started {
			return "The requested operation is not supported before starting the microVM."
		}
		if m.metricsPath == "" {
			return "Failed to flush metrics: metrics system not initialized."
		}
		return m.flushMetrics()
	case "SendCtrlAltDel":
		if !m.started {
			return "The requested operation is not supported before starting the microVM."
		}
		// The guest reboots, and Firecracker exits on the reset.
		fmt.Println("fake-firecracker: guest received Ctrl+Alt+Del, rebooting")
		m.exitSoon(0)
	}
	return ""
}

// start models InstanceStart: it binds the vsock socket and runs the
// agent where a guest would boot.
func (m *machine) start() fault {
	hasRoot := m.bootSource.InitrdPath != ""
	for _, d := range m.drives {
		hasRoot = hasRoot || d.IsRootDevice
	}

	if m.vsock != nil {
		bridge, err := newVsockBridge(m.vsock.UDSPath, filepath.Join(m.dir, "agent.sock"), os.Getenv(fctest.EnvAgentMode) == "silent")
		if err != nil {
			return fault("Cannot create vsock device: " + err.Error())
		}
		m.bridge = bridge
	}
	m.started = true

	if !hasRoot {
		// A kernel with neither initrd nor root drive panics, and with
		// panic=1 reboot=k the reboot ends Firecracker.
		fmt.Println("fake-firecracker: Kernel panic - not syncing: VFS: Unable to mount root fs (no initrd and no root drive)")
		m.exitSoon(0)
		return ""
	}
	if bin := os.Getenv(fctest.EnvAgentBin); bin != "" {
		// Runs write under the runtime directory, the double's stand-in for
		// the guest's scratch disk, and never into the host's /work.
		cmd := exec.Command(bin, "--listen", "unix:"+filepath.Join(m.dir, "agent.sock"), "--dir-base", filepath.Join(m.dir, "guest"))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			fmt.Println("fake-firecracker: start agent:", err)
		} else {
			m.agent = cmd
			fmt.Printf("fake-firecracker: agent started as host process %d in place of a guest\n", cmd.Process.Pid)
		}
	}
	return ""
}

func (m *machine) exitSoon(status int) {
	go func() {
		time.Sleep(20 * time.Millisecond) // let the 204 reach the client
		m.exit <- status
	}()
}

// stopAgent stops the agent, as a guest dies with its VMM. SIGTERM comes
// first so the agent removes its socket and cgroup; SIGKILL follows after
// a second.
func (m *machine) stopAgent() {
	if m.agent == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		m.agent.Wait()
		close(done)
	}()
	m.agent.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(time.Second):
		m.agent.Process.Kill()
		<-done
	}
	m.agent = nil
}

// flushMetrics appends one line in Firecracker's metrics format: one
// JSON object with the documented top-level keys. Counters are zero
// except the vsock bytes the bridge really moved and whatever
// FCTEST_METRICS sets.
func (m *machine) flushMetrics() fault {
	var rx, tx int64
	if m.bridge != nil {
		rx, tx = m.bridge.bytes()
	}
	line := map[string]any{
		"utc_timestamp_ms":   time.Now().UnixMilli(),
		"api_server":         map[string]any{"process_startup_time_us": 0},
		"balloon":            map[string]any{},
		"block":              map[string]any{"read_bytes": 0, "write_bytes": 0, "read_count": 0, "write_count": 0},
		"deprecated_api":     map[string]any{},
		"entropy":            map[string]any{},
		"get_api_requests":   map[string]any{},
		"i8042":              map[string]any{},
		"latencies_us":       map[string]any{},
		"logger":             map[string]any{},
		"mmds":               map[string]any{},
		"net":                map[string]any{"rx_bytes_count": 0, "tx_bytes_count": 0},
		"patch_api_requests": map[string]any{},
		"put_api_requests":   map[string]any{},
		"rtc":                map[string]any{},
		"seccomp":            map[string]any{},
		"signals":            map[string]any{},
		"uart":               map[string]any{},
		"vcpu": map[string]any{
			"exit_io_in": 0, "exit_io_out": 0, "exit_mmio_read": 0, "exit_mmio_write": 0, "failures": 0,
			"exit_io_in_agg": map[string]any{"min_us": 0, "max_us": 0, "sum_us": 0},
		},
		"vhost_user_block": map[string]any{},
		"vmm":              map[string]any{},
		"vsock":            map[string]any{"rx_bytes_count": rx, "tx_bytes_count": tx},
	}
	if extra := os.Getenv(fctest.EnvMetrics); extra != "" {
		var add map[string]map[string]any
		if err := json.Unmarshal([]byte(extra), &add); err != nil {
			return fault("fake-firecracker: invalid " + fctest.EnvMetrics + ": " + err.Error())
		}
		for group, fields := range add {
			g, _ := line[group].(map[string]any)
			if g == nil {
				g = map[string]any{}
				line[group] = g
			}
			for k, v := range fields {
				g[k] = v
			}
		}
	}
	data, _ := json.Marshal(line)
	f, err := os.OpenFile(m.metricsPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fault("Failed to flush metrics: " + err.Error())
	}
	defer f.Close()
	if _, err := f.Write(append(data, '\n')); err != nil {
		return fault("Failed to flush metrics: " + err.Error())
	}
	return ""
}

// rejection returns the fault configured for key through FCTEST_REJECT.
func rejection(key string) (string, bool) {
	k, msg, ok := strings.Cut(os.Getenv(fctest.EnvReject), "=")
	return msg, ok && k == key
}

// exitOn returns the exit status configured for key through
// FCTEST_EXIT_ON.
func exitOn(key string) (int, bool) {
	k, v, ok := strings.Cut(os.Getenv(fctest.EnvExitOn), "=")
	if !ok || k != key {
		return 0, false
	}
	status, err := strconv.Atoi(v)
	if err != nil {
		return 1, true
	}
	return status, true
}
