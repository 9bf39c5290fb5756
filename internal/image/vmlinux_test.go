package image

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// legacyFrame compresses data into LZ4 legacy blocks the way the kernel's
// build does, trailer included.
func legacyFrame(t *testing.T, data []byte) []byte {
	t.Helper()
	frame := append([]byte{}, lz4LegacyMagic...)
	for off := 0; off < len(data); off += maxLegacyBlock {
		chunk := data[off:min(off+maxLegacyBlock, len(data))]
		dst := make([]byte, lz4.CompressBlockBound(len(chunk)))
		n, err := lz4.CompressBlock(chunk, dst, nil)
		if err != nil || n == 0 {
			t.Fatalf("CompressBlock: n=%d err=%v", n, err)
		}
		frame = binary.LittleEndian.AppendUint32(frame, uint32(n))
		frame = append(frame, dst[:n]...)
	}
	return binary.LittleEndian.AppendUint32(frame, uint32(len(data)))
}

// fakeBzImage wraps payload in a minimal boot protocol 2.15 header.
func fakeBzImage(payload []byte) []byte {
	const setupSects = 3
	img := make([]byte, (setupSects+1)*512+100)
	img[setupSectsOffset] = setupSects
	copy(img[headerMagicOffset:], "HdrS")
	binary.LittleEndian.PutUint16(img[protocolOffset:], 0x20f)
	binary.LittleEndian.PutUint32(img[payloadOffsetOffset:], 100)
	binary.LittleEndian.PutUint32(img[payloadLengthOffset:], uint32(len(payload)))
	return append(img, append(payload, "trailing setup data"...)...)
}

func TestExtractVMLinuxSynthetic(t *testing.T) {
	// Two full blocks and a partial one, so the block loop and the trailer
	// check both run.
	elf := append([]byte{}, elfMagic...)
	elf = append(elf, bytes.Repeat([]byte("kernel text "), (2*maxLegacyBlock+1000)/12)...)

	got, err := ExtractVMLinux(fakeBzImage(legacyFrame(t, elf)))
	if err != nil {
		t.Fatalf("ExtractVMLinux: %v", err)
	}
	if !bytes.Equal(got, elf) {
		t.Fatalf("output differs from the input: %d bytes, want %d", len(got), len(elf))
	}
}

func TestExtractVMLinuxErrors(t *testing.T) {
	notELF := fakeBzImage(legacyFrame(t, []byte("MZ not an elf file")))
	gzipPayload := fakeBzImage([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0})
	truncated := fakeBzImage(legacyFrame(t, append(append([]byte{}, elfMagic...), make([]byte, 5000)...)))
	binary.LittleEndian.PutUint32(truncated[payloadLengthOffset:], 20)

	tests := []struct {
		name    string
		image   []byte
		wantErr string
	}{
		{"empty", nil, "not a bzImage"},
		{"not elf", notELF, "not the ELF magic"},
		{"gzip payload", gzipPayload, "not the LZ4 legacy magic"},
		{"truncated block", truncated, "overruns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ExtractVMLinux(tt.image)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestExtractVMLinuxDebian runs on a real Debian kernel when
// CYLO_TEST_BZIMAGE names one.
func TestExtractVMLinuxDebian(t *testing.T) {
	path := os.Getenv("CYLO_TEST_BZIMAGE")
	if path == "" {
		matches, _ := filepath.Glob("/boot/vmlinuz-*-cloud-amd64")
		if cache, err := DefaultCacheDir(); err == nil {
			// Kernels that cylo image build downloaded.
			cached, _ := filepath.Glob(filepath.Join(cache, "kernel-*", "vmlinuz"))
			matches = append(matches, cached...)
		}
		if len(matches) == 0 {
			t.Skip("no cloud kernel found: build an image (cylo image build) or set CYLO_TEST_BZIMAGE=/path/to/vmlinuz-*-cloud-amd64")
		}
		path = matches[0]
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	elf, err := ExtractVMLinux(data)
	if err != nil {
		t.Fatalf("ExtractVMLinux(%s): %v", path, err)
	}
	// e_type 2 is ET_EXEC and e_machine 62 is x86-64.
	if elf[4] != 2 || binary.LittleEndian.Uint16(elf[16:]) != 2 || binary.LittleEndian.Uint16(elf[18:]) != 62 {
		t.Fatalf("%s: vmlinux is not a 64-bit x86-64 executable ELF: header % x", path, elf[:20])
	}
}
