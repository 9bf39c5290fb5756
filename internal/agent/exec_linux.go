package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cylo-dev/cylo/internal/agentproto"
)

// drainGrace is how long output pipes may stay open after the run's
// processes were killed. Without a cgroup a process in another session can
// hold them; with one, they close as soon as the kill lands.
const drainGrace = 250 * time.Millisecond

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	typ, payload, err := agentproto.ReadFrame(r.Body)
	if err != nil || typ != agentproto.FrameSpec {
		http.Error(w, fmt.Sprintf("exec body must start with a spec frame (type %q, err %v)", typ, err), http.StatusBadRequest)
		return
	}
	var spec agentproto.ExecSpec
	if err := json.Unmarshal(payload, &spec); err != nil {
		http.Error(w, "invalid exec spec: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(spec.Argv) == 0 || !filepath.IsAbs(spec.Dir) {
		http.Error(w, "invalid exec spec: argv must not be empty and dir must be absolute", http.StatusBadRequest)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "response cannot be streamed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()

	id := s.runID()
	out := &outputSink{w: w, flusher: flusher, max: spec.MaxOutputBytes}
	status := s.execute(r.Context(), id, &spec, r.Body, out)
	s.cfg.Logger.Info("run ended", "run", id, "exit_code", status.ExitCode, "signal", status.Signal,
		"limit", status.Limit, "wall_ms", status.WallNanos/1e6)

	exitJSON, _ := json.Marshal(status)
	out.mu.Lock()
	defer out.mu.Unlock()
	if err := agentproto.WriteFrame(w, agentproto.FrameExit, exitJSON); err == nil {
		flusher.Flush()
	}
}

// outputSink writes output frames to the response and enforces the output
// cap over stdout and stderr together.
type outputSink struct {
	w       io.Writer
	flusher http.Flusher
	max     int64 // 0 means no cap

	mu        sync.Mutex
	total     int64
	truncated bool
	failed    bool
	onLimit   func() // called once when the cap is reached or the host is gone
}

func (o *outputSink) write(typ byte, p []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.truncated || o.failed {
		return
	}
	if o.max > 0 && o.total+int64(len(p)) > o.max {
		p = p[:o.max-o.total]
		o.truncated = true
	}
	o.total += int64(len(p))
	if len(p) > 0 {
		if err := agentproto.WriteFrame(o.w, typ, p); err != nil {
			o.failed = true
		} else {
			o.flusher.Flush()
		}
	}
	if (o.truncated || o.failed) && o.onLimit != nil {
		go o.onLimit()
	}
}

// run is the state of one execution.
type run struct {
	pid     int
	cgroup  *runCgroup
	mu      sync.Mutex
	limit   string // first limit that fired
	killed  bool
	started time.Time
}

func (r *run) kill(limit string) {
	r.mu.Lock()
	if r.limit == "" {
		r.limit = limit
	}
	r.killed = true
	r.mu.Unlock()
	r.killAll()
}

// killAll sends SIGKILL to every process of the run: the cgroup when there
// is one, else the process group the program started.
func (r *run) killAll() {
	if r.cgroup != nil {
		if err := r.cgroup.kill(); err == nil {
			return
		}
	}
	_ = unix.Kill(-r.pid, unix.SIGKILL)
}

func (s *Server) execute(ctx context.Context, id int, spec *agentproto.ExecSpec, body io.Reader, out *outputSink) *agentproto.ExitStatus {
	if s.cfg.DirBase != "" {
		root := filepath.Join(s.cfg.DirBase, fmt.Sprintf("run-%d", id))
		defer os.RemoveAll(root)
		spec.Dir = filepath.Join(root, spec.Dir)
		for i, f := range spec.Files {
			if filepath.IsAbs(f.Path) {
				spec.Files[i].Path = filepath.Join(root, f.Path)
			}
		}
	}
	if err := s.prepareFiles(spec); err != nil {
		return &agentproto.ExitStatus{ExitCode: 126, Error: err.Error()}
	}
	argv0, err := lookPath(spec.Argv[0], spec.Env)
	if err != nil {
		return &agentproto.ExitStatus{ExitCode: 127, Error: err.Error()}
	}

	r := &run{}
	if s.cfg.CgroupParent != "" {
		cg, err := newRunCgroup(s.cfg.CgroupParent, id, spec.MemoryBytes, spec.MaxProcesses)
		if err != nil {
			return &agentproto.ExitStatus{ExitCode: 126, Error: err.Error()}
		}
		r.cgroup = cg
		defer cg.remove()
	}

	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return &agentproto.ExitStatus{ExitCode: 126, Error: err.Error()}
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return &agentproto.ExitStatus{ExitCode: 126, Error: err.Error()}
	}
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		for _, f := range []*os.File{stdinR, stdinW, stdoutR, stdoutW} {
			f.Close()
		}
		return &agentproto.ExitStatus{ExitCode: 126, Error: err.Error()}
	}

	env := spec.Env
	if s.cfg.Home != "" && !hasEnv(env, "HOME") {
		env = append(env, "HOME="+s.cfg.Home)
	}
	attr := &syscall.ProcAttr{
		Dir:   spec.Dir,
		Env:   env,
		Files: []uintptr{stdinR.Fd(), stdoutW.Fd(), stderrW.Fd()},
		// A session of its own: no controlling terminal, and a process
		// group to kill when there is no cgroup.
		Sys: &syscall.SysProcAttr{Setsid: true},
	}
	if c := s.cfg.RunAs; c != nil {
		attr.Sys.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, NoSetGroups: true}
	}
	if r.cgroup != nil {
		attr.Sys.UseCgroupFD = true
		attr.Sys.CgroupFD = int(r.cgroup.fd.Fd())
	}

	r.started = time.Now()
	pid, exited, err := s.reaper.start(argv0, spec.Argv, attr)
	stdinR.Close()
	stdoutW.Close()
	stderrW.Close()
	if err != nil {
		stdinW.Close()
		stdoutR.Close()
		stderrR.Close()
		return &agentproto.ExitStatus{ExitCode: 126, Error: fmt.Sprintf("start %s: %v", spec.Argv[0], err)}
	}
	r.pid = pid
	out.onLimit = func() {
		if out.truncated {
			r.kill("output")
		} else {
			r.kill("host_gone")
		}
	}

	go copyStdin(body, stdinW)

	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); pump(stdoutR, agentproto.FrameStdout, out) }()
	go func() { defer readers.Done(); pump(stderrR, agentproto.FrameStderr, out) }()

	timer := time.AfterFunc(time.Duration(spec.TimeoutMillis)*time.Millisecond, func() { r.kill("timeout") })
	if spec.TimeoutMillis <= 0 {
		timer.Stop()
	}
	stopOnCancel := context.AfterFunc(ctx, func() { r.kill("host_gone") })

	info := <-exited
	wall := time.Since(r.started)
	timer.Stop()
	stopOnCancel()

	// Processes the program left in the background are killed when it
	// exits, so they cannot hold the output open or outlive the run.
	r.killAll()
	waitOrClose(&readers, drainGrace, stdoutR, stderrR)
	stdinW.Close()

	status := &agentproto.ExitStatus{WallNanos: wall.Nanoseconds()}
	ws := info.status
	switch {
	case ws.Exited():
		status.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		status.Signal = int(ws.Signal())
		status.ExitCode = 128 + status.Signal
	}
	status.CPUUserNanos = unix.TimevalToNsec(info.rusage.Utime)
	status.CPUSystemNanos = unix.TimevalToNsec(info.rusage.Stime)
	status.PeakMemoryBytes = info.rusage.Maxrss * 1024

	r.mu.Lock()
	status.Limit = r.limit
	r.mu.Unlock()
	if status.Limit == "host_gone" {
		status.Limit = ""
	}
	out.mu.Lock()
	status.Truncated = out.truncated
	out.mu.Unlock()

	if r.cgroup != nil {
		// Wait until the kill has emptied the cgroup so the counters are
		// final.
		waitEmpty(r.cgroup, time.Second)
		st := r.cgroup.stats()
		status.CPUUserNanos = st.userUsec * 1000
		status.CPUSystemNanos = st.systemUsec * 1000
		if st.peakMemoryBytes > 0 {
			status.PeakMemoryBytes = st.peakMemoryBytes
		}
		if status.Limit == "" && st.oomKills > 0 {
			status.Limit = "memory"
		}
		if status.Limit == "" && st.pidsMaxHits > 0 {
			status.Limit = "pids"
		}
	}
	return status
}

