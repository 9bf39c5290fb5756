package guestinit

import (
	"fmt"
	"os"
	"os/exec"
)

// SSHDPath is the OpenSSH server of the ssh image profile.
const SSHDPath = "/usr/sbin/sshd"

// StartSSHD starts the image's sshd in the foreground (-D), logging to
// standard error (-e), which is the console. The caller owns the process
// and must reap it, as PID 1 reaps every orphan.
func StartSSHD() (*os.Process, error) {
	// sshd's privilege separation directory. /run is on the overlay.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(SSHDPath, "-D", "-e")
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w: is this an ssh profile image?", SSHDPath, err)
	}
	return cmd.Process, nil
}
