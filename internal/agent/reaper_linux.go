package agent

import (
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// reaper waits for every child of the process. As PID 1 the agent inherits
// every orphan in the guest, and a host-process agent is made a child
// subreaper, so one loop reaps them all and hands the status of a started
// program to its waiter. Programs must be started through reaper.start so
// that no status arrives before its waiter is registered.
type reaper struct {
	logger  *slog.Logger
	mu      sync.Mutex
	waiters map[int]chan exitInfo
	sigchld chan os.Signal
}

type exitInfo struct {
	status unix.WaitStatus
	rusage unix.Rusage
}

var (
	processReaper     *reaper
	processReaperOnce sync.Once
)

// startReaper returns the process's one reaper, starting it on first use:
// two loops calling wait4(-1) would take each other's children.
func startReaper(logger *slog.Logger) *reaper {
	processReaperOnce.Do(func() { processReaper = newReaper(logger) })
	return processReaper
}

func newReaper(logger *slog.Logger) *reaper {
	// Orphans of runs are re-parented to the agent instead of the host's
	// init, so they are reaped here. PID 1 already gets them.
	if os.Getpid() != 1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			logger.Warn("cannot become child subreaper", "err", err)
		}
	}
	r := &reaper{
		logger:  logger,
		waiters: make(map[int]chan exitInfo),
		sigchld: make(chan os.Signal, 1),
	}
	signal.Notify(r.sigchld, unix.SIGCHLD)
	go r.loop()
	return r
}

func (r *reaper) loop() {
	for range r.sigchld {
		r.reapAll()
	}
}

func (r *reaper) reapAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var info exitInfo
		pid, err := unix.Wait4(-1, &info.status, unix.WNOHANG, &info.rusage)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- info
		}
	}
}

// start forks and execs a program and registers its waiter before any
// status can be reaped. The returned channel receives its exit status once.
func (r *reaper) start(argv0 string, argv []string, attr *syscall.ProcAttr) (int, <-chan exitInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(argv0, argv, attr)
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan exitInfo, 1)
	// A SIGCHLD that arrives before this line finds reapAll waiting for
	// the lock, so the status is not reaped before its waiter exists.
	r.waiters[pid] = ch
	return pid, ch, nil
}
