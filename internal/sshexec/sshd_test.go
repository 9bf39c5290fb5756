package sshexec

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

const sshdPath = "/usr/sbin/sshd"

// privsepDir is compiled into Debian's sshd, which refuses to start
// without it. systemd creates it for the system's sshd; tests create it
// when missing and remove it again.
const privsepDir = "/run/sshd"

func TestMain(m *testing.M) {
	created := false
	if _, err := os.Stat(privsepDir); errors.Is(err, os.ErrNotExist) && os.Geteuid() == 0 {
		if err := os.Mkdir(privsepDir, 0o755); err == nil {
			created = true
		}
	}
	code := m.Run()
	if created {
		os.Remove(privsepDir)
	}
	os.Exit(code)
}

// testKey is a client or host key pair.
type testKey struct {
	signer ssh.Signer
	public ssh.PublicKey
	// path is the private key in OpenSSH format.
	path string
	priv ed25519.PrivateKey
}

func newTestKey(t *testing.T, dir, name string) *testKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return &testKey{signer: signer, public: signer.PublicKey(), path: path, priv: priv}
}

func (k *testKey) authorizedLine() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.public)))
}

// sshd is a real OpenSSH server run by the test on 127.0.0.1, with its
// own host key and authorized_keys file.
type sshd struct {
	dir     string
	addr    string
	hostKey *testKey
	// client is a key listed in authorized_keys.
	client     *testKey
	configPath string

	mu  sync.Mutex
	cmd *exec.Cmd
	log *lockedBuffer
}

// newSSHD writes the server's files and picks a free port without
// starting the server. authorized lists extra keys that may log in.
func newSSHD(t *testing.T, authorized ...*testKey) *sshd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the sshd tests log in as root and need to run as root")
	}
	if _, err := os.Stat(sshdPath); err != nil {
		t.Skipf("OpenSSH server not installed at %s (Debian: apt-get install openssh-server)", sshdPath)
	}

	dir := t.TempDir()
	s := &sshd{dir: dir, log: &lockedBuffer{}}
	s.hostKey = newTestKey(t, dir, "host_key")
	s.client = newTestKey(t, dir, "client_key")

	lines := []string{s.client.authorizedLine()}
	for _, k := range authorized {
		lines = append(lines, k.authorizedLine())
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = l.Addr().String()
	l.Close()

	s.configPath = filepath.Join(dir, "sshd_config")
	config := fmt.Sprintf(`ListenAddress %s
HostKey %s
PidFile none
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp
MaxSessions 50
MaxStartups 50
LogLevel VERBOSE
`, s.addr, s.hostKey.path, filepath.Join(dir, "authorized_keys"))
	if err := os.WriteFile(s.configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.stop(t) })
	return s
}

// startSSHD starts a server and waits until it sends its version line.
func startSSHD(t *testing.T, authorized ...*testKey) *sshd {
	t.Helper()
	s := newSSHD(t, authorized...)
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// start runs sshd in the foreground (-D) with its log on stderr (-e), in
// its own process group so that stop also ends the per-connection
// processes.
func (s *sshd) start() error {
	cmd := exec.Command(sshdPath, "-D", "-e", "-f", s.configPath)
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()

	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if banner(s.addr) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("sshd did not listen on %s within 5s; its log:\n%s", s.addr, s.log.String())
}

func banner(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "SSH-2.0-")
}

// stop kills the server's process group and reaps the server. On a
// failed test it prints the server's log.
func (s *sshd) stop(t *testing.T) {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	if t.Failed() {
		t.Logf("sshd log:\n%s", s.log.String())
	}
}

// config returns a Config that logs in with the authorized client key and
// pins the server's host key.
func (s *sshd) config() Config {
	host, port, _ := net.SplitHostPort(s.addr)
	var portNumber int
	fmt.Sscan(port, &portNumber)
	return Config{
		Host:     host,
		Port:     portNumber,
		KeyPath:  s.client.path,
		HostKey:  s.hostKey.authorizedLine(),
		Username: "root",
	}
}

// dial connects with cfg and closes the client when the test ends.
func (s *sshd) dial(t *testing.T, cfg Config, opts ...Option) *ssh.Client {
	t.Helper()
	opts = append([]Option{WithBootTimeout(5 * time.Second)}, opts...)
	client, err := WaitReady(context.Background(), cfg, opts...)
	if err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// serveAgent serves keys from an in-memory keyring on a Unix socket and
// points SSH_AUTH_SOCK at it for the rest of the test.
func serveAgent(t *testing.T, keys ...*testKey) string {
	t.Helper()
	keyring := agent.NewKeyring()
	for _, k := range keys {
		if err := keyring.Add(agent.AddedKey{PrivateKey: k.priv}); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				agent.ServeAgent(keyring, conn)
				conn.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	t.Setenv("SSH_AUTH_SOCK", sock)
	return sock
}

// lockedBuffer is a strings.Builder safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// noAgent clears SSH_AUTH_SOCK so that an agent of the environment
// running the tests cannot change which methods are used.
func noAgent(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
}