// prepareFiles creates the working directory and writes the request's
// files, owned by the user the program runs as.
func (s *Server) prepareFiles(spec *agentproto.ExecSpec) error {
	uid, gid := -1, -1
	if c := s.cfg.RunAs; c != nil {
		uid, gid = int(c.UID), int(c.GID)
	}
	if err := mkdirOwned(spec.Dir, uid, gid); err != nil {
		return fmt.Errorf("create working directory %s: %w", spec.Dir, err)
	}
	for _, f := range spec.Files {
		path := f.Path
		if !filepath.IsAbs(path) {
			path = filepath.Join(spec.Dir, path)
		}
		if err := mkdirOwned(filepath.Dir(path), uid, gid); err != nil {
			return fmt.Errorf("create directory for %s: %w", f.Path, err)
		}
		mode := os.FileMode(f.Mode & 0o7777)
		if mode == 0 {
			mode = 0o644
		}
		if err := os.WriteFile(path, f.Data, mode); err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
		if uid >= 0 {
			if err := os.Chown(path, uid, gid); err != nil {
				return fmt.Errorf("chown %s: %w", f.Path, err)
			}
		}
	}
	return nil
}

// mkdirOwned creates dir and its missing parents, giving the directories it
// creates to uid and gid (-1 keeps the agent's).
func mkdirOwned(dir string, uid, gid int) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirOwned(parent, uid, gid); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if uid >= 0 {
		return os.Chown(dir, uid, gid)
	}
	return nil
}

