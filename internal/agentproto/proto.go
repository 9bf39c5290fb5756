// Package agentproto is the protocol between cylo on the host and the guest
// agent: HTTP/2 without TLS over one byte stream (a virtio-serial port, a
// vsock connection or a Unix socket). HTTP/2 gives full-duplex streams, so
// stdin flows to the guest while stdout and stderr flow back on the same
// request, and several requests can share the one stream.
//
// An exec request body and its response body are sequences of frames (see
// WriteFrame). The request starts with a FrameSpec holding an ExecSpec as
// JSON, then FrameStdin frames and one FrameStdinEOF. The response carries
// FrameStdout and FrameStderr frames in the order the program wrote them and
// ends with one FrameExit holding an ExitStatus as JSON.
package agentproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version. The agent reports it in Health, and the
// host rejects an agent whose version differs.
const Version = 1

// Paths served by the agent.
const (
	PathHealth   = "/v1/health"
	PathSync     = "/v1/sync"
	PathExec     = "/v1/exec"
	PathShutdown = "/v1/shutdown"
)

// VsockPort is the AF_VSOCK port the agent listens on.
const VsockPort = 1024

// SerialPortName is the virtio-serial port name the agent opens.
const SerialPortName = "cylo.agent.0"

// Health is the body of GET /v1/health.
type Health struct {
	Protocol     int    `json:"protocol"`
	AgentVersion string `json:"agent_version"`
	Kernel       string `json:"kernel"`
	// Cgroups reports whether runs get their own cgroup v2 with the memory
	// and pids controllers. Without it (a host-process agent on a host
	// without cgroup v2 controllers) memory and process limits are not
	// enforced.
	Cgroups      bool  `json:"cgroups"`
	UptimeMillis int64 `json:"uptime_ms"`
	// RSSBytes is the agent process's resident set size when it served this request.
	// Agents built before this field existed leave it out, so zero means
	// unknown.
	RSSBytes int64 `json:"rss_bytes,omitempty"`
}

// Sync is the body of POST /v1/sync, sent once after boot: the host's
// clock and a seed for the guest's entropy pool.
type Sync struct {
	UnixNanos int64  `json:"unix_ns"`
	Seed      []byte `json:"seed"`
}

// File is a file the agent writes before the run.
type File struct {
	Path string `json:"path"` // absolute, or relative to ExecSpec.Dir
	Data []byte `json:"data"`
	Mode uint32 `json:"mode"` // permission bits; 0 means 0644
}

// ExecSpec describes one run.
type ExecSpec struct {
	Argv  []string `json:"argv"`
	Env   []string `json:"env"` // KEY=VALUE, the whole environment
	Dir   string   `json:"dir"`
	Files []File   `json:"files"`

	TimeoutMillis  int64 `json:"timeout_ms"`
	MemoryBytes    int64 `json:"memory_bytes"`
	MaxProcesses   int64 `json:"max_processes"`
	MaxOutputBytes int64 `json:"max_output_bytes"`
}

// ExitStatus is the end of a run as the agent measured it.
type ExitStatus struct {
	ExitCode int `json:"exit_code"`
	Signal   int `json:"signal,omitempty"`
	// Limit is the limit that ended the run: "timeout", "memory", "output",
	// "pids" or empty.
	Limit     string `json:"limit,omitempty"`
	Truncated bool   `json:"truncated,omitempty"`

	WallNanos       int64 `json:"wall_ns"`
	CPUUserNanos    int64 `json:"cpu_user_ns"`
	CPUSystemNanos  int64 `json:"cpu_system_ns"`
	PeakMemoryBytes int64 `json:"peak_memory_bytes"`

	// Error is set when the program could not be started; ExitCode is
	// then 127 or 126 as a shell would report it.
	Error string `json:"error,omitempty"`
}

// Frame types.
const (
	FrameSpec     byte = 'S'
	FrameStdin    byte = 'I'
	FrameStdinEOF byte = 'E'
	FrameStdout   byte = 'O'
	FrameStderr   byte = 'R'
	FrameExit     byte = 'X'
)

// MaxFrameSize bounds one frame's payload. A spec with large files is the
// largest frame.
const MaxFrameSize = 64 << 20

// MaxDataChunk is the largest stdin or output chunk a writer puts in one
// frame.
const MaxDataChunk = 32 << 10

// WriteFrame writes one frame: a type byte, the payload length as a
// big-endian uint32 and the payload.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFrameSize {
		return fmt.Errorf("frame of %d bytes exceeds the maximum of %d", len(payload), MaxFrameSize)
	}
	var header [5]byte
	header[0] = typ
	binary.BigEndian.PutUint32(header[1:], uint32(len(payload)))
	if _, err := w.Write(header[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ErrFrameTooLarge is returned by ReadFrame for a length above MaxFrameSize.
var ErrFrameTooLarge = errors.New("agentproto: frame exceeds the maximum size")

// ReadFrame reads one frame. It returns io.EOF only when the stream ends
// cleanly between frames.
func ReadFrame(r io.Reader) (typ byte, payload []byte, err error) {
	var header [5]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("agentproto: truncated frame header: %w", err)
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(header[1:])
	if n > MaxFrameSize {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("agentproto: truncated frame payload: %w", err)
	}
	return header[0], payload, nil
}
