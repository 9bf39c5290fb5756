package sshexec

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// agentSocket returns the SSH agent socket named by SSH_AUTH_SOCK.
func agentSocket() string {
	return os.Getenv("SSH_AUTH_SOCK")
}

// auth is the client authentication for one connection attempt.
type auth struct {
	methods []ssh.AuthMethod
	// names describe the methods for errors ("key /root/.ssh/id",
	// "the SSH agent at /tmp/agent.sock", "a password"), never their
	// secrets.
	names []string
	// agentConn is the connection to the SSH agent, or nil. The caller
	// closes it once the handshake is over.
	agentConn net.Conn
}

// useAgent reports whether c authenticates with the SSH agent: when
// ssh_agent is set, or when neither a key file nor a password is set.
func (c Config) useAgent() bool {
	return c.Agent || (c.KeyPath == "" && c.Password == "" && agentSocket() != "")
}

// newAuth builds the auth methods of c: one publickey method with the
// signers of the key file and the agent, then password and
// keyboard-interactive with c.Password. x/crypto/ssh tries each method
// name once, so the key file and the agent share one publickey method.
func (c Config) newAuth() (*auth, error) {
	a := &auth{}
	var signers []ssh.Signer

	if c.KeyPath != "" {
		signer, err := loadKey(c.KeyPath)
		if err != nil {
			return nil, err
		}
		signers = append(signers, signer)
		a.names = append(a.names, "key "+c.KeyPath)
	}

	var agentClient agent.ExtendedAgent
	if c.useAgent() {
		sock := agentSocket()
		if sock == "" {
			return nil, errors.New("ssh_agent is set but SSH_AUTH_SOCK is empty: start an agent (ssh-agent) or unset ssh_agent")
		}
		conn, err := net.Dial("unix", sock)
		if err != nil {
			return nil, fmt.Errorf("connect to the SSH agent at %s (SSH_AUTH_SOCK): %w", sock, err)
		}
		a.agentConn = conn
		agentClient = agent.NewClient(conn)
		a.names = append(a.names, "the SSH agent at "+sock)
	}

	if len(signers) > 0 || agentClient != nil {
		a.methods = append(a.methods, ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
			all := signers
			if agentClient != nil {
				fromAgent, err := agentClient.Signers()
				if err != nil {
					return nil, fmt.Errorf("list keys of the SSH agent: %w", err)
				}
				all = append(all[:len(all):len(all)], fromAgent...)
			}
			return all, nil
		}))
	}

	if c.Password != "" {
		password := c.Password
		a.methods = append(a.methods,
			ssh.Password(password),
			ssh.KeyboardInteractive(func(_, _ string, questions []string, echos []bool) ([]string, error) {
				// Servers with PAM request the password this way. Only
				// hidden prompts get it, because a prompt that echoes
				// does not request a password.
				answers := make([]string, len(questions))
				for i := range questions {
					if !echos[i] {
						answers[i] = password
					}
				}
				return answers, nil
			}))
		a.names = append(a.names, "a password")
	}
	return a, nil
}

// describe lists the methods for an error message.
func (a *auth) describe() string {
	return strings.Join(a.names, ", ")
}

// close closes the agent connection, if any.
func (a *auth) close() {
	if a.agentConn != nil {
		a.agentConn.Close()
	}
}

// loadKey reads an unencrypted private key. Errors name the file, never
// its contents.
func loadKey(path string) (ssh.Signer, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ssh_key_path: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("ssh_key_path %s is encrypted with a passphrase: load it into an SSH agent (ssh-add) and set ssh_agent", path)
	}
	if err != nil {
		return nil, fmt.Errorf("ssh_key_path %s is not a private key: %v", path, err)
	}
	return signer, nil
}
