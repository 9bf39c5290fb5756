package image

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// cpioWriter writes an uncompressed "newc" (SVR4, magic 070701) cpio
// archive, the format the kernel unpacks as an initramfs. The format is
// described in the kernel's Documentation/driver-api/early-userspace/
// buffer-format.rst. Entries are owned by root and dated at the epoch, so
// the same inputs give the same bytes.
type cpioWriter struct {
	w     io.Writer
	ino   uint32
	dirs  map[string]bool
	err   error
	count int64
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: w, ino: 1, dirs: map[string]bool{".": true, "/": true}}
}

// Mode bits of cpio entries, from the POSIX stat layout.
const (
	cpioDir  = 0o040000
	cpioFile = 0o100000
	cpioChar = 0o020000
)

// Dir adds a directory and any missing parents.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) {
	name = cpioName(name)
	if c.dirs[name] {
		return
	}
	if parent := path.Dir(name); parent != "." {
		c.Dir(parent, 0o755)
	}
	c.dirs[name] = true
	c.entry(name, cpioDir|uint32(perm.Perm()), 0, 0, 2, nil)
}

// File adds a regular file, creating missing parent directories.
func (c *cpioWriter) File(name string, perm fs.FileMode, data []byte) {
	name = cpioName(name)
	if parent := path.Dir(name); parent != "." {
		c.Dir(parent, 0o755)
	}
	c.entry(name, cpioFile|uint32(perm.Perm()), 0, 0, 1, data)
}

// CharDevice adds a character device node.
func (c *cpioWriter) CharDevice(name string, perm fs.FileMode, major, minor uint32) {
	name = cpioName(name)
	if parent := path.Dir(name); parent != "." {
		c.Dir(parent, 0o755)
	}
	c.entry(name, cpioChar|uint32(perm.Perm()), major, minor, 1, nil)
}

// Close writes the trailer entry and returns the first write error.
func (c *cpioWriter) Close() error {
	c.entry("TRAILER!!!", 0, 0, 0, 1, nil)
	return c.err
}

func (c *cpioWriter) entry(name string, mode, rdevMajor, rdevMinor, nlink uint32, data []byte) {
	if c.err != nil {
		return
	}
	ino := c.ino
	c.ino++
	// Fields in order: ino, mode, uid, gid, nlink, mtime, filesize,
	// devmajor, devminor, rdevmajor, rdevminor, namesize (with the NUL),
	// check. All are 8 hex digits.
	header := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(header))
	c.write([]byte(name + "\x00"))
	c.pad()
	c.write(data)
	c.pad()
}

// pad aligns the archive to 4 bytes, as newc requires after the name and
// after the data.
func (c *cpioWriter) pad() {
	if n := c.count % 4; n != 0 {
		c.write(make([]byte, 4-n))
	}
}

func (c *cpioWriter) write(p []byte) {
	if c.err != nil || len(p) == 0 {
		return
	}
	n, err := c.w.Write(p)
	c.count += int64(n)
	c.err = err
}

// cpioName turns an absolute guest path into the relative name an
// initramfs archive uses.
func cpioName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}
