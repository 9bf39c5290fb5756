package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestNewScratchDisk(t *testing.T) {
	if _, err := findTool("mkfs.ext4"); err != nil {
		t.Skip(err)
	}
	path := filepath.Join(t.TempDir(), "scratch.ext4")
	const size = 512 << 20

	start := time.Now()
	if err := NewScratchDisk(path, size); err != nil {
		t.Fatal(err)
	}
	t.Logf("512 MiB scratch disk created in %v", time.Since(start))

	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Errorf("size = %d, want %d", st.Size, size)
	}
	if allocated := st.Blocks * 512; allocated > 64<<20 {
		t.Errorf("%d bytes allocated, want a sparse file under 64 MiB", allocated)
	}
	if st.Mode&0o777 != 0o600 {
		t.Errorf("mode = %o, want 600", st.Mode&0o777)
	}

	dumpe2fs, err := findTool("dumpe2fs")
	if err != nil {
		t.Skip(err)
	}
	out, err := exec.Command(dumpe2fs, "-h", path).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	header := string(out)
	if !strings.Contains(header, "cylo-scratch") {
		t.Errorf("dumpe2fs shows no volume name cylo-scratch:\n%s", header)
	}
	if strings.Contains(header, "has_journal") {
		t.Errorf("scratch disk has a journal:\n%s", header)
	}
}

func TestNewScratchDiskErrors(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "exists")
	if err := os.WriteFile(existing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		size    int64
		wantErr string
	}{
		{"too small", filepath.Join(dir, "small"), 1 << 20, "below the minimum"},
		{"exists", existing, 64 << 20, "file exists"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := NewScratchDisk(tt.path, tt.size)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
