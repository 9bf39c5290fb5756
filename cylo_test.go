package cylo

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateRejects(t *testing.T) {
	cases := []struct {
		name string
		req  Request
		want string
	}{
		{"unknown language", Request{Language: "cobol"}, `unknown language "cobol"`},
		{"invalid env name", Request{Language: Bash, Env: map[string]string{"A-B": "x"}}, `invalid environment variable name "A-B"`},
		{"env name starting with digit", Request{Language: Bash, Env: map[string]string{"1A": "x"}}, `"1A"`},
		{"absolute file path", Request{Language: Bash, Files: map[string][]byte{"/etc/x": nil}}, `file "/etc/x"`},
		{"file path with dot dot", Request{Language: Bash, Files: map[string][]byte{"a/../../x": nil}}, `must not contain ..`},
		{"relative dir", Request{Language: Bash, Dir: "work"}, `working directory "work"`},
		{"negative timeout", Request{Language: Bash, Timeout: -time.Second}, "timeout is negative"},
		{"tiny memory", Request{Language: Bash, Limits: Limits{MemoryBytes: 1 << 20}}, "below the minimum of 16 MiB"},
		{"too many vcpus", Request{Language: Bash, Limits: Limits{VCPUs: 64}}, "above the maximum of 32"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.req.Validate()
			if err == nil {
				t.Fatal("Validate accepted the request")
			}
			if !errors.Is(err, ErrInvalidRequest) {
				t.Errorf("error %v does not wrap ErrInvalidRequest", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestWithDefaultsFillsZeroFields(t *testing.T) {
	req := &Request{Language: Python, Limits: Limits{MemoryBytes: 64 << 20}}
	full, err := req.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if full.Dir != "/work" || full.Timeout != DefaultTimeout {
		t.Errorf("dir %q timeout %s, want /work and %s", full.Dir, full.Timeout, DefaultTimeout)
	}
	l := full.Limits
	if l.MemoryBytes != 64<<20 {
		t.Errorf("memory %d, want the request's 64 MiB kept", l.MemoryBytes)
	}
	if l.VCPUs != DefaultVCPUs || l.MaxProcesses != DefaultMaxProcesses || l.MaxOutputBytes != DefaultMaxOutputBytes || l.DiskBytes != DefaultDiskBytes {
		t.Errorf("limits %+v, want defaults for the zero fields", l)
	}
	if req.Dir != "" {
		t.Error("WithDefaults changed the caller's request")
	}
}

func TestLanguageForFile(t *testing.T) {
	cases := map[string]Language{"a.py": Python, "x/b.SH": Bash, "c.js": JavaScript, "main.go": Go, "m.rs": Rust}
	for name, want := range cases {
		got, err := LanguageForFile(name)
		if err != nil || got != want {
			t.Errorf("LanguageForFile(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := LanguageForFile("notes.txt"); err == nil || !strings.Contains(err.Error(), "--lang") {
		t.Errorf("LanguageForFile(notes.txt) error = %v, want one naming --lang", err)
	}
}
