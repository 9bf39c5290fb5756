package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// Offsets in the x86 boot protocol header of a bzImage
// (Documentation/arch/x86/boot.rst in the Linux sources).
const (
	setupSectsOffset    = 0x1f1 // number of 512-byte setup sectors after the boot sector
	headerMagicOffset   = 0x202 // "HdrS"
	protocolOffset      = 0x206 // boot protocol version
	payloadOffsetOffset = 0x248 // payload offset from the start of the protected-mode code (protocol 2.08+)
	payloadLengthOffset = 0x24c // payload length in bytes (protocol 2.08+)
)

var (
	lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}
	elfMagic       = []byte{0x7f, 'E', 'L', 'F'}
)

// maxLegacyBlock is the uncompressed size of every block of an LZ4 legacy
// frame except the last one.
const maxLegacyBlock = 8 << 20

// ExtractVMLinux decompresses the ELF kernel (vmlinux) from a bzImage whose
// payload is LZ4 legacy compressed, the format of Debian's cloud kernels.
// Firecracker boots only the ELF form on x86_64.
func ExtractVMLinux(bzImage []byte) ([]byte, error) {
	payload, err := bzImagePayload(bzImage)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(payload, lz4LegacyMagic) {
		return nil, fmt.Errorf("bzImage payload starts with % x, not the LZ4 legacy magic % x: only LZ4 compressed kernels are supported", payload[:min(4, len(payload))], lz4LegacyMagic)
	}

	elf, err := decompressLZ4Legacy(payload)
	if err != nil {
		return nil, fmt.Errorf("decompress bzImage payload: %w", err)
	}
	if !bytes.HasPrefix(elf, elfMagic) {
		return nil, fmt.Errorf("decompressed bzImage payload starts with % x, not the ELF magic", elf[:min(4, len(elf))])
	}
	return elf, nil
}

// bzImagePayload returns the compressed kernel inside a bzImage, located
// through the boot protocol header.
func bzImagePayload(bzImage []byte) ([]byte, error) {
	if len(bzImage) < payloadLengthOffset+4 || string(bzImage[headerMagicOffset:headerMagicOffset+4]) != "HdrS" {
		return nil, errors.New("not a bzImage: boot protocol header magic HdrS not found")
	}
	protocol := binary.LittleEndian.Uint16(bzImage[protocolOffset:])
	if protocol < 0x208 {
		return nil, fmt.Errorf("bzImage boot protocol %#x has no payload fields: 0x208 or later is required", protocol)
	}

	setupSects := int(bzImage[setupSectsOffset])
	if setupSects == 0 {
		setupSects = 4 // the boot protocol's rule for old kernels
	}
	protectedMode := (setupSects + 1) * 512
	offset := protectedMode + int(binary.LittleEndian.Uint32(bzImage[payloadOffsetOffset:]))
	length := int(binary.LittleEndian.Uint32(bzImage[payloadLengthOffset:]))
	if offset < protectedMode || length <= 0 || offset+length > len(bzImage) {
		return nil, fmt.Errorf("bzImage payload at offset %d, length %d lies outside the %d-byte file", offset, length, len(bzImage))
	}
	return bzImage[offset : offset+length], nil
}

// decompressLZ4Legacy decodes an LZ4 legacy frame as the kernel writes it:
// the magic, then blocks that each start with their little-endian 32-bit
// compressed size, then (kernel-specific) the 32-bit uncompressed size of
// the whole output. Every block but the last decodes to exactly 8 MiB.
func decompressLZ4Legacy(frame []byte) ([]byte, error) {
	src := frame[len(lz4LegacyMagic):]
	var total uint32
	if len(src) >= 4 {
		total = binary.LittleEndian.Uint32(src[len(src)-4:])
	}

	out := make([]byte, 0, total)
	block := make([]byte, maxLegacyBlock)
	for len(src) >= 4 {
		size := binary.LittleEndian.Uint32(src)
		// NOTE: the trailer that holds the uncompressed size has no marker.
		// It is the last 4 bytes, so a 4-byte remainder ends the frame.
		if len(src) == 4 {
			break
		}
		src = src[4:]
		if size == 0 || int64(size) > int64(len(src)) {
			return nil, fmt.Errorf("block of %d bytes overruns the %d bytes left in the frame", size, len(src))
		}
		n, err := lz4.UncompressBlock(src[:size], block)
		if err != nil {
			return nil, fmt.Errorf("block at output offset %d: %w", len(out), err)
		}
		out = append(out, block[:n]...)
		src = src[size:]
	}
	if len(src) != 0 && len(src) != 4 {
		return nil, fmt.Errorf("%d trailing bytes after the last block: %w", len(src), io.ErrUnexpectedEOF)
	}
	if total != 0 && uint32(len(out)) != total {
		return nil, fmt.Errorf("decompressed %d bytes, but the trailer records %d", len(out), total)
	}
	return out, nil
}
