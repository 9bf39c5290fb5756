package fctest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
)

// Environment variables that configure the fake firecracker.
const (
	// EnvAgentBin is the cylo-agent binary that the fake starts on
	// InstanceStart. Unset means no agent: vsock connections are closed,
	// as Firecracker does while nothing listens in the guest.
	EnvAgentBin = "FCTEST_AGENT_BIN"
	// EnvAgentMode "silent" makes the fake acknowledge vsock CONNECT but
	// never forward a byte, like a guest agent that hangs.
	EnvAgentMode = "FCTEST_AGENT_MODE"
	// EnvRecord is the JSON-lines file where the fake records every
	// request. Unset means requests.jsonl beside the API socket.
	EnvRecord = "FCTEST_RECORD"
	// EnvVersion is the vmm_version the fake reports. Unset means the
	// version of the API definition.
	EnvVersion = "FCTEST_VERSION"
	// EnvReject is "METHOD PATH=fault message": the fake responds to
	// that request with 400 and the message.
	EnvReject = "FCTEST_REJECT"
	// EnvExitOn is "METHOD PATH=status", or "start=status": the fake
	// writes a line to stderr and exits with status on that request (or
	// before creating its API socket) without responding.
	EnvExitOn = "FCTEST_EXIT_ON"
	// EnvMetrics is a JSON object merged into every metrics line, such as
	// {"block":{"read_bytes":4096}}.
	EnvMetrics = "FCTEST_METRICS"
)

// RecordName is the default name of the request log beside the API socket.
const RecordName = "requests.jsonl"

// Request is one API request the fake received, with its response.
type Request struct {
	Method      string `json:"method"`
	Path        string `json:"path"`
	ContentType string `json:"content_type,omitempty"`
	Body        string `json:"body,omitempty"`
	Status      int    `json:"status"`
	Fault       string `json:"fault,omitempty"`
}

// ReadRequests parses the fake's request log at path.
func ReadRequests(path string) ([]Request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var reqs []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r Request
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return reqs, fmt.Errorf("parse %s line %d: %w", path, len(reqs)+1, err)
		}
		reqs = append(reqs, r)
	}
	return reqs, sc.Err()
}
