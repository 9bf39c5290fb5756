package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/backend"
	"github.com/cylo-dev/cylo/internal/lang"
	"github.com/cylo-dev/cylo/internal/vmstate"
)

// execFlags are the flags of exec and run.
type execFlags struct {
	language  string
	timeout   time.Duration
	memory    string
	vcpus     int
	maxProcs  int
	maxOutput string
	disk      string
	env       []string
	dir       string
	jsonOut   bool
	network   bool
	// skipHealth runs on a named backend whose health check fails, such
	// as the firecracker backend with its test double on a host without
	// KVM.
	skipHealth bool
}

func (f *execFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVarP(&f.language, "lang", "l", "", "language: "+strings.Join(lang.Names(), ", "))
	fs.DurationVar(&f.timeout, "timeout", cylo.DefaultTimeout, "wall-clock limit of the program inside the guest (boot time not included)")
	fs.StringVar(&f.memory, "memory", "256MiB", "memory limit of the program, e.g. 512MiB or 1GiB")
	fs.IntVar(&f.vcpus, "vcpus", cylo.DefaultVCPUs, "virtual CPUs of the guest")
	fs.IntVar(&f.maxProcs, "max-procs", cylo.DefaultMaxProcesses, "limit on processes and threads of the program")
	fs.StringVar(&f.maxOutput, "max-output", "4MiB", "stdout plus stderr kept before the program is stopped")
	fs.StringVar(&f.disk, "disk", "512MiB", "size of the guest's writable scratch disk")
	fs.StringArrayVarP(&f.env, "env", "e", nil, "environment variable NAME=VALUE for the program (repeatable)")
	fs.StringVar(&f.dir, "dir", "/work", "working directory in the guest")
	fs.BoolVar(&f.jsonOut, "json", false, "print the whole result as JSON on stdout (output bytes encoded, see README)")
	fs.BoolVar(&f.network, "network", false, "give the guest a network interface (off by default)")
	fs.BoolVar(&f.skipHealth, "skip-health-check", false, "run on the --backend named even when its health check fails (for test doubles and diagnosis)")
}

// applyFile takes the run defaults of the config file for every flag the
// command line did not set.
func (f *execFlags) applyFile(cmd *cobra.Command, file fileConfig) {
	flags := cmd.Flags()
	set := func(flag string, apply func()) {
		if !flags.Changed(flag) {
			apply()
		}
	}
	if file.Timeout != 0 {
		set("timeout", func() { f.timeout = file.Timeout })
	}
	if file.Memory != "" {
		set("memory", func() { f.memory = file.Memory })
	}
	if file.MaxOutput != "" {
		set("max-output", func() { f.maxOutput = file.MaxOutput })
	}
	if file.Disk != "" {
		set("disk", func() { f.disk = file.Disk })
	}
	if file.MaxProcs != 0 {
		set("max-procs", func() { f.maxProcs = file.MaxProcs })
	}
	if file.VCPUs != 0 {
		set("vcpus", func() { f.vcpus = file.VCPUs })
	}
}

// request builds the request from the flags; code is the program text.
func (f *execFlags) request(language cylo.Language, code string) (*cylo.Request, error) {
	req := &cylo.Request{
		Language: language,
		Code:     code,
		Dir:      f.dir,
		Timeout:  f.timeout,
		Network:  f.network,
	}
	sizes := []struct {
		flag, value string
		dst         *int64
	}{
		{"--memory", f.memory, &req.Limits.MemoryBytes},
		{"--max-output", f.maxOutput, &req.Limits.MaxOutputBytes},
		{"--disk", f.disk, &req.Limits.DiskBytes},
	}
	for _, s := range sizes {
		n, err := parseSize(s.value)
		if err != nil {
			return nil, fmt.Errorf("invalid %s %q: %w", s.flag, s.value, err)
		}
		*s.dst = n
	}
	if f.timeout <= 0 {
		return nil, fmt.Errorf("invalid --timeout %s: must be positive, e.g. 10s", f.timeout)
	}
	req.Limits.VCPUs = f.vcpus
	req.Limits.MaxProcesses = f.maxProcs
	if len(f.env) > 0 {
		req.Env = make(map[string]string)
		for _, kv := range f.env {
			name, value, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("invalid --env %q: use NAME=VALUE", kv)
			}
			req.Env[name] = value
		}
	}
	return req.WithDefaults()
}

