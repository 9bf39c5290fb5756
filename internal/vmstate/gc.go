package vmstate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cylo-dev/cylo/internal/vmnet"
)

// Report lists what one GC run did.
type Report struct {
	// Reclaimed are the ids of VMs whose owner was gone and whose
	// resources and record were removed.
	Reclaimed []string
	// Live are the ids of VMs whose owner is still running. GC left them
	// untouched.
	Live []string
	// Killed are the VMM pids that GC sent SIGKILL to.
	Killed []int
	// Failed are the ids of VMs that could not be fully reclaimed. Their
	// records stay, so a later GC retries them.
	Failed []string
}

// vmmExitTimeout bounds the wait for a killed VMM to exit. SIGKILL cannot
// be caught, so only a process in uninterruptible sleep takes longer.
const vmmExitTimeout = 5 * time.Second

// GC reclaims the VMs whose owner process is gone: the pid no longer
// exists or now belongs to a process with another start time.
//
// For each such VM, GC sends SIGKILL to the VMM's process group if the VMM
// pid and start time still match, and reaps the VMM if it is a child of
// this process. It then deletes the TAP devices and the network namespace
// that contains them, removes the paths and
// the runtime directory, and removes the record. Records of a live owner
// are never touched.
//
// GC runs hold a lock in the state directory, so two of them do not act on
// the same record. The error joins the failures of every record.
func (s *Store) GC(ctx context.Context, logger *slog.Logger) (Report, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var report Report

	unlock, err := s.lock()
	if err != nil {
		return report, err
	}
	defer unlock()

	recs, listErr := s.List()
	errs := []error{listErr}
	for _, rec := range recs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if ownerAlive(rec) {
			report.Live = append(report.Live, rec.ID)
			continue
		}

		log := logger.With("vm_id", rec.ID, "backend", rec.Backend, "owner_pid", rec.OwnerPID)
		killed, err := s.reclaim(ctx, rec)
		if killed {
			report.Killed = append(report.Killed, rec.VMMPID)
		}
		if err != nil {
			log.Warn("reclaim vm failed; record kept for the next gc", "err", err)
			report.Failed = append(report.Failed, rec.ID)
			errs = append(errs, fmt.Errorf("reclaim vm %s: %w", rec.ID, err))
			continue
		}
		log.Info("reclaimed vm of a dead owner", "vmm_pid", rec.VMMPID, "vmm_killed", killed)
		report.Reclaimed = append(report.Reclaimed, rec.ID)
	}
	return report, errors.Join(errs...)
}

// ownerAlive reports whether the record's owner still runs. A record
// without an owner start time counts as live while its pid exists,
// because GC cannot then tell the owner from a recycled pid.
func ownerAlive(rec Record) bool {
	if rec.OwnerStart == 0 {
		return Alive(rec.OwnerPID, 0)
	}
	return Alive(rec.OwnerPID, rec.OwnerStart)
}

// reclaim stops the VMM of rec and removes its resources and record. It
// reports whether it sent SIGKILL.
func (s *Store) reclaim(ctx context.Context, rec Record) (killed bool, err error) {
	killed, err = stopVMM(ctx, rec)
	if err != nil {
		// The VMM may still use its sockets and TAP devices: keep them.
		return killed, err
	}

	var errs []error
	if rec.NetNS != "" {
		errs = append(errs, vmnet.RemoveNamespace(rec.NetNS, rec.TAPDevices))
	} else {
		for _, name := range rec.TAPDevices {
			errs = append(errs, vmnet.DeleteLink(name))
		}
	}
	for _, p := range append(rec.Paths, rec.RuntimeDir) {
		errs = append(errs, removePath(p))
	}
	if err := errors.Join(errs...); err != nil {
		return killed, err
	}
	return killed, s.Remove(rec.ID)
}

// stopVMM kills the VMM's process group and waits for the VMM to exit.
func stopVMM(ctx context.Context, rec Record) (killed bool, err error) {
	pid := rec.VMMPID
	if pid <= 0 {
		return false, nil
	}

	start, _, statErr := readStat(pid)
	switch {
	case statErr != nil:
		// The leader is gone. Its process group id cannot be reused while
		// any member of the group lives, so a kill of the group reaches
		// only leftover members, such as helpers the VMM started.
		_ = unix.Kill(-pid, unix.SIGKILL)
		return false, nil
	case rec.VMMStart == 0 || start != rec.VMMStart:
		// The pid belongs to another process now, or the record cannot
		// tell: leave it alone.
		return false, nil
	}

	// The VMM leads its own process group, so -pid reaches it and any
	// helper it started. The direct kill covers a VMM that left the group.
	_ = unix.Kill(-pid, unix.SIGKILL)
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return false, fmt.Errorf("kill vmm pid %d: %w", pid, err)
	}
	return true, waitExit(ctx, pid, start)
}

// waitExit waits until process pid (started at start) has exited, and
// reaps it if it is a child of this process.
func waitExit(ctx context.Context, pid int, start uint64) error {
	ctx, cancel := context.WithTimeout(ctx, vmmExitTimeout)
	defer cancel()

	delay := time.Millisecond
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid {
			return nil
		}
		notChild := errors.Is(err, unix.ECHILD)
		if notChild && !Alive(pid, start) {
			return nil
		}

		select {
		case <-ctx.Done():
			return fmt.Errorf("vmm pid %d did not exit within %v of SIGKILL: %w", pid, vmmExitTimeout, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// removePath removes p and everything below it. Empty paths are skipped.
// Relative paths and the root are rejected, because records are plain
// files and a damaged one must not turn GC into rm -rf of a wrong tree.
func removePath(p string) error {
	if p == "" {
		return nil
	}
	clean := filepath.Clean(p)
	if !filepath.IsAbs(clean) || clean == "/" {
		return fmt.Errorf("invalid path %q in vm record: want an absolute path below /", p)
	}
	if err := os.RemoveAll(clean); err != nil {
		return fmt.Errorf("remove %s: %w", clean, err)
	}
	return nil
}

// lock takes an exclusive flock on the store's lock file and returns the
// function that releases it.
func (s *Store) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, ".gc.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open gc lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}
