package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Client talks to one Firecracker process over its API socket. It is safe
// for concurrent use, though Firecracker serves one request at a time.
type Client struct {
	http   *http.Client
	logger *slog.Logger
}

// NewClient returns a client for the API socket at path. A nil logger
// discards.
func NewClient(path string, logger *slog.Logger) *Client {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    1,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{http: &http.Client{Transport: transport}, logger: logger}
}

// Close closes idle connections to the socket.
func (c *Client) Close() {
	c.http.CloseIdleConnections()
}

// APIError is an error response from Firecracker to one request.
// FaultMessage is Firecracker's fault_message, unchanged.
type APIError struct {
	Method       string
	Path         string
	StatusCode   int
	FaultMessage string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker rejected %s %s (HTTP %d): %s", e.Method, e.Path, e.StatusCode, e.FaultMessage)
}

// InstanceInfo is the body of GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// DescribeInstance sends GET /.
func (c *Client) DescribeInstance(ctx context.Context) (*InstanceInfo, error) {
	var info InstanceInfo
	if err := c.do(ctx, http.MethodGet, "/", nil, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// Put sends PUT path with body encoded as JSON and expects 204.
func (c *Client) Put(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPut, path, body, nil)
}

// Action sends PUT /actions with the given action_type (InstanceStart,
// FlushMetrics or SendCtrlAltDel).
func (c *Client) Action(ctx context.Context, actionType string) error {
	return c.Put(ctx, "/actions", actionBody{ActionType: actionType})
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	var payload []byte
	if in != nil {
		var err error
		payload, err = json.Marshal(in)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode body: %w", method, path, err)
		}
		body = bytes.NewReader(payload)
	}

	// The host part is not used: the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read response: %w", method, path, err)
	}
	c.logger.Debug("firecracker api", "method", method, "path", path, "body", string(payload),
		"status", resp.StatusCode, "duration", time.Since(start))

	if resp.StatusCode >= 300 {
		return &APIError{Method: method, Path: path, StatusCode: resp.StatusCode, FaultMessage: faultMessage(data)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode response %q: %w", method, path, data, err)
		}
	}
	return nil
}

// faultMessage extracts fault_message from an error body, or returns the
// body itself when it has another shape.
func faultMessage(body []byte) string {
	var e struct {
		FaultMessage *string `json:"fault_message"`
	}
	if json.Unmarshal(body, &e) == nil && e.FaultMessage != nil {
		return *e.FaultMessage
	}
	if len(body) == 0 {
		return "(empty response body)"
	}
	return strings.TrimSpace(string(body))
}

// version is a parsed Firecracker release number.
type version struct{ major, minor, patch int }

func (v version) atLeast(major, minor int) bool {
	return v.major > major || v.major == major && v.minor >= minor
}

// parseVersion parses "1.16.1", "v1.16.1" or "1.16.1-dev".
func parseVersion(s string) (version, error) {
	core := strings.TrimPrefix(strings.TrimSpace(s), "v")
	if i := strings.IndexAny(core, "-+ "); i >= 0 {
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return version{}, fmt.Errorf("invalid firecracker version %q: want MAJOR.MINOR.PATCH", s)
	}
	var nums [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return version{}, fmt.Errorf("invalid firecracker version %q: want MAJOR.MINOR.PATCH", s)
		}
		nums[i] = n
	}
	return version{nums[0], nums[1], nums[2]}, nil
}

// Request bodies of the API calls the driver makes, with the field names
// of the v1.16.1 API definition.
type (
	actionBody struct {
		ActionType string `json:"action_type"`
	}
	loggerBody struct {
		LogPath   string `json:"log_path"`
		Level     string `json:"level"`
		ShowLevel bool   `json:"show_level"`
	}
	metricsBody struct {
		MetricsPath string `json:"metrics_path"`
	}
	machineConfigBody struct {
		VCPUCount  int `json:"vcpu_count"`
		MemSizeMiB int `json:"mem_size_mib"`
	}
	bootSourceBody struct {
		KernelImagePath string `json:"kernel_image_path"`
		InitrdPath      string `json:"initrd_path,omitempty"`
		BootArgs        string `json:"boot_args"`
	}
	driveBody struct {
		DriveID      string `json:"drive_id"`
		PathOnHost   string `json:"path_on_host"`
		IsRootDevice bool   `json:"is_root_device"`
		IsReadOnly   bool   `json:"is_read_only"`
	}
	vsockBody struct {
		GuestCID int    `json:"guest_cid"`
		UDSPath  string `json:"uds_path"`
	}
	networkInterfaceBody struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
		GuestMAC    string `json:"guest_mac,omitempty"`
	}
	entropyBody struct{}
)
