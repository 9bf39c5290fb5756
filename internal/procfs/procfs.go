// Package procfs reads the few process and file facts drivers report: a
// process's resident set size and the tail of a log file.
package procfs

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"
)

// RSS returns the resident set size of process pid in bytes (VmRSS in
// /proc/PID/status), or 0 when it cannot be read.
func RSS(pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		rest, ok := strings.CutPrefix(scanner.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest) // "1234 kB"
		if len(fields) == 2 && fields[1] == "kB" {
			kib, _ := strconv.ParseInt(fields[0], 10, 64)
			return kib * 1024
		}
	}
	return 0
}

// tailBytes bounds how much of a file Tail reads.
const tailBytes = 64 << 10

// Tail returns the last n lines of the file at path, or "" when it cannot
// be read. Only the last 64 KiB are read, so a huge log costs nothing.
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > tailBytes {
		f.Seek(info.Size()-tailBytes, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	data = bytes.TrimRight(data, "\n")
	lines := bytes.Split(data, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
