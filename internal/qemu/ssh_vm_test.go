package qemu_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/image"
	"github.com/cylo-dev/cylo/internal/qemu"
	"github.com/cylo-dev/cylo/internal/sshexec"
	"github.com/cylo-dev/cylo/internal/vmnet"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// sshImage returns the built ssh profile image for CYLO_AGENT, or skips.
func sshImage(t *testing.T) *image.Image {
	t.Helper()
	if os.Getenv("CYLO_VM_TESTS") != "1" {
		t.Skip("boots real VMs: set CYLO_VM_TESTS=1 and CYLO_AGENT=bin/cylo-agent after cylo image build --profile ssh")
	}
	// CachedOnly writes a new initramfs when only the agent changed and
	// never runs debootstrap.
	img, err := image.Build(context.Background(), image.Options{Profile: image.ProfileSSH, AgentPath: os.Getenv("CYLO_AGENT"), CachedOnly: true})
	if err != nil {
		t.Fatalf("find the ssh image: %v", err)
	}
	return img
}

// sshDriver returns a driver with the ssh transport whose VM records go
// to a state directory of the test's own.
func sshDriver(t *testing.T, img *image.Image, network string, cfg sshexec.Config) (*qemu.Driver, *vmstate.Store) {
	t.Helper()
	store, err := vmstate.Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := qemu.New(qemu.Config{
		Kernel: img.Kernel, Initrd: img.Initrd, Rootfs: img.Rootfs,
		Accelerator: qemu.AccelTCG,
		Store:       store,
		BootTimeout: 60 * time.Second,
		Transport:   cylo.TransportSSH,
		Network:     network,
		SSH:         cfg,
	})
	if err != nil {
		t.Fatalf("qemu.New: %v", err)
	}
	return d, store
}

// checkNoLeftovers fails when a VM record, runtime directory or network
// namespace of the test's runs remains.
func checkNoLeftovers(t *testing.T, store *vmstate.Store, nsBefore []string) {
	t.Helper()
	recs, err := store.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		t.Errorf("vm record left behind: %+v", r)
	}
	nsAfter, _ := filepath.Glob("/run/netns/cylo-*")
	for _, ns := range nsAfter {
		if !contains(nsBefore, ns) {
			t.Errorf("network namespace %s left behind", ns)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// serveAgent runs an SSH agent holding the key at keyPath on a socket in
// a test directory and points SSH_AUTH_SOCK at it.
func serveAgent(t *testing.T, keyPath string) {
	t.Helper()
	pem, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.ParseRawPrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: key}); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				agent.ServeAgent(keyring, conn)
			}()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)
}

