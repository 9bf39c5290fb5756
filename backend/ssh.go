package backend

import (
	"github.com/cylo-dev/cylo/internal/image"
	"github.com/cylo-dev/cylo/internal/sshexec"
)

// sshWithImage fills the settings of cfg that the user left empty from
// an ssh profile image: the host key the builder recorded, and the client
// key it generated when no key file, password or agent is set. Other
// images leave cfg unchanged.
func sshWithImage(cfg sshexec.Config, img *image.Image) sshexec.Config {
	if img.Profile != image.ProfileSSH {
		return cfg
	}
	if cfg.KnownHosts == "" && cfg.HostKey == "" && !cfg.InsecureIgnoreHostKey {
		cfg.HostKey = img.HostKeyPub
	}
	if cfg.KeyPath == "" && cfg.Password == "" && !cfg.Agent {
		cfg.KeyPath = img.ClientKey
	}
	return cfg
}
