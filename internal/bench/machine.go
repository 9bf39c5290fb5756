package bench

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/cylo-dev/cylo/internal/kvm"
)

// Machine describes the host the figures were measured on.
type Machine struct {
	Cores       int
	CPUModel    string
	MemoryBytes int64
	HostKernel  string
	// Accelerator is the accelerator a QEMU guest gets here: "kvm", or
	// "tcg" and the reason KVM is not usable.
	Accelerator string
	// Interpreters maps each floor interpreter to its --version line.
	Interpreters map[string]string
}

func describeMachine(ctx context.Context) Machine {
	m := Machine{
		Cores:        runtime.NumCPU(),
		CPUModel:     cpuModel(),
		MemoryBytes:  memTotal(),
		Interpreters: map[string]string{},
	}
	if release, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.HostKernel = strings.TrimSpace(string(release))
	}
	if st := kvm.Check(); st.Usable {
		m.Accelerator = "kvm (" + st.Device + ")"
	} else {
		m.Accelerator = "tcg: " + st.Reason
	}
	for _, s := range snippets {
		m.Interpreters[s.host[0]] = hostVersion(ctx, s.host[0])
	}
	return m
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		key, value, ok := strings.Cut(scanner.Text(), ":")
		if ok && strings.TrimSpace(key) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return ""
}

// memTotal returns MemTotal from /proc/meminfo in bytes, or 0.
func memTotal() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		rest, ok := strings.CutPrefix(line, "MemTotal:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest) // "24684196 kB"
		if len(fields) == 2 && fields[1] == "kB" {
			kib, _ := strconv.ParseInt(fields[0], 10, 64)
			return kib << 10
		}
	}
	return 0
}

// LoadSample is the host's load at one point of the run.
type LoadSample struct {
	When string
	// Load1 is the one-minute load average from /proc/loadavg.
	Load1 float64
	// OtherVMMs counts QEMU and Firecracker processes on the host that
	// this process did not start.
	OtherVMMs int
}

func (r *Report) sampleLoad(when string) {
	s := LoadSample{When: when, OtherVMMs: otherVMMs()}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if fields := strings.Fields(string(data)); len(fields) > 0 {
			s.Load1, _ = strconv.ParseFloat(fields[0], 64)
		}
	}
	r.Load = append(r.Load, s)
}

// otherVMMs counts processes whose name starts with qemu-system or is
// firecracker and whose parent is not this process.
func otherVMMs() int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := os.Getpid()
	count := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		if !strings.HasPrefix(name, "qemu-system") && name != "firecracker" {
			continue
		}
		if parentPID(pid) != self {
			count++
		}
	}
	return count
}

// parentPID returns the PPid of process pid, or 0.
func parentPID(pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "PPid:"); ok {
			ppid, _ := strconv.Atoi(strings.TrimSpace(rest))
			return ppid
		}
	}
	return 0
}
