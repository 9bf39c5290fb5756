package image

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCPIOWriterRoundTrip checks the archive with the cpio tool, which is
// an independent reader of the newc format.
func TestCPIOWriterRoundTrip(t *testing.T) {
	cpioBin, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed (Debian package cpio)")
	}

	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	w.File("/init", 0o755, []byte("#!/bin/sh\necho hi\n"))
	w.File("/etc/cylo/modules", 0o644, []byte("/lib/modules/x/a.ko\n"))
	w.File("/odd", 0o600, []byte("abc")) // length not a multiple of 4
	w.Dir("/proc", 0o555)
	w.CharDevice("/dev/console", 0o600, 5, 1)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}

	cmd := exec.Command(cpioBin, "-t", "-v", "--quiet")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	listing := string(out)
	for _, want := range []string{"-rwxr-xr-x", " init\n", "etc/cylo/modules", "drwxr-xr-x", " etc\n", "dr-xr-xr-x", " proc\n", "crw-------", "5,", "dev/console"} {
		if !strings.Contains(listing, want) {
			t.Errorf("listing lacks %q:\n%s", want, listing)
		}
	}

	dir := t.TempDir()
	cmd = exec.Command(cpioBin, "-i", "-d", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	for name, want := range map[string]string{"init": "#!/bin/sh\necho hi\n", "etc/cylo/modules": "/lib/modules/x/a.ko\n", "odd": "abc"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("read extracted %s: %v", name, err)
			continue
		}
		if string(got) != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}
