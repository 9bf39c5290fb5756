package sshexec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

const secret = "hunter2-do-not-print"

func TestConfigHidesPassword(t *testing.T) {
	cfg := Config{Host: "10.0.2.15", Port: 2222, Password: secret, InsecureIgnoreHostKey: true}
	wrapped := struct{ SSH Config }{cfg}

	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	yamlValue, err := cfg.MarshalYAML()
	if err != nil {
		t.Fatal(err)
	}
	var jsonLog, textLog bytes.Buffer
	slog.New(slog.NewJSONHandler(&jsonLog, nil)).Info("dial", "config", cfg)
	slog.New(slog.NewTextHandler(&textLog, nil)).Info("dial", "config", cfg)

	outputs := map[string]string{
		"json":          string(data),
		"yaml value":    fmt.Sprintf("%+v", yamlValue),
		"%v":            fmt.Sprintf("%v", cfg),
		"%+v":           fmt.Sprintf("%+v", cfg),
		"%#v":           fmt.Sprintf("%#v", cfg),
		"%s":            fmt.Sprintf("%s", cfg),
		"%v pointer":    fmt.Sprintf("%v", &cfg),
		"%#v pointer":   fmt.Sprintf("%#v", &cfg),
		"%+v wrapped":   fmt.Sprintf("%+v", wrapped),
		"%#v wrapped":   fmt.Sprintf("%#v", wrapped),
		"slog json":     jsonLog.String(),
		"slog text":     textLog.String(),
		"Validate text": fmt.Sprint(Config{Password: secret}.Validate()),
	}
	for name, out := range outputs {
		if strings.Contains(out, secret) {
			t.Errorf("%s output contains the password: %s", name, out)
		}
	}
	for _, name := range []string{"json", "%+v", "%#v", "slog json"} {
		if !strings.Contains(outputs[name], redacted) {
			t.Errorf("%s output = %s, want the password shown as %s", name, outputs[name], redacted)
		}
	}
	if !strings.Contains(outputs["json"], `"ssh_host":"10.0.2.15"`) {
		t.Errorf("json = %s, want the other settings kept", outputs["json"])
	}
}

func TestConfigLoadsFromJSON(t *testing.T) {
	file := `{
		"ssh_host": "10.0.2.15", "ssh_port": 2222, "ssh_username": "runner",
		"ssh_key_path": "/keys/id", "ssh_password": "pw", "ssh_agent": true,
		"ssh_known_hosts": "/keys/known_hosts", "ssh_host_key": "ssh-ed25519 AAAA",
		"ssh_insecure_ignore_host_key": true
	}`
	var got Config
	if err := json.Unmarshal([]byte(file), &got); err != nil {
		t.Fatal(err)
	}

	want := Config{
		Host: "10.0.2.15", Port: 2222, Username: "runner",
		KeyPath: "/keys/id", Password: "pw", Agent: true,
		KnownHosts: "/keys/known_hosts", HostKey: "ssh-ed25519 AAAA",
		InsecureIgnoreHostKey: true,
	}
	if got != want {
		t.Errorf("loaded %#v, want every setting", publicConfig(got))
	}
}

