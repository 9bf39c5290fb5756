package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cylo-dev/cylo/backend"
	"github.com/cylo-dev/cylo/internal/bench"
)

func newBenchCommand(g *globalFlags) *cobra.Command {
	var (
		cfg bench.Config
		out string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure cylo against the host floor and write the benchmark page",
		Long: `Measure the same snippets run directly on the host (the floor), through
the guest agent as a host process (no VM) and in a fresh VM per run on each
usable backend: single-run time with its phases, runs per second at each
concurrency level, and memory per VM and per agent. The figures are
written as Markdown to --out; the text under "Reading" in an existing page
is kept. Needs root and the base image, like cylo exec.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Backend = g.backendOptions("base")
			cfg.Progress = cmd.ErrOrStderr()
			report, err := bench.Run(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("benchmark: %w", err)
			}
			return writePage(out, report)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Runs, "runs", 5, "measured runs per figure, and rounds per concurrency level")
	f.IntSliceVar(&cfg.Concurrency, "concurrency", []int{1, 2, 4, 8}, "numbers of concurrent runs to measure throughput at")
	f.StringSliceVar(&cfg.Backends, "backends", []string{backend.QEMU, backend.Firecracker}, "VM backends to measure; one that is not usable here is listed as not measured")
	f.StringVar(&out, "out", "docs/benchmarks.md", "Markdown file to write")
	return cmd
}

// writePage writes the report to path through a temporary file, keeping
// the reading of the page it replaces.
func writePage(path string, report *bench.Report) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var page strings.Builder
	if err := report.WriteMarkdown(&page, bench.Reading(string(old))); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(page.String()), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	fmt.Fprintln(os.Stderr, "wrote", path)
	return nil
}
