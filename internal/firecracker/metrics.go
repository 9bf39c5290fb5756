package firecracker

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// vmMetrics are the counters that cylo takes from Firecracker's metrics.
type vmMetrics struct {
	BlockReadBytes  int64
	BlockWriteBytes int64
	NetRxBytes      int64
	NetTxBytes      int64
	VCPUExits       int64
	Lines           int
}

// parseMetrics sums the metrics lines in r. Firecracker writes one JSON
// object per flush (every 60 s and on FlushMetrics), with keys documented
// in its metrics guide: "block" and "net" aggregate all drives and
// interfaces, and "vcpu" counts exits by kind (exit_io_in, exit_mmio_read
// and so on).
//
// NOTE: Firecracker 1.x reports these counters as the change since the
// previous flush, so the lines are summed. The metrics guide does not
// state this. It comes from Firecracker's SharedIncMetric type, and a
// Firecracker that reported running totals would be over-counted here.
func parseMetrics(r io.Reader) (vmMetrics, error) {
	var m vmMetrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var obj struct {
			Block map[string]json.RawMessage `json:"block"`
			Net   map[string]json.RawMessage `json:"net"`
			VCPU  map[string]json.RawMessage `json:"vcpu"`
		}
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			return m, fmt.Errorf("parse firecracker metrics line %d: %w", m.Lines+1, err)
		}
		m.Lines++
		m.BlockReadBytes += counter(obj.Block, "read_bytes")
		m.BlockWriteBytes += counter(obj.Block, "write_bytes")
		m.NetRxBytes += counter(obj.Net, "rx_bytes_count")
		m.NetTxBytes += counter(obj.Net, "tx_bytes_count")
		for name := range obj.VCPU {
			// exit_*_agg keys are latency objects, which counter skips.
			if strings.HasPrefix(name, "exit_") {
				m.VCPUExits += counter(obj.VCPU, name)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("read firecracker metrics: %w", err)
	}
	return m, nil
}

// counter returns the integer at key, or 0 when it is missing or not an
// integer.
func counter(group map[string]json.RawMessage, key string) int64 {
	var n int64
	if raw, ok := group[key]; ok && json.Unmarshal(raw, &n) == nil {
		return n
	}
	return 0
}
