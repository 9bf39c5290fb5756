package vmstate

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// StartTime returns the start time of process pid, in clock ticks after
// boot, from field 22 of /proc/PID/stat. Together with the pid it names a
// process uniquely, because a recycled pid gets a later start time.
func StartTime(pid int) (uint64, error) {
	start, _, err := readStat(pid)
	return start, err
}

// readStat returns field 22 (starttime) and field 3 (state) of
// /proc/PID/stat.
func readStat(pid int) (start uint64, state byte, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}

	// Field 2, the command name, is in parentheses and may contain spaces
	// or parentheses itself, so the fields after it are found from the
	// last ')'.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: no ')' after the command name", pid)
	}
	fields := strings.Fields(string(data[end+1:]))
	// fields[0] is field 3 (state), so field N is fields[N-3].
	if len(fields) < 22-3+1 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %d fields after the command name, want at least 20", pid, len(fields))
	}
	start, err = strconv.ParseUint(fields[22-3], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat field 22: %w", pid, err)
	}
	return start, fields[0][0], nil
}

// Alive reports whether the process pid exists, is not a zombie and
// started at start (a StartTime value). A zero start matches any start
// time, so callers that must not act on a recycled pid pass a real one.
func Alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got, state, err := readStat(pid)
	if err != nil {
		return false
	}
	if state == 'Z' || state == 'X' {
		return false
	}
	return start == 0 || got == start
}
