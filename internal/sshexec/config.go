// Package sshexec runs snippets in a guest over SSH, for images that have
// an SSH server but no cylo agent. It dials and authenticates the guest
// (WaitReady), copies the code with SFTP, runs the language's command from
// the lang table in the guest and reports exit status, signal, output and
// which limit fired (Run).
package sshexec

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Defaults applied to zero Config fields.
const (
	DefaultPort     = 22
	DefaultUsername = "root"
)

// redacted replaces a password wherever a Config is printed or marshaled.
const redacted = "[redacted]"

// Config is how to reach and authenticate one SSH server. The tags are
// the setting names used in config files and, with _ replaced by -, as
// CLI flags (ssh_key_path is --ssh-key-path).
//
// Authentication uses every method that is set, in this order: the key
// file, the SSH agent, the password. The agent is used when Agent is true,
// and also when neither KeyPath nor Password is set and SSH_AUTH_SOCK
// names a socket.
//
// The server's host key is checked against KnownHosts or HostKey (both may
// be set, and then a key passes if either accepts it). Only
// InsecureIgnoreHostKey turns the check off.
//
// String, GoString, MarshalJSON, MarshalYAML and LogValue replace the
// password with [redacted]. Key contents are never stored in a Config,
// only the key file's path.
type Config struct {
	// Host is the server's host name or IP address.
	Host string `json:"ssh_host" yaml:"ssh_host"`
	// Port is the server's TCP port (default 22).
	Port int `json:"ssh_port,omitempty" yaml:"ssh_port,omitempty"`
	// Username is the user to log in as (default root).
	Username string `json:"ssh_username,omitempty" yaml:"ssh_username,omitempty"`
	// KeyPath is a private key file in OpenSSH, PKCS#1, PKCS#8 or SEC 1
	// format. Keys with a passphrase are not supported here: load them
	// into an SSH agent instead.
	KeyPath string `json:"ssh_key_path,omitempty" yaml:"ssh_key_path,omitempty"`
	// Password is sent for password and keyboard-interactive
	// authentication.
	Password string `json:"ssh_password,omitempty" yaml:"ssh_password,omitempty"`
	// Agent uses the SSH agent at SSH_AUTH_SOCK even when KeyPath or
	// Password is also set.
	Agent bool `json:"ssh_agent,omitempty" yaml:"ssh_agent,omitempty"`
	// KnownHosts is an OpenSSH known_hosts file that lists the server's
	// host key. A server on a port other than 22 is listed as
	// [host]:port.
	KnownHosts string `json:"ssh_known_hosts,omitempty" yaml:"ssh_known_hosts,omitempty"`
	// HostKey is the server's public host key in authorized_keys format
	// ("ssh-ed25519 AAAA... comment").
	HostKey string `json:"ssh_host_key,omitempty" yaml:"ssh_host_key,omitempty"`
	// InsecureIgnoreHostKey accepts any host key. Dialing logs a warning
	// each time it is used.
	InsecureIgnoreHostKey bool `json:"ssh_insecure_ignore_host_key,omitempty" yaml:"ssh_insecure_ignore_host_key,omitempty"`
}

// ErrInvalidConfig is wrapped by every error of Config.Validate.
var ErrInvalidConfig = errors.New("invalid ssh config")

// Validate reports the first invalid or missing setting. It does not
// open the key or known_hosts files, which Dial reads.
func (c Config) Validate() error {
	if c.Host == "" {
		return fmt.Errorf("%w: ssh_host is missing: set it to the server's host name or IP address", ErrInvalidConfig)
	}
	if strings.ContainsAny(c.Host, " \t\r\n/") {
		return fmt.Errorf("%w: ssh_host %q is not a host name or IP address", ErrInvalidConfig, c.Host)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("%w: ssh_port %d is out of range: use 1 to 65535, or 0 for %d", ErrInvalidConfig, c.Port, DefaultPort)
	}
	if strings.ContainsAny(c.Username, " \t\r\n\x00") {
		return fmt.Errorf("%w: ssh_username %q contains white space", ErrInvalidConfig, c.Username)
	}

	if c.KeyPath == "" && c.Password == "" && !c.Agent && agentSocket() == "" {
		return fmt.Errorf("%w: no authentication method: set ssh_key_path, ssh_password or ssh_agent (with SSH_AUTH_SOCK naming the agent's socket)", ErrInvalidConfig)
	}
	if c.Agent && agentSocket() == "" {
		return fmt.Errorf("%w: ssh_agent is set but SSH_AUTH_SOCK is empty: start an agent (ssh-agent) or unset ssh_agent", ErrInvalidConfig)
	}

	if c.KnownHosts == "" && c.HostKey == "" && !c.InsecureIgnoreHostKey {
		return fmt.Errorf("%w: no host key verification: set ssh_known_hosts or ssh_host_key, or set ssh_insecure_ignore_host_key to accept any key", ErrInvalidConfig)
	}
	if c.HostKey != "" {
		if _, err := parseHostKey(c.HostKey); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
	}
	return nil
}

// Address returns host:port with the default port filled in.
func (c Config) Address() string {
	port := c.Port
	if port == 0 {
		port = DefaultPort
	}
	return net.JoinHostPort(c.Host, strconv.Itoa(port))
}

// User returns Username, or root when it is empty.
func (c Config) User() string {
	if c.Username == "" {
		return DefaultUsername
	}
	return c.Username
}

// String describes c with the password replaced by [redacted].
func (c Config) String() string {
	return fmt.Sprintf("%+v", c.public())
}

// GoString is String for the %#v verb, so that it cannot print the
// password either.
func (c Config) GoString() string {
	return fmt.Sprintf("sshexec.Config%+v", c.public())
}

// MarshalJSON encodes c with the password replaced by [redacted].
func (c Config) MarshalJSON() ([]byte, error) {
	return json.Marshal(c.public())
}

// MarshalYAML returns c with the password replaced by [redacted]. It has
// the signature of the Marshaler interface of gopkg.in/yaml.v3.
func (c Config) MarshalYAML() (any, error) {
	return c.public(), nil
}

// LogValue logs c with the password replaced by [redacted].
func (c Config) LogValue() slog.Value {
	p := c.public()
	return slog.GroupValue(
		slog.String("ssh_host", p.Host),
		slog.Int("ssh_port", p.Port),
		slog.String("ssh_username", p.Username),
		slog.String("ssh_key_path", p.KeyPath),
		slog.String("ssh_password", p.Password),
		slog.Bool("ssh_agent", p.Agent),
		slog.String("ssh_known_hosts", p.KnownHosts),
		slog.String("ssh_host_key", p.HostKey),
		slog.Bool("ssh_insecure_ignore_host_key", p.InsecureIgnoreHostKey),
	)
}

// publicConfig has Config's fields and tags but none of its methods, so
// that formatting it does not recurse into Config.String.
type publicConfig Config

func (c Config) public() publicConfig {
	p := publicConfig(c)
	if p.Password != "" {
		p.Password = redacted
	}
	return p
}

// parseHostKey parses a pinned host key in authorized_keys format.
func parseHostKey(text string) (ssh.PublicKey, error) {
	key, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(text))
	if err != nil {
		return nil, fmt.Errorf("ssh_host_key is not a public key in authorized_keys format (\"ssh-ed25519 AAAA...\"): %v", err)
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, errors.New("ssh_host_key contains more than one key: pin exactly one, or list several in an ssh_known_hosts file")
	}
	return key, nil
}
