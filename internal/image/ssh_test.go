package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestConfigureSSHGeneratedKey(t *testing.T) {
	tree, part := t.TempDir(), t.TempDir()
	mustWrite(t, filepath.Join(tree, "etc/ssh/ssh_host_rsa_key"), "old key")
	if err := configureSSH(tree, part, ""); err != nil {
		t.Fatal(err)
	}

	if _, err := os.Stat(filepath.Join(tree, "etc/ssh/ssh_host_rsa_key")); err == nil {
		t.Error("the host key made by the package is still there")
	}
	hostPriv, err := ssh.ParsePrivateKey([]byte(mustRead(t, filepath.Join(tree, "etc/ssh/ssh_host_ed25519_key"))))
	if err != nil {
		t.Fatal(err)
	}
	recorded, _, _, _, err := ssh.ParseAuthorizedKey([]byte(mustRead(t, filepath.Join(part, hostKeyPubFile))))
	if err != nil {
		t.Fatal(err)
	}
	if string(recorded.Marshal()) != string(hostPriv.PublicKey().Marshal()) {
		t.Error("recorded host key does not match the key installed in the rootfs")
	}
	if got := strings.TrimSpace(mustRead(t, filepath.Join(part, hostKeyFingerprintFile))); got != ssh.FingerprintSHA256(recorded) {
		t.Errorf("fingerprint = %q, want %q", got, ssh.FingerprintSHA256(recorded))
	}

	client, err := ssh.ParsePrivateKey([]byte(mustRead(t, filepath.Join(part, clientKeyFile))))
	if err != nil {
		t.Fatal(err)
	}
	authorized, _, _, _, err := ssh.ParseAuthorizedKey([]byte(mustRead(t, filepath.Join(tree, "root/.ssh/authorized_keys"))))
	if err != nil {
		t.Fatal(err)
	}
	if string(authorized.Marshal()) != string(client.PublicKey().Marshal()) {
		t.Error("authorized_keys does not hold the generated client key")
	}

	modes := map[string]os.FileMode{
		filepath.Join(part, clientKeyFile):                     0o600,
		filepath.Join(tree, "etc/ssh/ssh_host_ed25519_key"):    0o600,
		filepath.Join(tree, "root/.ssh/authorized_keys"):       0o600,
		filepath.Join(tree, "root/.ssh"):                       0o700,
		filepath.Join(tree, "etc/ssh/sshd_config.d/cylo.conf"): 0o644,
	}
	for path, want := range modes {
		st, err := os.Stat(path)
		if err != nil {
			t.Error(err)
			continue
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode = %o, want %o", path, st.Mode().Perm(), want)
		}
	}
}

func TestConfigureSSHUserKey(t *testing.T) {
	tree, part := t.TempDir(), t.TempDir()
	_, pub, err := newEd25519("user")
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	if err := configureSSH(tree, part, line); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(mustRead(t, filepath.Join(tree, "root/.ssh/authorized_keys"))); got != line {
		t.Errorf("authorized_keys = %q, want %q", got, line)
	}
	if _, err := os.Stat(filepath.Join(part, clientKeyFile)); err == nil {
		t.Error("a client key was generated although the user passed one")
	}

	if err := configureSSH(t.TempDir(), t.TempDir(), "not a key"); err == nil || !strings.Contains(err.Error(), "invalid authorized key") {
		t.Errorf("err = %v, want invalid authorized key", err)
	}
}
