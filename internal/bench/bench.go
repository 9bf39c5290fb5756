// Package bench measures what cylo costs next to running a snippet
// directly on the host. It runs the same snippets on three kinds of path:
// on the host (the floor), through the guest agent as a host process
// (protocol cost without a VM), and in a fresh VM per run on each backend.
// For each path it measures single-run wall time (with the VM's phases),
// runs per second at several concurrency levels, and memory per VM and
// per agent. Report.WriteMarkdown turns the figures into the benchmark
// page.
//
// Timing belongs here and in `cylo bench`, never in pass/fail tests.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/backend"
)

// Config configures Run. Zero fields take the defaults stated on them.
type Config struct {
	// Runs is how many measured runs make each figure, after one
	// unmeasured warm-up run. For throughput it is the number of rounds
	// per concurrency level. Default 5.
	Runs int
	// Concurrency lists the numbers of concurrent runs whose throughput
	// is measured. Default 1, 2, 4, 8.
	Concurrency []int
	// Backends lists the VM backends to measure, by backend name. A
	// backend that is not usable on this host is reported as not
	// measured, with the reason. Default qemu and firecracker.
	Backends []string
	// Backend configures the backends and locates the image and the
	// cylo-agent binary, which also runs as the host-process agent.
	Backend backend.Options
	// Progress receives one line per measured run. Nil discards them.
	Progress io.Writer
}

func (c Config) withDefaults() (Config, error) {
	if c.Runs == 0 {
		c.Runs = 5
	}
	if c.Runs < 0 {
		return c, fmt.Errorf("runs is %d: use a positive number", c.Runs)
	}
	if len(c.Concurrency) == 0 {
		c.Concurrency = []int{1, 2, 4, 8}
	}
	for _, n := range c.Concurrency {
		if n < 1 || n > 64 {
			return c, fmt.Errorf("concurrency %d is out of range: use 1 to 64", n)
		}
	}
	if len(c.Backends) == 0 {
		c.Backends = []string{backend.QEMU, backend.Firecracker}
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Backend.Logger == nil {
		c.Backend.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Backend.BootTimeout == 0 {
		// Eight concurrent TCG guests on two cores boot in tens of
		// seconds, not the few seconds of one.
		c.Backend.BootTimeout = 3 * time.Minute
	}
	return c, nil
}

// throughputLanguage is the snippet used for throughput and memory.
const throughputLanguage = cylo.Python

// Report is the outcome of Run.
type Report struct {
	Started, Finished time.Time
	Runs              int
	Concurrency       []int
	Machine           Machine
	// Load is the host's load at the start, after each path and at the
	// end. Other VMs on the host make the figures slower.
	Load []LoadSample
	// Paths are the floor, the host-process agent and each measured
	// backend, in that order.
	Paths []*Path
	// NotMeasured lists backends that were requested but are not usable
	// here, with the reason.
	NotMeasured []NotMeasured
}

// NotMeasured is a backend Run skipped.
type NotMeasured struct {
	Backend, Reason string
}

// Path kinds.
const (
	KindFloor = "floor"
	KindAgent = "agent"
	KindVM    = "vm"
)

// Path is the figures of one way of running the snippets.
type Path struct {
	Kind  string
	Label string
	// Single is the wall time in seconds of one run, per language, as the
	// caller sees it: process start to exit for the floor, connect to
	// result for the agent, Backend.Run for a VM.
	Single map[cylo.Language]*Stats
	// GuestWall is the program's own wall time in seconds as the agent
	// measured it (Usage.Wall), per language. Empty for the floor.
	GuestWall map[cylo.Language]*Stats
	// Phases is each phase's duration in seconds, per language, in the
	// order PhaseNames lists them. Only VM paths have phases.
	Phases     map[cylo.Language]map[string]*Stats
	PhaseNames []string
	// Throughput is runs per second with N concurrent runs, keyed by N.
	Throughput map[int]*Stats
	// Memory is this path's memory figures in bytes.
	Memory []Memory
	// Accelerator, VMM and GuestKernel describe a VM path, from its
	// results' metadata.
	Accelerator, VMM, GuestKernel string
}

// Memory is one memory figure.
type Memory struct {
	Label string
	Bytes Stats
}

func newPath(kind, label string) *Path {
	return &Path{
		Kind: kind, Label: label,
		Single:     map[cylo.Language]*Stats{},
		GuestWall:  map[cylo.Language]*Stats{},
		Phases:     map[cylo.Language]map[string]*Stats{},
		Throughput: map[int]*Stats{},
	}
}

func (p *Path) stats(m map[cylo.Language]*Stats, language cylo.Language) *Stats {
	if m[language] == nil {
		m[language] = &Stats{}
	}
	return m[language]
}

func (p *Path) addPhases(language cylo.Language, phases []cylo.Phase) {
	if p.Phases[language] == nil {
		p.Phases[language] = map[string]*Stats{}
	}
	for _, phase := range phases {
		if !slices.Contains(p.PhaseNames, phase.Name) {
			p.PhaseNames = append(p.PhaseNames, phase.Name)
		}
		s := p.Phases[language][phase.Name]
		if s == nil {
			s = &Stats{}
			p.Phases[language][phase.Name] = s
		}
		s.addDuration(phase.Duration)
	}
}

func (p *Path) memory(label string) *Stats {
	for i := range p.Memory {
		if p.Memory[i].Label == label {
			return &p.Memory[i].Bytes
		}
	}
	p.Memory = append(p.Memory, Memory{Label: label})
	return &p.Memory[len(p.Memory)-1].Bytes
}

// Run measures every path and returns the report. It fails when a path
// cannot be set up (no agent binary, no floor interpreter) or its warm-up
// run fails. A measured run that fails is counted in its figure's Stats.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Report{Started: time.Now(), Runs: cfg.Runs, Concurrency: cfg.Concurrency}
	r.Machine = describeMachine(ctx)
	r.sampleLoad("start")

	floor, err := measureFloor(ctx, cfg)
	if err != nil {
		return nil, err
	}
	r.Paths = append(r.Paths, floor)
	r.sampleLoad("after the floor")

	agent, err := measureHostAgent(ctx, cfg)
	if err != nil {
		return nil, err
	}
	r.Paths = append(r.Paths, agent)
	r.sampleLoad("after the host-process agent")

	for _, name := range cfg.Backends {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		path, skipped, err := measureBackend(ctx, cfg, name)
		if err != nil {
			return nil, err
		}
		if skipped != nil {
			r.NotMeasured = append(r.NotMeasured, *skipped)
			continue
		}
		r.Paths = append(r.Paths, path)
		r.sampleLoad("after " + path.Label)
	}

	r.Finished = time.Now()
	return r, nil
}

// Floor returns the floor path.
func (r *Report) Floor() *Path {
	for _, p := range r.Paths {
		if p.Kind == KindFloor {
			return p
		}
	}
	return newPath(KindFloor, "floor")
}
