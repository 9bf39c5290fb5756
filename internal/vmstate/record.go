package vmstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Record describes one VM that a cylo process started, with everything GC
// needs to reclaim it after that process dies.
type Record struct {
	// ID is the VM id, 8 hex digits (see NewID). It names the record file.
	ID      string `json:"id"`
	Backend string `json:"backend"`
	// OwnerPID and OwnerStart name the cylo process that owns the VM.
	// OwnerStart is its StartTime, so a recycled pid is not taken for the
	// owner. While the owner lives, GC leaves the record alone.
	OwnerPID   int    `json:"owner_pid"`
	OwnerStart uint64 `json:"owner_start"`
	// VMMPID and VMMStart name the VMM process, which leads its own
	// process group. Zero means it has not started yet.
	VMMPID   int    `json:"vmm_pid,omitempty"`
	VMMStart uint64 `json:"vmm_start,omitempty"`
	// RuntimeDir is removed with everything in it.
	RuntimeDir string `json:"runtime_dir,omitempty"`
	// TAPDevices are deleted by name: inside NetNS when it is set, else in
	// the network namespace GC runs in.
	TAPDevices []string `json:"tap_devices,omitempty"`
	// NetNS is the named network namespace (/run/netns/NAME) that
	// contains the VM's TAP devices and VMM. GC removes it after the TAP
	// devices.
	NetNS string `json:"netns,omitempty"`
	// Paths are further files or directories outside RuntimeDir to remove,
	// such as a scratch disk.
	Paths   []string  `json:"paths,omitempty"`
	Created time.Time `json:"created"`
}

// Owned returns a Record for a VM owned by the calling process, with
// OwnerPID, OwnerStart and Created filled in.
func Owned(id, backend string) (Record, error) {
	pid := os.Getpid()
	start, err := StartTime(pid)
	if err != nil {
		return Record{}, fmt.Errorf("read own start time: %w", err)
	}
	return Record{ID: id, Backend: backend, OwnerPID: pid, OwnerStart: start, Created: time.Now().UTC()}, nil
}

// Store is a state directory of records. It is safe for concurrent use by
// goroutines and processes because each record is its own file, written
// by rename.
type Store struct {
	dir string
}

// Open returns the store in dir (Dir when dir is empty), creating the
// directory with mode 0700 if needed.
func Open(dir string) (*Store, error) {
	if dir == "" {
		dir = Dir()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir returns the directory of the store.
func (s *Store) Dir() string { return s.dir }

var validID = regexp.MustCompile(`^[0-9a-f]{8,32}$`)

// Register writes rec, replacing an earlier record with the same ID, so a
// driver registers once when it creates the runtime directory and again
// when the VMM has started.
func (s *Store) Register(rec Record) error {
	if !validID.MatchString(rec.ID) {
		return fmt.Errorf("register vm: invalid id %q: want 8 to 32 lowercase hex digits", rec.ID)
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("register vm %s: %w", rec.ID, err)
	}

	tmp, err := os.CreateTemp(s.dir, "."+rec.ID+".*.tmp")
	if err != nil {
		return fmt.Errorf("register vm %s: %w", rec.ID, err)
	}
	_, werr := tmp.Write(append(data, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("register vm %s: %w", rec.ID, err)
	}
	if err := os.Rename(tmp.Name(), s.path(rec.ID)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("register vm %s: %w", rec.ID, err)
	}
	return nil
}

// Remove deletes the record of VM id. A missing record is not an error.
func (s *Store) Remove(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("remove vm record: invalid id %q", id)
	}
	err := os.Remove(s.path(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove vm record %s: %w", id, err)
	}
	return nil
}

// List returns every record, oldest first. Files that do not parse are
// reported in the joined error and skipped.
func (s *Store) List() ([]Record, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list vm records: %w", err)
	}

	var recs []Record
	var errs []error
	for _, e := range entries {
		name := e.Name()
		id, ok := strings.CutSuffix(name, ".json")
		if !ok || !validID.MatchString(id) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since ReadDir
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read vm record %s: %w", id, err))
			continue
		}
		var rec Record
		if err := json.Unmarshal(data, &rec); err != nil {
			errs = append(errs, fmt.Errorf("parse vm record %s: %w", filepath.Join(s.dir, name), err))
			continue
		}
		if rec.ID != id {
			errs = append(errs, fmt.Errorf("vm record %s contains id %q: remove the file by hand", filepath.Join(s.dir, name), rec.ID))
			continue
		}
		recs = append(recs, rec)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Created.Before(recs[j].Created) })
	return recs, errors.Join(errs...)
}

func (s *Store) path(id string) string {
	return filepath.Join(s.dir, id+".json")
}
