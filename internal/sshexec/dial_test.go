package sshexec

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// remoteOutput runs command in a new session and returns its stdout.
func remoteOutput(t *testing.T, client *ssh.Client, command string) string {
	t.Helper()
	session, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	out, err := session.Output(command)
	if err != nil {
		t.Fatalf("run %q: %v", command, err)
	}
	return string(out)
}

func TestWaitReadyKeyAuth(t *testing.T) {
	noAgent(t)
	s := startSSHD(t)
	client := s.dial(t, s.config())

	if got := remoteOutput(t, client, "id -un"); got != "root\n" {
		t.Errorf("id -un = %q, want root", got)
	}
}

func TestWaitReadyAgentAuth(t *testing.T) {
	agentKey := newTestKey(t, t.TempDir(), "agent_key")
	s := startSSHD(t, agentKey)
	serveAgent(t, agentKey)

	// With neither a key file nor a password, the agent is used without
	// setting Agent.
	cfg := s.config()
	cfg.KeyPath = ""
	client := s.dial(t, cfg)

	if got := remoteOutput(t, client, "echo agent"); got != "agent\n" {
		t.Errorf("output = %q, want agent", got)
	}
}

func TestWaitReadyWrongKey(t *testing.T) {
	noAgent(t)
	s := startSSHD(t)
	cfg := s.config()
	cfg.KeyPath = newTestKey(t, t.TempDir(), "stranger").path

	start := time.Now()
	_, err := WaitReady(context.Background(), cfg, WithBootTimeout(30*time.Second))

	var authErr *AuthError
	if !errors.As(err, &authErr) {
		t.Fatalf("err = %v (%T), want *AuthError", err, err)
	}
	want := "ssh: authentication as root at " + s.addr + " failed with key " + cfg.KeyPath + ": "
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("err = %q, want prefix %q", err, want)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("WaitReady took %s: a rejected login must fail at once", elapsed)
	}
}

func TestWaitReadyPinnedHostKeyMismatch(t *testing.T) {
	noAgent(t)
	s := startSSHD(t)
	cfg := s.config()
	other := newTestKey(t, t.TempDir(), "other_host")
	cfg.HostKey = other.authorizedLine()

	start := time.Now()
	_, err := WaitReady(context.Background(), cfg, WithBootTimeout(30*time.Second))

	var hostKeyErr *HostKeyError
	if !errors.As(err, &hostKeyErr) {
		t.Fatalf("err = %v (%T), want *HostKeyError", err, err)
	}
	want := "host key for " + s.addr + " does not match the pinned key: got ssh-ed25519 " + ssh.FingerprintSHA256(s.hostKey.public)
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("err = %q, want prefix %q", err, want)
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(other.public)) {
		t.Errorf("err = %q, want the pinned key's fingerprint in it", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("WaitReady took %s: a host key mismatch must fail at once", elapsed)
	}
}

func TestWaitReadyKnownHosts(t *testing.T) {
	noAgent(t)
	s := startSSHD(t)
	other := newTestKey(t, t.TempDir(), "other_host")
	dir := t.TempDir()
	line := func(addr string, k *testKey) string {
		return knownhosts.Line([]string{knownhosts.Normalize(addr)}, k.public) + "\n"
	}

	cases := []struct {
		name    string
		content string
		wantErr string
	}{
		{"listed", line("127.0.0.2:22", other) + line(s.addr, s.hostKey), ""},
		{"changed key", line(s.addr, other), "host key for " + s.addr + " does not match known_hosts file "},
		{"not listed", line("127.0.0.2:22", s.hostKey), "host key for " + s.addr + " is not in known_hosts file "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := s.config()
			cfg.HostKey = ""
			cfg.KnownHosts = filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(cfg.KnownHosts, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}

			client, err := WaitReady(context.Background(), cfg, WithBootTimeout(30*time.Second))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("WaitReady: %v", err)
				}
				client.Close()
				return
			}
			var hostKeyErr *HostKeyError
			if !errors.As(err, &hostKeyErr) {
				t.Fatalf("err = %v (%T), want *HostKeyError", err, err)
			}
			if !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Errorf("err = %q, want prefix %q", err, tc.wantErr)
			}
		})
	}
}

