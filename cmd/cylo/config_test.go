package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// parseWithConfig runs flag parsing and config loading of exec as the CLI
// does, without running anything.
func parseWithConfig(t *testing.T, config string, args ...string) (*globalFlags, *execFlags, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	exec := &cobra.Command{Use: "exec"}
	g := &globalFlags{}
	f := &execFlags{}
	g.register(exec)
	f.register(exec)
	if err := exec.ParseFlags(append([]string{"--config", path}, args...)); err != nil {
		t.Fatal(err)
	}
	if err := g.load(exec); err != nil {
		return g, f, err
	}
	f.applyFile(exec, g.file)
	return g, f, nil
}

func TestConfigFileRunDefaults(t *testing.T) {
	g, f, err := parseWithConfig(t, "backend: qemu\ntimeout: 7s\nmemory: 96MiB\nmax_procs: 20\n", "--memory", "128MiB")
	if err != nil {
		t.Fatal(err)
	}
	if g.cfg.Backend != "qemu" {
		t.Errorf("backend = %q, want qemu from the file", g.cfg.Backend)
	}
	if f.timeout != 7*time.Second {
		t.Errorf("timeout = %s, want 7s from the file", f.timeout)
	}
	if f.memory != "128MiB" {
		t.Errorf("memory = %q, want the flag's 128MiB over the file's", f.memory)
	}
	if f.maxProcs != 20 {
		t.Errorf("max procs = %d, want 20 from the file", f.maxProcs)
	}
}

func TestConfigFileRejectsUnknownKey(t *testing.T) {
	_, _, err := parseWithConfig(t, "backnd: qemu\n")
	if err == nil || !strings.Contains(err.Error(), "backnd") {
		t.Errorf("err = %v, want one naming the unknown key backnd", err)
	}
}