func TestConfigTagsMatch(t *testing.T) {
	typ := reflect.TypeOf(Config{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		jsonName, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		yamlName, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !strings.HasPrefix(jsonName, "ssh_") {
			t.Errorf("field %s: json name %q does not start with ssh_", f.Name, jsonName)
		}
		if jsonName != yamlName {
			t.Errorf("field %s: json name %q and yaml name %q differ", f.Name, jsonName, yamlName)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	noAgent(t)
	hostKey := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test"
	valid := Config{Host: "127.0.0.1", KeyPath: "/k", HostKey: hostKey}
	with := func(change func(*Config)) Config {
		c := valid
		change(&c)
		return c
	}

	cases := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"valid", valid, ""},
		{"password", with(func(c *Config) { c.KeyPath = ""; c.Password = "pw" }), ""},
		{"known hosts", with(func(c *Config) { c.HostKey = ""; c.KnownHosts = "/kh" }), ""},
		{"insecure", with(func(c *Config) { c.HostKey = ""; c.InsecureIgnoreHostKey = true }), ""},
		{"no host", with(func(c *Config) { c.Host = "" }), "ssh_host is missing"},
		{"bad host", with(func(c *Config) { c.Host = "a b" }), `ssh_host "a b"`},
		{"bad port", with(func(c *Config) { c.Port = 70000 }), "ssh_port 70000 is out of range"},
		{"no auth", with(func(c *Config) { c.KeyPath = "" }), "no authentication method"},
		{"agent without socket", with(func(c *Config) { c.Agent = true }), "SSH_AUTH_SOCK is empty"},
		{"no host key check", with(func(c *Config) { c.HostKey = "" }), "no host key verification"},
		{"bad host key", with(func(c *Config) { c.HostKey = "ssh-ed25519 !!!" }), "not a public key in authorized_keys format"},
		{"two host keys", with(func(c *Config) { c.HostKey = hostKey + "\n" + hostKey }), "more than one key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("err = %v, want it to wrap ErrInvalidConfig", err)
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg := Config{Host: "::1"}
	if got := cfg.Address(); got != "[::1]:22" {
		t.Errorf("Address = %q, want [::1]:22", got)
	}
	if got := cfg.User(); got != "root" {
		t.Errorf("User = %q, want root", got)
	}
}

func TestAuthMethodSelection(t *testing.T) {
	dir := t.TempDir()
	key := newTestKey(t, dir, "id")
	const noSocket = ""

	cases := []struct {
		name        string
		cfg         Config
		agent       bool
		wantNames   []string
		wantMethods int
	}{
		{"key", Config{KeyPath: key.path}, false, []string{"key " + key.path}, 1},
		{"key ignores agent", Config{KeyPath: key.path}, true, []string{"key " + key.path}, 1},
		{"password", Config{Password: secret}, true, []string{"a password"}, 2},
		{"agent automatic", Config{}, true, []string{"the SSH agent at SOCK"}, 1},
		{"agent forced", Config{KeyPath: key.path, Password: secret, Agent: true}, true,
			[]string{"key " + key.path, "the SSH agent at SOCK", "a password"}, 3},
		{"key and password", Config{KeyPath: key.path, Password: secret}, false, []string{"key " + key.path, "a password"}, 3},
		{"nothing", Config{}, false, nil, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sock := noSocket
			if tc.agent {
				sock = serveAgent(t, key)
			} else {
				noAgent(t)
			}

			a, err := tc.cfg.newAuth()
			if err != nil {
				t.Fatalf("newAuth: %v", err)
			}
			defer a.close()

			var want []string
			for _, n := range tc.wantNames {
				want = append(want, strings.ReplaceAll(n, "SOCK", sock))
			}
			if !slices.Equal(a.names, want) {
				t.Errorf("names = %q, want %q", a.names, want)
			}
			if len(a.methods) != tc.wantMethods {
				t.Errorf("%d methods, want %d", len(a.methods), tc.wantMethods)
			}
			if strings.Contains(a.describe(), secret) {
				t.Errorf("describe() = %q contains the password", a.describe())
			}
		})
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		content string
		wantErr string
	}{
		{"missing", "", "read ssh_key_path"},
		{"not a key", "secret-looking text", "is not a private key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := dir + "/" + strings.ReplaceAll(tc.name, " ", "_")
			if tc.content != "" {
				writeFile(t, path, tc.content)
			}
			_, err := loadKey(path)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tc.wantErr)
			}
			if tc.content != "" && strings.Contains(err.Error(), tc.content) {
				t.Errorf("err = %q repeats the key file's contents", err)
			}
		})
	}
}

// TestPasswordAuth checks that the password reaches the server through
// both the password and the keyboard-interactive method. The peer is
// x/crypto/ssh's server in this process, because the host's OpenSSH
// cannot check a password without changing the host's accounts.
func TestPasswordAuth(t *testing.T) {
	noAgent(t)
	hostKey := newTestKey(t, t.TempDir(), "host")

	cases := []struct {
		name     string
		password string
		server   func(got *string) *ssh.ServerConfig
		wantErr  string
	}{
		{"password", secret, func(got *string) *ssh.ServerConfig {
			return &ssh.ServerConfig{PasswordCallback: func(_ ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
				*got = string(pw)
				if *got != secret {
					return nil, errors.New("wrong password")
				}
				return nil, nil
			}}
		}, ""},
		{"keyboard interactive", secret, func(got *string) *ssh.ServerConfig {
			return &ssh.ServerConfig{KeyboardInteractiveCallback: func(_ ssh.ConnMetadata, ask ssh.KeyboardInteractiveChallenge) (*ssh.Permissions, error) {
				answers, err := ask("", "", []string{"Password: "}, []bool{false})
				if err != nil {
					return nil, err
				}
				*got = answers[0]
				if *got != secret {
					return nil, errors.New("wrong password")
				}
				return nil, nil
			}}
		}, ""},
		{"rejected", "wrong-" + secret, func(got *string) *ssh.ServerConfig {
			return &ssh.ServerConfig{PasswordCallback: func(_ ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
				*got = string(pw)
				return nil, errors.New("wrong password")
			}}
		}, "ssh: authentication as root at ADDR failed with a password: "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got string
			serverCfg := tc.server(&got)
			serverCfg.AddHostKey(hostKey.signer)
			addr := serveOnce(t, serverCfg)
			host, port, _ := net.SplitHostPort(addr)
			var portNumber int
			fmt.Sscan(port, &portNumber)
			cfg := Config{Host: host, Port: portNumber, Password: tc.password, HostKey: hostKey.authorizedLine()}

			client, err := WaitReady(context.Background(), cfg, WithBootTimeout(5*time.Second))

			if tc.wantErr != "" {
				want := strings.ReplaceAll(tc.wantErr, "ADDR", addr)
				if err == nil || !strings.HasPrefix(err.Error(), want) {
					t.Fatalf("err = %v, want prefix %q", err, want)
				}
				if strings.Contains(err.Error(), secret) {
					t.Errorf("err = %q contains the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("WaitReady: %v", err)
			}
			client.Close()
			if got != secret {
				t.Errorf("server got password %q, want %q", got, secret)
			}
		})
	}
}

// serveOnce runs x/crypto/ssh's server for one connection on 127.0.0.1
// and returns its address.
func serveOnce(t *testing.T, cfg *ssh.ServerConfig) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		server, chans, reqs, err := ssh.NewServerConn(conn, cfg)
		if err != nil {
			return
		}
		defer server.Close()
		go ssh.DiscardRequests(reqs)
		for ch := range chans {
			ch.Reject(ssh.Prohibited, "no channels in this test")
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