func newExecCommand(g *globalFlags) *cobra.Command {
	f := &execFlags{}
	cmd := &cobra.Command{
		Use:   "exec --lang LANG CODE",
		Short: "Run a code snippet in a fresh microVM",
		Long: `Run CODE, or the code read from standard input when CODE is "-", in a
fresh microVM. The program's stdout and stderr go to cylo's stdout and
stderr, and cylo exits with the program's exit code (128+N for signal N).
When CODE is given and stdin is not a terminal, stdin is forwarded to the
program; otherwise the program reads EOF.`,
		Example: `  cylo exec --lang python 'import sys; print(6*7); sys.exit(3)'
  echo 'console.log(1)' | cylo exec --lang javascript -
  cylo exec --lang bash --json 'echo hi'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("exec takes one argument, the code (or - to read it from stdin); got %d", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			f.applyFile(cmd, g.file)
			if f.language == "" {
				return fmt.Errorf("missing --lang: use one of %s", strings.Join(lang.Names(), ", "))
			}
			code, stdin, err := codeAndStdin(args[0])
			if err != nil {
				return err
			}
			return runSnippet(cmd.Context(), g, f, cylo.Language(f.language), code, stdin)
		},
	}
	f.register(cmd)
	return cmd
}

func newRunCommand(g *globalFlags) *cobra.Command {
	f := &execFlags{}
	cmd := &cobra.Command{
		Use:   "run FILE",
		Short: "Run a source file in a fresh microVM; the language comes from its extension",
		Long: `Run the source file FILE in a fresh microVM. The language comes from the
extension (.sh, .py, .js, .go, .rs) unless --lang is given. Stdin is
forwarded when it is not a terminal.`,
		Example: `  cylo run hello.py
  cylo run --timeout 5s --memory 128MiB main.go`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("run takes one argument, the source file; got %d", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			f.applyFile(cmd, g.file)
			language := cylo.Language(f.language)
			if language == "" {
				var err error
				if language, err = cylo.LanguageForFile(args[0]); err != nil {
					return err
				}
			}
			code, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return runSnippet(cmd.Context(), g, f, language, string(code), forwardedStdin())
		},
	}
	f.register(cmd)
	return cmd
}

// codeAndStdin returns the code given as an argument ("-" reads it from
// stdin) and the stdin to forward.
func codeAndStdin(arg string) (string, io.Reader, error) {
	if arg != "-" {
		return arg, forwardedStdin(), nil
	}
	code, err := io.ReadAll(os.Stdin)
	if err != nil {
		return "", nil, fmt.Errorf("read code from stdin: %w", err)
	}
	return string(code), nil, nil
}

// forwardedStdin returns os.Stdin unless it is a terminal: a program run
// from an interactive shell reads EOF instead of waiting for the keyboard.
func forwardedStdin() io.Reader {
	if term.IsTerminal(int(os.Stdin.Fd())) {
		return nil
	}
	return os.Stdin
}

func runSnippet(ctx context.Context, g *globalFlags, f *execFlags, language cylo.Language, code string, stdin io.Reader) error {
	req, err := f.request(language, code)
	if err != nil {
		return err
	}
	req.Stdin = stdin
	logger := g.logger()
	reclaimStale(ctx, logger)

	profile := ""
	if language == cylo.Go || language == cylo.Rust {
		profile = "full"
	}
	b, err := chooseBackend(ctx, g, g.backendOptions(profile), f.skipHealth)
	if err != nil {
		return err
	}
	result, err := cylo.Run(ctx, b, req)
	if err != nil {
		if ctx.Err() != nil {
			return &exitError{code: 130}
		}
		return err
	}
	if f.jsonOut {
		if err := writeJSONResult(os.Stdout, result); err != nil {
			return err
		}
	} else {
		os.Stdout.Write(result.Stdout)
		os.Stderr.Write(result.Stderr)
		if note := limitNote(req, result); note != "" {
			fmt.Fprintln(os.Stderr, "cylo:", note)
		}
	}
	if result.ExitCode != 0 {
		return &exitError{code: result.ExitCode}
	}
	return nil
}

// limitNote names the limit that ended the run, for a user reading a
// terminal.
func limitNote(req *cylo.Request, r *cylo.Result) string {
	var notes []string
	switch r.LimitHit {
	case cylo.LimitTimeout:
		notes = append(notes, fmt.Sprintf("timed out after %s (--timeout)", req.Timeout))
	case cylo.LimitMemory:
		notes = append(notes, fmt.Sprintf("killed: out of memory at the %s limit (--memory)", formatSize(req.Limits.MemoryBytes)))
	case cylo.LimitPids:
		notes = append(notes, fmt.Sprintf("hit the limit of %d processes (--max-procs)", req.Limits.MaxProcesses))
	}
	if r.Truncated {
		notes = append(notes, fmt.Sprintf("output truncated at %s (--max-output)", formatSize(req.Limits.MaxOutputBytes)))
	}
	return strings.Join(notes, "; ")
}

// chooseBackend returns the backend the flags name, or the first usable.
func chooseBackend(ctx context.Context, g *globalFlags, o backend.Options, skipHealth bool) (cylo.Backend, error) {
	name := g.cfg.Backend
	if name == "" || name == "auto" {
		b, tried, err := backend.Auto(ctx, o)
		if err != nil {
			var lines []string
			for _, h := range tried {
				lines = append(lines, fmt.Sprintf("  %s: %s", h.Backend, h.Reason))
			}
			return nil, fmt.Errorf("%w\n%s", err, strings.Join(lines, "\n"))
		}
		return b, nil
	}
	b, err := backend.New(name, o)
	if err != nil {
		return nil, err
	}
	if h := b.Health(ctx); !h.Usable {
		if !skipHealth {
			return nil, fmt.Errorf("backend %s is not usable: %s (cylo doctor shows details)", name, h.Reason)
		}
		o.Logger.Warn("running although the health check failed (--skip-health-check)", "backend", name, "reason", h.Reason)
	}
	return b, nil
}

// reclaimStale removes what killed cylo processes left behind: VMM
// processes, sockets and runtime directories.
func reclaimStale(ctx context.Context, logger *slog.Logger) {
	store, err := vmstate.Open("")
	if err != nil {
		return
	}
	if _, err := store.GC(ctx, logger); err != nil {
		logger.Warn("reclaiming stale VMs failed", "err", err)
	}
}