func TestWaitReadyInsecureWarns(t *testing.T) {
	noAgent(t)
	s := startSSHD(t)
	cfg := s.config()
	cfg.HostKey = ""
	cfg.InsecureIgnoreHostKey = true
	var log lockedBuffer
	logger := slog.New(slog.NewTextHandler(&log, nil))

	client := s.dial(t, cfg, WithLogger(logger))

	if got := remoteOutput(t, client, "echo ok"); got != "ok\n" {
		t.Errorf("output = %q, want ok", got)
	}
	if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "setting=ssh_insecure_ignore_host_key") {
		t.Errorf("log = %q, want a warning naming ssh_insecure_ignore_host_key", log.String())
	}
}

func TestWaitReadyTimeout(t *testing.T) {
	noAgent(t)
	key := newTestKey(t, t.TempDir(), "key")

	// A listener that accepts and closes at once is what QEMU's user
	// network port forwarding looks like before the guest listens.
	closing, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer closing.Close()
	go func() {
		for {
			conn, err := closing.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	refusing, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedAddr := refusing.Addr().(*net.TCPAddr)
	refusing.Close()

	cases := []struct {
		name     string
		port     int
		wantLast string
	}{
		{"refused", refusedAddr.Port, "connection refused"},
		{"closed after accept", closing.Addr().(*net.TCPAddr).Port, "ssh: handshake failed: "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Host: "127.0.0.1", Port: tc.port, KeyPath: key.path, HostKey: key.authorizedLine()}

			_, err := WaitReady(context.Background(), cfg,
				WithBootTimeout(800*time.Millisecond),
				WithPollInterval(100*time.Millisecond),
				WithConsoleTail(func() string { return "[    1.5] console: still booting" }))

			var waitErr *WaitError
			if !errors.As(err, &waitErr) {
				t.Fatalf("err = %v (%T), want *WaitError", err, err)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
			}
			if waitErr.Attempts < 2 {
				t.Errorf("attempts = %d, want at least 2", waitErr.Attempts)
			}
			msg := err.Error()
			for _, want := range []string{cfg.Address(), "attempts", tc.wantLast, "console tail:\n[    1.5] console: still booting"} {
				if !strings.Contains(msg, want) {
					t.Errorf("err = %q, want it to contain %q", msg, want)
				}
			}
		})
	}
}

func TestWaitReadyServerStartsLate(t *testing.T) {
	noAgent(t)
	s := newSSHD(t)
	started := make(chan error, 1)
	go func() {
		time.Sleep(600 * time.Millisecond)
		started <- s.start()
	}()
	var log lockedBuffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))

	client, err := WaitReady(context.Background(), s.config(),
		WithBootTimeout(10*time.Second), WithPollInterval(100*time.Millisecond), WithLogger(logger))
	if startErr := <-started; startErr != nil {
		t.Fatal(startErr)
	}
	if err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	defer client.Close()

	if !strings.Contains(log.String(), "ssh server not ready") {
		t.Errorf("log = %q, want failed attempts logged before the server started", log.String())
	}
	if !strings.Contains(log.String(), "msg=\"ssh server ready\"") {
		t.Errorf("log = %q, want readiness logged", log.String())
	}
}

func TestWaitReadyCanceled(t *testing.T) {
	noAgent(t)
	key := newTestKey(t, t.TempDir(), "key")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)

	_, err = WaitReady(ctx, Config{Host: "127.0.0.1", Port: port, KeyPath: key.path, HostKey: key.authorizedLine()},
		WithPollInterval(50*time.Millisecond))

	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want it to wrap context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "canceled") {
		t.Errorf("err = %q, want it to say the wait was canceled", err)
	}
}
