package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/cylo-dev/cylo"
)

// jsonResult is the --json output: the Result with its output bytes
// encoded so that any bytes survive. Each stream is a string in
// stdout/stderr whose encoding is named in stdout_encoding and
// stderr_encoding: "utf-8" when the bytes are valid UTF-8 (the text as is),
// else "base64" (standard encoding with padding).
type jsonResult struct {
	*cylo.Result
	Stdout         string `json:"stdout"`
	StdoutEncoding string `json:"stdout_encoding"`
	Stderr         string `json:"stderr"`
	StderrEncoding string `json:"stderr_encoding"`
}

func writeJSONResult(w io.Writer, r *cylo.Result) error {
	out := jsonResult{Result: r}
	out.Stdout, out.StdoutEncoding = encodeOutput(r.Stdout)
	out.Stderr, out.StderrEncoding = encodeOutput(r.Stderr)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func encodeOutput(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), "utf-8"
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

// parseSize parses a byte count: a number with an optional unit K, M, G
// (powers of 1024, also written KiB, MiB, GiB) or B.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		factor int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
	}
	factor := int64(1)
	number := strings.TrimSpace(s)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(number, u.suffix); ok {
			number, factor = strings.TrimSpace(rest), u.factor
			break
		}
	}
	n, err := strconv.ParseInt(number, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("want a byte count such as 512MiB, 1GiB or 65536")
	}
	if n > (1<<62)/factor {
		return 0, fmt.Errorf("too large")
	}
	return n * factor, nil
}

// formatSize prints n bytes in the largest binary unit that divides it.
func formatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
