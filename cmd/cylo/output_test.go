package main

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/cylo-dev/cylo"
)

func TestParseSize(t *testing.T) {
	cases := map[string]int64{"65536": 65536, "512MiB": 512 << 20, "1G": 1 << 30, "4 KiB": 4096, "10B": 10, "2M": 2 << 20}
	for in, want := range cases {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "lots", "-1M", "1.5G", "99999999999999999999"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

func TestJSONResultEncodesAnyBytes(t *testing.T) {
	r := &cylo.Result{ExitCode: 3, Stdout: []byte("héllo\n"), Stderr: []byte{0xff, 0x00, 'x'}}
	var buf bytes.Buffer
	if err := writeJSONResult(&buf, r); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("output is not JSON: %v", err)
	}
	if got["stdout"] != "héllo\n" || got["stdout_encoding"] != "utf-8" {
		t.Errorf("stdout %q (%v), want the text as utf-8", got["stdout"], got["stdout_encoding"])
	}
	if got["stderr"] != "/wB4" || got["stderr_encoding"] != "base64" {
		t.Errorf("stderr %q (%v), want base64 of ff 00 78", got["stderr"], got["stderr_encoding"])
	}
	if got["exit_code"] != float64(3) {
		t.Errorf("exit_code %v, want 3", got["exit_code"])
	}
}
