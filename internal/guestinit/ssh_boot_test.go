package guestinit_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cylo-dev/cylo/internal/image"
)

// TestBootSSH boots the ssh profile with cylo.mode=ssh and a static
// address, and runs a command over SSH with the host key pinned to the
// one the image builder recorded. QEMU's user network is restricted, so
// the guest reaches nothing; the only path in is the loopback forward.
func TestBootSSH(t *testing.T) {
	if os.Getenv("CYLO_VM_TESTS") != "1" {
		t.Skip("boots a real VM and may build an image (about a minute, as root, needs the Debian mirror): set CYLO_VM_TESTS=1 to run")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not found: install the Debian package qemu-system-x86")
	}

	img := buildTestImage(t, image.ProfileSSH)
	if img.HostKeyPub == "" || img.ClientKey == "" || !strings.HasPrefix(img.HostKeyFingerprint, "SHA256:") {
		t.Fatalf("ssh image lacks key data: %+v", img)
	}
	scratch := filepath.Join(t.TempDir(), "scratch.ext4")
	if err := image.NewScratchDisk(scratch, 512<<20); err != nil {
		t.Fatal(err)
	}
	port := freeLoopbackPort(t)

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	args := qemuArgs(t, img, scratch, "cylo.root=/dev/vda cylo.scratch=/dev/vdb cylo.mode=ssh cylo.ip=10.0.2.15/24 cylo.gw=10.0.2.2")
	args = append(args,
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", port),
		"-device", "virtio-net-device,netdev=n0")
	out := &consoleRecorder{start: time.Now()}
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			console, _ := out.snapshot()
			t.Logf("console:\n%s", tailLines(console, 60))
		}
	}()

	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(img.HostKeyPub))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(img.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	config := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey),
		Timeout:         5 * time.Second,
	}

	client := dialSSH(ctx, t, fmt.Sprintf("127.0.0.1:%d", port), config, out)
	defer client.Close()
	t.Logf("QEMU start to SSH session: %v", time.Since(out.start))

	session, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	var stdout bytes.Buffer
	session.Stdout = &stdout
	if err := session.Run("python3 -c 'print(6*7)'; ip -4 -o addr show eth0 2>/dev/null || cat /proc/net/route"); err != nil {
		t.Fatalf("run over SSH: %v (output %q)", err, stdout.String())
	}
	if !strings.HasPrefix(stdout.String(), "42\n") {
		t.Errorf("output = %q, want it to start with 42", stdout.String())
	}
	if !strings.Contains(stdout.String(), "10.0.2.15") && !strings.Contains(stdout.String(), "eth0\t00000000\t0202000A") {
		t.Errorf("output shows neither the address nor the default route: %q", stdout.String())
	}
}

// dialSSH retries until sshd in the guest accepts a session or ctx ends.
func dialSSH(ctx context.Context, t *testing.T, addr string, config *ssh.ClientConfig, console *consoleRecorder) *ssh.Client {
	t.Helper()
	for {
		client, err := ssh.Dial("tcp", addr, config)
		if err == nil {
			return client
		}
		if strings.Contains(err.Error(), "host key mismatch") || strings.Contains(err.Error(), "unable to authenticate") {
			t.Fatalf("SSH to %s: %v", addr, err)
		}
		text, _ := console.snapshot()
		if strings.Contains(text, "cylo-boot-failed") || strings.Contains(text, "cylo-sshd-failed") || strings.Contains(text, "cylo-sshd-exited") {
			t.Fatalf("guest failed before SSH came up")
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no SSH session on %s within %v: last error: %v", addr, bootTimeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
