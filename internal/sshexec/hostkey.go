package sshexec

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyError reports a server whose host key the configuration does not
// accept. Retrying does not help, so WaitReady returns it at once.
type HostKeyError struct {
	// Addr is the server's host:port.
	Addr string
	// Source names the accepted keys: "the pinned key",
	// "known_hosts file PATH" or both.
	Source string
	// Got is the key the server presented.
	Got ssh.PublicKey
	// Want lists the accepted keys. It is empty when the known_hosts file
	// has no entry for Addr.
	Want []ssh.PublicKey
	// Revoked reports a key marked @revoked in the known_hosts file.
	Revoked bool
}

func (e *HostKeyError) Error() string {
	got := fingerprint(e.Got)
	switch {
	case e.Revoked:
		return fmt.Sprintf("host key for %s is revoked in %s: got %s", e.Addr, e.Source, got)
	case len(e.Want) == 0:
		return fmt.Sprintf("host key for %s is not in %s: got %s: add the guest's host key there, or pin it with ssh_host_key", e.Addr, e.Source, got)
	}
	var want []string
	for _, k := range e.Want {
		want = append(want, fingerprint(k))
	}
	return fmt.Sprintf("host key for %s does not match %s: got %s, want %s: if the guest's key changed on purpose, update the configured key",
		e.Addr, e.Source, got, strings.Join(want, " or "))
}

func fingerprint(k ssh.PublicKey) string {
	if k == nil {
		return "no key"
	}
	return k.Type() + " " + ssh.FingerprintSHA256(k)
}

// hostKeyCheck is the host key verification of one Config.
type hostKeyCheck struct {
	callback ssh.HostKeyCallback
	// algorithms are the host key algorithms to ask the server for, so
	// that a server with several host keys presents the configured one.
	// Nil means the x/crypto/ssh defaults.
	algorithms []string
}

// newHostKeyCheck builds the host key callback of c for the server at
// addr. The caller has checked that c sets some verification or the
// insecure opt-out.
func (c Config) newHostKeyCheck(addr string) (*hostKeyCheck, error) {
	if c.InsecureIgnoreHostKey {
		return &hostKeyCheck{callback: ssh.InsecureIgnoreHostKey()}, nil
	}

	var pinned ssh.PublicKey
	if c.HostKey != "" {
		key, err := parseHostKey(c.HostKey)
		if err != nil {
			return nil, err
		}
		pinned = key
	}

	var known ssh.HostKeyCallback
	if c.KnownHosts != "" {
		cb, err := knownhosts.New(c.KnownHosts)
		if err != nil {
			return nil, fmt.Errorf("read ssh_known_hosts: %w", err)
		}
		known = cb
	}

	check := &hostKeyCheck{}
	var wantKeys []ssh.PublicKey
	if pinned != nil {
		wantKeys = append(wantKeys, pinned)
	}
	if known != nil {
		wantKeys = append(wantKeys, listedKeys(known, addr)...)
	}
	for _, k := range wantKeys {
		for _, alg := range algorithmsFor(k.Type()) {
			if !slices.Contains(check.algorithms, alg) {
				check.algorithms = append(check.algorithms, alg)
			}
		}
	}

	check.callback = func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		if pinned != nil && keysEqual(pinned, key) {
			return nil
		}
		var want []ssh.PublicKey
		if pinned != nil {
			want = append(want, pinned)
		}
		var sources []string
		if pinned != nil {
			sources = append(sources, "the pinned key")
		}
		if known != nil {
			sources = append(sources, "known_hosts file "+c.KnownHosts)
			err := known(hostname, remote, key)
			if err == nil {
				return nil
			}
			var keyErr *knownhosts.KeyError
			var revokedErr *knownhosts.RevokedError
			switch {
			case errors.As(err, &keyErr):
				for _, k := range keyErr.Want {
					want = append(want, k.Key)
				}
			case errors.As(err, &revokedErr):
				return &HostKeyError{Addr: addr, Source: "known_hosts file " + c.KnownHosts, Got: key, Revoked: true}
			default:
				return fmt.Errorf("check host key of %s in known_hosts file %s: %w", addr, c.KnownHosts, err)
			}
		}
		return &HostKeyError{Addr: addr, Source: strings.Join(sources, " or "), Got: key, Want: want}
	}
	return check, nil
}

func keysEqual(a, b ssh.PublicKey) bool {
	return a.Type() == b.Type() && string(a.Marshal()) == string(b.Marshal())
}

// listedKeys returns the keys a known_hosts callback accepts for addr. It
// checks a key that no file lists, and the resulting KeyError contains
// the keys that would have matched.
func listedKeys(known ssh.HostKeyCallback, addr string) []ssh.PublicKey {
	probe, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		return nil
	}
	var keyErr *knownhosts.KeyError
	if !errors.As(known(addr, addressString(addr), probe), &keyErr) {
		return nil
	}
	var keys []ssh.PublicKey
	for _, k := range keyErr.Want {
		keys = append(keys, k.Key)
	}
	return keys
}

// algorithmsFor returns the host key algorithms that produce signatures
// for a key of type keyType. An RSA key signs with SHA-2 or SHA-1.
func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// addressString is a net.Addr for a host:port string.
type addressString string

func (a addressString) Network() string { return "tcp" }
func (a addressString) String() string  { return string(a) }
