package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// runCgroup is the cgroup v2 directory of one run. Every process of the
// run starts in it (clone3 with CLONE_INTO_CGROUP), so cgroup.kill reaches
// processes that changed session or process group.
type runCgroup struct {
	dir string
	fd  *os.File
	// unenforced lists the limit files the hierarchy lacks.
	unenforced []string
}

// writeCgroupFile writes value to an existing cgroup interface file. It
// never creates the file: cgroupfs rejects that with EPERM, which would
// hide the real cause, a missing controller.
func writeCgroupFile(dir, file, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	return errors.Join(werr, cerr)
}

// PrepareCgroupParent makes dir a parent for run cgroups: it enables the
// memory, pids and cpu controllers for its children where the hierarchy
// offers them. It reports whether memory and pids are available, which is
// what limits need.
func PrepareCgroupParent(dir string) (limits bool, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	available, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return false, fmt.Errorf("cgroup %s is not a cgroup v2 directory: %w", dir, err)
	}
	var enable []string
	for _, c := range strings.Fields(string(available)) {
		if c == "memory" || c == "pids" || c == "cpu" {
			enable = append(enable, "+"+c)
		}
	}
	if len(enable) > 0 {
		control := filepath.Join(dir, "cgroup.subtree_control")
		if err := writeCgroupFile(dir, "cgroup.subtree_control", strings.Join(enable, " ")); err != nil {
			return false, fmt.Errorf("enable %s in %s: %w", strings.Join(enable, " "), control, err)
		}
	}
	fields := strings.Fields(string(available))
	has := func(name string) bool {
		for _, f := range fields {
			if f == name {
				return true
			}
		}
		return false
	}
	return has("memory") && has("pids"), nil
}

// newRunCgroup creates the cgroup of run id under parent with the given
// limits. A zero limit leaves the kernel default (max).
func newRunCgroup(parent string, id int, memoryBytes, maxProcesses int64) (*runCgroup, error) {
	dir := filepath.Join(parent, "run-"+strconv.Itoa(id))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create run cgroup: %w", err)
	}
	cg := &runCgroup{dir: dir}
	required := map[string]int64{"memory.max": memoryBytes, "pids.max": maxProcesses}
	for file, limit := range required {
		if limit <= 0 {
			continue
		}
		err := writeCgroupFile(dir, file, strconv.FormatInt(limit, 10))
		if errors.Is(err, os.ErrNotExist) {
			// The hierarchy has no such controller (a host-process agent on
			// a hybrid cgroup v1/v2 host): Health reports Cgroups false.
			cg.unenforced = append(cg.unenforced, file)
			continue
		}
		if err != nil {
			cg.remove()
			return nil, fmt.Errorf("set %s to %d: %w", file, limit, err)
		}
	}
	if memoryBytes > 0 {
		// Without a swap limit the program could page past memory.max.
		// Killing the whole run on OOM, not only the largest process, keeps
		// a shell from going on after its child was killed. Both files are
		// missing when the hierarchy has no memory controller.
		_ = writeCgroupFile(dir, "memory.swap.max", "0")
		_ = writeCgroupFile(dir, "memory.oom.group", "1")
	}
	fd, err := os.Open(dir)
	if err != nil {
		cg.remove()
		return nil, fmt.Errorf("open run cgroup: %w", err)
	}
	cg.fd = fd
	return cg, nil
}

// kill sends SIGKILL to every process in the cgroup.
func (c *runCgroup) kill() error {
	return writeCgroupFile(c.dir, "cgroup.kill", "1")
}

// pids returns the processes still in the cgroup.
func (c *runCgroup) pids() []int {
	data, err := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cgroupStats are the counters read after a run.
type cgroupStats struct {
	userUsec, systemUsec int64
	peakMemoryBytes      int64
	oomKills             int64
	pidsMaxHits          int64
}

func (c *runCgroup) stats() cgroupStats {
	var s cgroupStats
	cpu := readKeyed(filepath.Join(c.dir, "cpu.stat"))
	s.userUsec = cpu["user_usec"]
	s.systemUsec = cpu["system_usec"]
	s.oomKills = readKeyed(filepath.Join(c.dir, "memory.events"))["oom_kill"]
	s.pidsMaxHits = readKeyed(filepath.Join(c.dir, "pids.events"))["max"]
	if data, err := os.ReadFile(filepath.Join(c.dir, "memory.peak")); err == nil {
		s.peakMemoryBytes, _ = strconv.ParseInt(string(bytes.TrimSpace(data)), 10, 64)
	}
	return s
}

// remove kills what is left, waits until the cgroup is empty and removes
// it. Killed processes leave the cgroup once the reaper has waited for
// them, which takes a few milliseconds.
func (c *runCgroup) remove() {
	if c.fd != nil {
		c.fd.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(c.dir)
		if err == nil || errors.Is(err, unix.ENOENT) || time.Now().After(deadline) {
			return
		}
		_ = c.kill()
		time.Sleep(5 * time.Millisecond)
	}
}

// readKeyed parses a flat keyed cgroup file ("key value" lines).
func readKeyed(path string) map[string]int64 {
	values := make(map[string]int64)
	f, err := os.Open(path)
	if err != nil {
		return values
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		key, value, ok := strings.Cut(scanner.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(value, 10, 64); err == nil {
			values[key] = n
		}
	}
	return values
}

// HostCgroupParent returns a cgroup v2 directory a host-process agent can
// use for its runs: a child of the agent's own cgroup on the unified
// hierarchy (/sys/fs/cgroup or, on hybrid hosts, /sys/fs/cgroup/unified).
func HostCgroupParent() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	var own string
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			own = rest
		}
	}
	if own == "" {
		return "", errors.New("no cgroup v2 hierarchy in /proc/self/cgroup")
	}
	for _, mount := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(mount, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return filepath.Join(mount, own, fmt.Sprintf("cylo-agent-%d", os.Getpid())), nil
		}
	}
	return "", errors.New("cgroup v2 is not mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}
