package image

import (
	"context"
	"fmt"
	"os"
)

// NewScratchDisk creates a sparse ext4 image of sizeBytes at path, the
// writable disk a single run gets for its overlay upper layer and /tmp.
// The file must not exist yet. The filesystem has no journal (a run's
// data does not outlive the run) and its inode tables are left
// uninitialized, so creation writes only a few MiB of metadata. The guest
// should mount it with the noinit_itable option, or the kernel zeroes the
// tables in the background and the sparse file grows.
func NewScratchDisk(path string, sizeBytes int64) error {
	const minSize = 16 << 20
	if sizeBytes < minSize {
		return fmt.Errorf("scratch disk size %d bytes is below the minimum of %d", sizeBytes, minSize)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create scratch disk: %w", err)
	}
	err = f.Truncate(sizeBytes)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("create scratch disk %s: %w", path, err)
	}

	_, err = runTool(context.Background(), "", "mkfs.ext4", "-q", "-F",
		"-L", "cylo-scratch",
		"-m", "0",
		"-O", "^has_journal",
		// Skip zeroing the inode tables and discarding the blocks: the
		// file is new and sparse, so it reads as zeros already.
		"-E", "lazy_itable_init=1,nodiscard,root_owner=0:0",
		path)
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("format scratch disk %s: %w", path, err)
	}
	return nil
}
