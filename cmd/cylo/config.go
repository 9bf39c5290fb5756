package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/backend"
	"github.com/cylo-dev/cylo/internal/sshexec"
)

// fileConfig is the config file, $XDG_CONFIG_HOME/cylo/config.yaml by
// default. Every key is also a flag of the same name with dashes; a flag
// given on the command line wins. Unknown keys are rejected.
type fileConfig struct {
	Backend        string `yaml:"backend"`
	Profile        string `yaml:"profile"`
	CacheDir       string `yaml:"cache_dir"`
	Agent          string `yaml:"agent"`
	QEMUBin        string `yaml:"qemu_bin"`
	Accelerator    string `yaml:"accelerator"`
	FirecrackerBin string `yaml:"firecracker_bin"`
	LogLevel       string `yaml:"log_level"`

	Transport   string        `yaml:"transport"`
	NetworkMode string        `yaml:"network_mode"`
	TAPName     string        `yaml:"tap_name"`
	BootTimeout time.Duration `yaml:"boot_timeout"`
	// SSH contributes the ssh_* keys (ssh_host, ssh_port, ssh_username,
	// ssh_key_path, ssh_password, ssh_agent, ssh_known_hosts,
	// ssh_host_key, ssh_insecure_ignore_host_key).
	SSH sshexec.Config `yaml:",inline"`

	// Run defaults for exec and run, in the flags' units ("30s", "512MiB").
	Timeout   time.Duration `yaml:"timeout"`
	Memory    string        `yaml:"memory"`
	MaxOutput string        `yaml:"max_output"`
	Disk      string        `yaml:"disk"`
	MaxProcs  int           `yaml:"max_procs"`
	VCPUs     int           `yaml:"vcpus"`
}

// passwordEnv is the environment variable read for ssh_password when no
// flag sets it. It wins over the config file.
const passwordEnv = "CYLO_SSH_PASSWORD"

// globalFlags are the flags every command takes.
type globalFlags struct {
	configPath string
	cfg        fileConfig
	// file is the config file as read, for the run defaults that exec and
	// run apply to their own flags.
	file fileConfig
}

func (g *globalFlags) register(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&g.configPath, "config", "", "config file (default $XDG_CONFIG_HOME/cylo/config.yaml, if it exists)")
	f.StringVar(&g.cfg.Backend, "backend", "", "backend: qemu, firecracker or auto (default auto: the first usable of firecracker, qemu)")
	f.StringVar(&g.cfg.Profile, "profile", "", "guest image profile: base, full (adds go and rust) or ssh (default base; full for go and rust)")
	f.StringVar(&g.cfg.CacheDir, "cache-dir", "", "directory of built images (default $XDG_CACHE_HOME/cylo/images)")
	f.StringVar(&g.cfg.Agent, "agent", "", "cylo-agent binary to put in images (default: next to cylo, else on PATH)")
	f.StringVar(&g.cfg.QEMUBin, "qemu-bin", "", "QEMU binary (default qemu-system-x86_64)")
	f.StringVar(&g.cfg.Accelerator, "accelerator", "", "QEMU accelerator: kvm or tcg (default: kvm when usable, else tcg)")
	f.StringVar(&g.cfg.FirecrackerBin, "firecracker-bin", "", "firecracker binary (default: firecracker on PATH)")
	f.StringVar(&g.cfg.LogLevel, "log-level", "", "log level on stderr: debug, info, warn or error (default warn)")
	g.registerTransport(f)
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		g.loadPasswordEnv(cmd.Flags())
		return g.load(cmd)
	}
}

// load reads the config file and fills every field no flag set.
func (g *globalFlags) load(cmd *cobra.Command) error {
	path := g.configPath
	if path == "" {
		dir, err := os.UserConfigDir()
		if err != nil {
			return nil
		}
		path = filepath.Join(dir, "cylo", "config.yaml")
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	var file fileConfig
	decoder := yaml.NewDecoder(bytes.NewReader(data))
	decoder.KnownFields(true)
	if err := decoder.Decode(&file); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w (keys are the flag names with underscores, such as backend, timeout, ssh_host)", path, err)
	}
	g.file = file
	flags := cmd.Flags()
	fill := func(flag string, dst *string, value string) {
		if !flags.Changed(flag) && value != "" {
			*dst = value
		}
	}
	fill("backend", &g.cfg.Backend, file.Backend)
	fill("profile", &g.cfg.Profile, file.Profile)
	fill("cache-dir", &g.cfg.CacheDir, file.CacheDir)
	fill("agent", &g.cfg.Agent, file.Agent)
	fill("qemu-bin", &g.cfg.QEMUBin, file.QEMUBin)
	fill("accelerator", &g.cfg.Accelerator, file.Accelerator)
	fill("firecracker-bin", &g.cfg.FirecrackerBin, file.FirecrackerBin)
	fill("log-level", &g.cfg.LogLevel, file.LogLevel)
	g.loadTransport(flags, file)
	return nil
}

func (g *globalFlags) logger() *slog.Logger {
	level := slog.LevelWarn
	if g.cfg.LogLevel != "" {
		if err := level.UnmarshalText([]byte(g.cfg.LogLevel)); err != nil {
			level = slog.LevelWarn
		}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// backendOptions returns the options for profile (the flag's when set).
func (g *globalFlags) backendOptions(profile string) backend.Options {
	if g.cfg.Profile != "" {
		profile = g.cfg.Profile
	}
	if profile == "" && g.cfg.Transport != cylo.TransportSSH {
		profile = "base"
	}
	if profile == "" && g.cfg.Transport == cylo.TransportSSH {
		profile = "ssh"
	}
	return backend.Options{
		Transport:         g.cfg.Transport,
		SSH:               g.cfg.SSH,
		Network:           g.cfg.NetworkMode,
		TAPName:           g.cfg.TAPName,
		BootTimeout:       g.cfg.BootTimeout,
		Profile:           profile,
		CacheDir:          g.cfg.CacheDir,
		AgentPath:         g.cfg.Agent,
		QEMUBinary:        g.cfg.QEMUBin,
		Accelerator:       g.cfg.Accelerator,
		FirecrackerBinary: g.cfg.FirecrackerBin,
		Logger:            g.logger(),
	}
}
