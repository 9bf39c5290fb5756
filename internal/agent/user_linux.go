package agent

import (
	"bytes"
	"fmt"
	"os"
)

// EnsureUser adds name with uid and gid to /etc/passwd and /etc/group when
// missing, and creates its home directory. Programs then have a user name
// (whoami, getpass) without the image having to create it.
func EnsureUser(name string, uid, gid uint32, home string) error {
	passwd := fmt.Sprintf("%s:x:%d:%d::%s:/bin/bash\n", name, uid, gid, home)
	group := fmt.Sprintf("%s:x:%d:\n", name, gid)
	for path, line := range map[string]string{"/etc/passwd": passwd, "/etc/group": group} {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if bytes.Contains(data, []byte("\n"+name+":")) || bytes.HasPrefix(data, []byte(name+":")) {
			continue
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		_, err = f.WriteString(line)
		f.Close()
		if err != nil {
			return fmt.Errorf("append to %s: %w", path, err)
		}
	}
	if err := os.MkdirAll(home, 0o755); err != nil {
		return fmt.Errorf("create home %s: %w", home, err)
	}
	return os.Chown(home, int(uid), int(gid))
}