// TestSSHTransport boots one real guest per case with QEMU (TCG) and the
// ssh image's OpenSSH, sequentially, because TCG guests are CPU-bound.
func TestSSHTransport(t *testing.T) {
	img := sshImage(t)
	_, otherKey, err := newKeyLine()
	if err != nil {
		t.Fatal(err)
	}
	wrongKey := filepath.Join(t.TempDir(), "wrong_id")
	if err := os.WriteFile(wrongKey, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	otherHostKey, _, err := newKeyLine()
	if err != nil {
		t.Fatal(err)
	}
	pinned := sshexec.Config{HostKey: img.HostKeyPub}
	// 3.5 MB in all, below the default output limit of 4 MiB.
	big := `head -c 2000000 /dev/zero | tr '\0' o & head -c 1500000 /dev/zero | tr '\0' e >&2 & wait; exit 3`

	cases := []struct {
		name    string
		network string
		cfg     sshexec.Config
		agent   bool
		code    string
		check   func(t *testing.T, res *cylo.Result, err error)
	}{
		{"key auth", vmnet.ModeUser, withKey(pinned, img.ClientKey), false, "echo out; echo err >&2; exit 5",
			func(t *testing.T, res *cylo.Result, err error) {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" || res.ExitCode != 5 {
					t.Errorf("stdout %q, stderr %q, exit %d; want out, err, 5", res.Stdout, res.Stderr, res.ExitCode)
				}
				if res.Metadata.Transport != "ssh" {
					t.Errorf("transport = %q, want ssh", res.Metadata.Transport)
				}
				if res.Usage.VMMRSSBytes == 0 {
					t.Error("vmm rss is 0")
				}
			}},
		{"large output both streams", vmnet.ModeUser, withKey(pinned, img.ClientKey), false, big,
			func(t *testing.T, res *cylo.Result, err error) {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if len(res.Stdout) != 2000000 || len(bytes.Trim(res.Stdout, "o")) != 0 {
					t.Errorf("stdout has %d bytes, want 2000000 times o", len(res.Stdout))
				}
				if len(res.Stderr) != 1500000 || len(bytes.Trim(res.Stderr, "e")) != 0 {
					t.Errorf("stderr has %d bytes, want 1500000 times e", len(res.Stderr))
				}
				if res.ExitCode != 3 || res.Truncated {
					t.Errorf("exit %d, truncated %v; want 3, false", res.ExitCode, res.Truncated)
				}
			}},
		{"password auth", vmnet.ModeUser, sshexec.Config{HostKey: img.HostKeyPub, Password: img.RootPassword}, false, "id -un",
			func(t *testing.T, res *cylo.Result, err error) {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if string(res.Stdout) != "root\n" {
					t.Errorf("stdout = %q, want root", res.Stdout)
				}
			}},
		{"agent auth over tap", vmnet.ModeTAP, sshexec.Config{HostKey: img.HostKeyPub, Agent: true}, true, "grep -m1 -o '172\\.29\\.[0-9.]*' /proc/net/fib_trie; exit 7",
			func(t *testing.T, res *cylo.Result, err error) {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if !strings.HasPrefix(string(res.Stdout), "172.29.") || res.ExitCode != 7 {
					t.Errorf("stdout %q, exit %d; want a 172.29. address and 7", res.Stdout, res.ExitCode)
				}
			}},
		{"wrong key", vmnet.ModeUser, withKey(pinned, wrongKey), false, "true",
			func(t *testing.T, res *cylo.Result, err error) {
				var authErr *sshexec.AuthError
				if !errors.As(err, &authErr) {
					t.Fatalf("err = %v, want an sshexec.AuthError", err)
				}
				if !strings.Contains(err.Error(), "key "+wrongKey) {
					t.Errorf("err = %v, want it to name the key file", err)
				}
			}},
		{"changed host key", vmnet.ModeUser, withKey(sshexec.Config{HostKey: otherHostKey}, img.ClientKey), false, "true",
			func(t *testing.T, res *cylo.Result, err error) {
				var hostErr *sshexec.HostKeyError
				if !errors.As(err, &hostErr) {
					t.Fatalf("err = %v, want an sshexec.HostKeyError", err)
				}
				if !strings.Contains(err.Error(), img.HostKeyFingerprint) {
					t.Errorf("err = %v, want the guest's fingerprint %s", err, img.HostKeyFingerprint)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.agent {
				serveAgent(t, img.ClientKey)
			} else {
				t.Setenv("SSH_AUTH_SOCK", "")
			}
			nsBefore, _ := filepath.Glob("/run/netns/cylo-*")
			d, store := sshDriver(t, img, tc.network, tc.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()

			res, err := cylo.Run(ctx, d, &cylo.Request{Language: cylo.Bash, Code: tc.code})

			tc.check(t, res, err)
			if err != nil && img.RootPassword != "" && strings.Contains(err.Error(), img.RootPassword) {
				t.Errorf("err contains the root password")
			}
			checkNoLeftovers(t, store, nsBefore)
		})
	}
}

// TestSSHBootTimeout checks the error when sshd does not accept a login
// within the boot timeout: it names the address and attempts and ends with the
// console tail.
func TestSSHBootTimeout(t *testing.T) {
	img := sshImage(t)
	t.Setenv("SSH_AUTH_SOCK", "")
	store, err := vmstate.Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := qemu.New(qemu.Config{
		Kernel: img.Kernel, Initrd: img.Initrd, Rootfs: img.Rootfs,
		Accelerator: qemu.AccelTCG,
		Store:       store,
		BootTimeout: 1500 * time.Millisecond,
		Transport:   cylo.TransportSSH,
		SSH:         withKey(sshexec.Config{HostKey: img.HostKeyPub}, img.ClientKey),
	})
	if err != nil {
		t.Fatal(err)
	}

	_, err = cylo.Run(context.Background(), d, &cylo.Request{Language: cylo.Bash, Code: "true"})

	var waitErr *sshexec.WaitError
	if !errors.As(err, &waitErr) {
		t.Fatalf("err = %v, want an sshexec.WaitError", err)
	}
	if !strings.HasPrefix(waitErr.Addr, "127.0.0.1:") || waitErr.Attempts == 0 {
		t.Errorf("wait error addr %q after %d attempts, want 127.0.0.1:PORT and at least one", waitErr.Addr, waitErr.Attempts)
	}
	if !strings.Contains(err.Error(), "boot timeout 1.5s") || !strings.Contains(err.Error(), "console tail:") {
		t.Errorf("err = %v, want the boot timeout and the console tail", err)
	}
	checkNoLeftovers(t, store, nil)
}

func withKey(cfg sshexec.Config, keyPath string) sshexec.Config {
	cfg.KeyPath = keyPath
	return cfg
}

// newKeyLine returns a new ed25519 key as an authorized_keys line and as
// a PEM private key.
func newKeyLine() (string, []byte, error) {
	signer, pemBytes, err := generateKey()
	if err != nil {
		return "", nil, err
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), pemBytes, nil
}
