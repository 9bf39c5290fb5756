package image

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Files of the ssh profile, in the rootfs part and in the image directory.
const (
	hostKeyPubFile         = "ssh_host_ed25519_key.pub"         // authorized_keys-format line of the guest's host key
	hostKeyFingerprintFile = "ssh_host_ed25519_key.fingerprint" // SHA256:... form of the host key
	clientKeyFile          = "id_ed25519"                       // private key for root, mode 0600, when cylo generated it
	clientKeyPubFile       = "id_ed25519.pub"
	rootPasswordFile       = "root_password" // root's password, mode 0600
)

// sshdConfig restricts the guest's sshd to the one host key cylo pins. Root
// may log in with the authorized key or with the password that
// setRootPassword generates, which is random and stored only in the image
// directory.
const sshdConfig = `# Written by cylo's image builder.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UseDNS no
`

// configureSSH replaces the host keys that openssh-server's postinst made
// with one ed25519 key generated here, records its public half in part,
// and authorizes a client key for root: authorizedKey if set, otherwise a
// new key pair whose private half is stored in part with mode 0600.
func configureSSH(tree, part, authorizedKey string) error {
	old, _ := filepath.Glob(filepath.Join(tree, "etc/ssh/ssh_host_*"))
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return err
		}
	}

	hostPriv, hostPub, err := newEd25519("root@cylo")
	if err != nil {
		return err
	}
	hostLine := string(ssh.MarshalAuthorizedKey(hostPub))
	writes := []fileWrite{
		{filepath.Join(tree, "etc/ssh/ssh_host_ed25519_key"), hostPriv, 0o600},
		{filepath.Join(tree, "etc/ssh/ssh_host_ed25519_key.pub"), hostLine, 0o644},
		{filepath.Join(tree, "etc/ssh/sshd_config.d/cylo.conf"), sshdConfig, 0o644},
		{filepath.Join(part, hostKeyPubFile), hostLine, 0o644},
		{filepath.Join(part, hostKeyFingerprintFile), ssh.FingerprintSHA256(hostPub) + "\n", 0o644},
	}

	if authorizedKey == "" {
		clientPriv, clientPub, err := newEd25519("cylo")
		if err != nil {
			return err
		}
		authorizedKey = string(ssh.MarshalAuthorizedKey(clientPub))
		writes = append(writes,
			fileWrite{filepath.Join(part, clientKeyFile), clientPriv, 0o600},
			fileWrite{filepath.Join(part, clientKeyPubFile), authorizedKey, 0o644},
		)
	} else if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(authorizedKey)); err != nil {
		return fmt.Errorf("invalid authorized key %q: %w", authorizedKey, err)
	}
	writes = append(writes, fileWrite{filepath.Join(tree, "root/.ssh/authorized_keys"), strings.TrimSpace(authorizedKey) + "\n", 0o600})

	for _, w := range writes {
		if err := os.MkdirAll(filepath.Dir(w.path), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(w.path, []byte(w.data), w.mode); err != nil {
			return err
		}
		// WriteFile applies the umask: set the mode sshd checks.
		if err := os.Chmod(w.path, w.mode); err != nil {
			return err
		}
	}
	return os.Chmod(filepath.Join(tree, "root/.ssh"), 0o700)
}

type fileWrite struct {
	path string
	data string
	mode os.FileMode
}

// newEd25519 returns a new private key in OpenSSH PEM form and its public key.
func newEd25519(comment string) (string, ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return "", nil, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", nil, err
	}
	return string(pem.EncodeToMemory(block)), sshPub, nil
}

// setRootPassword gives root in tree a new random password and stores it
// in part with mode 0600. The guest's own chpasswd hashes it, run with
// chroot, so the hash uses the method of the guest's PAM configuration
// and the password never appears on a command line.
func setRootPassword(ctx context.Context, tree, part string) error {
	raw := make([]byte, 18)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	password := base64.RawURLEncoding.EncodeToString(raw)

	cmd := exec.CommandContext(ctx, "chroot", tree, "/usr/sbin/chpasswd")
	cmd.Stdin = strings.NewReader("root:" + password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("set root password with chroot %s chpasswd: %w: %s", tree, err, tail(string(out), 500))
	}
	path := filepath.Join(part, rootPasswordFile)
	if err := os.WriteFile(path, []byte(password+"\n"), 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}