// copyStdin copies stdin frames from the request body to the program and
// closes its stdin at the EOF frame, at the end of the body, or when the
// program stops reading.
func copyStdin(body io.Reader, stdin *os.File) {
	defer stdin.Close()
	for {
		typ, payload, err := agentproto.ReadFrame(body)
		if err != nil || typ == agentproto.FrameStdinEOF {
			return
		}
		if typ != agentproto.FrameStdin {
			return
		}
		if _, err := stdin.Write(payload); err != nil {
			// The program closed its stdin or exited: drain the rest so
			// the host's writer is not blocked.
			_, _ = io.Copy(io.Discard, body)
			return
		}
	}
}

// pump copies one output pipe into frames until EOF or until the pipe is
// closed by waitOrClose.
func pump(pipe *os.File, typ byte, out *outputSink) {
	buf := make([]byte, agentproto.MaxDataChunk)
	for {
		n, err := pipe.Read(buf)
		if n > 0 {
			out.write(typ, buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// waitOrClose waits for the output readers to reach EOF; after grace it
// closes the pipes so a process that escaped the kill cannot hold the run
// open.
func waitOrClose(readers *sync.WaitGroup, grace time.Duration, pipes ...*os.File) {
	done := make(chan struct{})
	go func() {
		readers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		for _, p := range pipes {
			p.Close()
		}
		<-done
	}
	for _, p := range pipes {
		p.Close()
	}
}

func waitEmpty(cg *runCgroup, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for len(cg.pids()) > 0 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// lookPath finds file in the PATH of env, the environment the program gets
// (the agent's own PATH may differ).
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			return "", fmt.Errorf("%s: %w", file, err)
		}
		return file, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		candidate := filepath.Join(dir, file)
		if executable(candidate) == nil {
			return candidate, nil
		}
	}
	return "", fmt.Errorf("%s: command not found in the guest image (PATH=%s): use an image profile that has it (cylo image build --profile full)", file, path)
}

func executable(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	if info.IsDir() || info.Mode()&0o111 == 0 {
		return fmt.Errorf("not an executable file")
	}
	return nil
}
