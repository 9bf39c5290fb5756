package bench

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/backend"
	"github.com/cylo-dev/cylo/internal/kvm"
)

// outcome is one measured run.
type outcome struct {
	wall   time.Duration
	result *cylo.Result // nil for the floor
	maxRSS int64        // the floor's peak RSS
}

// runFunc runs s once on one path.
type runFunc func(ctx context.Context, s snippet) (outcome, error)

// measureSingle records cfg.Runs runs of every snippet on p, after one
// unmeasured warm-up run per snippet that fills the page cache.
func measureSingle(ctx context.Context, cfg Config, p *Path, run runFunc, record func(s snippet, o outcome)) error {
	for _, s := range snippets {
		if _, err := run(ctx, s); err != nil {
			return fmt.Errorf("%s: warm-up run of %s: %w", p.Label, s.language, err)
		}
		for i := 1; i <= cfg.Runs; i++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			o, err := run(ctx, s)
			if err != nil {
				p.stats(p.Single, s.language).fail(err)
				fmt.Fprintf(cfg.Progress, "%s, %s, run %d/%d: failed: %v\n", p.Label, s.language, i, cfg.Runs, err)
				continue
			}
			p.stats(p.Single, s.language).addDuration(o.wall)
			if o.result != nil {
				p.stats(p.GuestWall, s.language).addDuration(o.result.Usage.Wall)
			}
			if record != nil {
				record(s, o)
			}
			fmt.Fprintf(cfg.Progress, "%s, %s, run %d/%d: %s\n", p.Label, s.language, i, cfg.Runs, formatSeconds(o.wall.Seconds()))
		}
	}
	return nil
}

// measureThroughput records, for each concurrency level N, cfg.Runs
// rounds that each start N workers at once and wait for all of them. Each
// worker does perWorker runs back to back. A round's figure is its
// successful runs divided by its wall time.
func measureThroughput(ctx context.Context, cfg Config, p *Path, perWorker int, run runFunc, record func(n int, o outcome)) error {
	s, _ := snippetFor(throughputLanguage)
	for _, n := range cfg.Concurrency {
		stats := &Stats{}
		p.Throughput[n] = stats
		for round := 1; round <= cfg.Runs; round++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			var mu sync.Mutex
			var wg sync.WaitGroup
			succeeded := 0
			start := time.Now()
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range perWorker {
						o, err := run(ctx, s)
						mu.Lock()
						if err != nil {
							stats.fail(err)
						} else {
							succeeded++
							if record != nil {
								record(n, o)
							}
						}
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			wall := time.Since(start)
			stats.add(float64(succeeded) / wall.Seconds())
			fmt.Fprintf(cfg.Progress, "%s, %d concurrent, round %d/%d: %d runs in %s\n", p.Label, n, round, cfg.Runs, succeeded, formatSeconds(wall.Seconds()))
		}
	}
	return nil
}

// hostRunsPerWorker is how many runs each worker of a throughput round
// does on the floor and the host-process agent. Their runs take
// milliseconds, so a round of one run each would mostly time goroutine
// and process start jitter.
const hostRunsPerWorker = 20

// measureFloor runs the snippets directly on the host.
func measureFloor(ctx context.Context, cfg Config) (*Path, error) {
	p := newPath(KindFloor, "floor: host process, no sandbox")
	run := func(ctx context.Context, s snippet) (outcome, error) {
		r, err := runOnHost(ctx, s)
		return outcome{wall: r.wall, maxRSS: r.maxRSS}, err
	}
	recordRSS := func(s snippet, o outcome) {
		if s.language == throughputLanguage {
			p.memory(memoryFloor).add(float64(o.maxRSS))
		}
	}
	if err := measureSingle(ctx, cfg, p, run, recordRSS); err != nil {
		return nil, err
	}
	return p, measureThroughput(ctx, cfg, p, hostRunsPerWorker, run, nil)
}

// Memory figure labels.
const (
	memoryFloor      = "interpreter peak RSS (getrusage)"
	memoryHostAgent  = "host-process agent RSS, idle after the runs"
	memoryGuestAgent = "guest agent RSS at boot (reported in its health check)"
	memoryVMM        = "VMM RSS per live VM, one at a time"
	memoryVMMLoaded  = "VMM RSS per live VM, %d concurrent"
)

// measureHostAgent runs the snippets through cylo-agent as a host process.
func measureHostAgent(ctx context.Context, cfg Config) (*Path, error) {
	binary, err := backend.FindAgent(cfg.Backend.AgentPath)
	if err != nil {
		return nil, err
	}
	agent, err := startHostAgent(ctx, binary)
	if err != nil {
		return nil, err
	}
	defer agent.stop()

	p := newPath(KindAgent, "agent protocol: host-process agent, no VM")
	run := func(ctx context.Context, s snippet) (outcome, error) {
		start := time.Now()
		res, err := agent.run(ctx, s)
		return outcome{wall: time.Since(start), result: res}, err
	}
	if err := measureSingle(ctx, cfg, p, run, nil); err != nil {
		return nil, err
	}
	if err := measureThroughput(ctx, cfg, p, hostRunsPerWorker, run, nil); err != nil {
		return nil, err
	}
	p.memory(memoryHostAgent).add(float64(agent.rss()))
	return p, agent.stop()
}

// measureBackend boots a VM per run on the backend called name. It
// returns a NotMeasured when the backend is not usable on this host.
func measureBackend(ctx context.Context, cfg Config, name string) (*Path, *NotMeasured, error) {
	b, err := backend.New(name, cfg.Backend)
	if err != nil {
		return nil, nil, err
	}
	if h := b.Health(ctx); !h.Usable {
		return nil, &NotMeasured{Backend: name, Reason: notUsableReason(name, cfg.Backend, h)}, nil
	}

	p := newPath(KindVM, name+": cold run, one fresh VM per run")
	var mu sync.Mutex
	run := func(ctx context.Context, s snippet) (outcome, error) {
		start := time.Now()
		res, err := cylo.Run(ctx, b, s.request())
		wall := time.Since(start)
		if err != nil {
			return outcome{}, err
		}
		if err := checkOutput(res); err != nil {
			return outcome{}, fmt.Errorf("%s in a %s VM: %w", s.language, name, err)
		}
		mu.Lock()
		p.Accelerator, p.VMM, p.GuestKernel = res.Metadata.Accelerator, res.Metadata.VMM+" "+res.Metadata.VMMVersion, res.Metadata.Kernel
		mu.Unlock()
		return outcome{wall: wall, result: res}, nil
	}
	recordSingle := func(s snippet, o outcome) {
		p.addPhases(s.language, o.result.Usage.Phases)
		if s.language != throughputLanguage {
			return
		}
		p.memory(memoryVMM).add(float64(o.result.Usage.VMMRSSBytes))
		if o.result.Usage.AgentRSSBytes > 0 {
			p.memory(memoryGuestAgent).add(float64(o.result.Usage.AgentRSSBytes))
		}
	}
	if err := measureSingle(ctx, cfg, p, run, recordSingle); err != nil {
		return nil, nil, err
	}

	maxN := slices.Max(cfg.Concurrency)
	recordLoaded := func(n int, o outcome) {
		if n == maxN && n > 1 {
			p.memory(fmt.Sprintf(memoryVMMLoaded, n)).add(float64(o.result.Usage.VMMRSSBytes))
		}
	}
	if err := measureThroughput(ctx, cfg, p, 1, run, recordLoaded); err != nil {
		return nil, nil, err
	}
	if p.Accelerator != "" {
		p.Label = fmt.Sprintf("%s (%s): cold run, one fresh VM per run", name, p.Accelerator)
	}
	return p, nil, nil
}

// notUsableReason names every missing piece for Firecracker (binary and
// KVM), where Health stops at the first, and Health's reason otherwise.
func notUsableReason(name string, o backend.Options, h cylo.Health) string {
	if name != backend.Firecracker {
		return h.Reason
	}
	var reasons []string
	binary := o.FirecrackerBinary
	if binary == "" {
		binary = "firecracker"
	}
	if _, err := exec.LookPath(binary); err != nil {
		reasons = append(reasons, fmt.Sprintf("no Firecracker binary (%q not found)", binary))
	}
	if st := kvm.Check(); !st.Usable {
		if st.Module == kvm.ModulePVM {
			reasons = append(reasons, st.Device+" is kvm_pvm, which cannot boot standard guest kernels")
		} else {
			reasons = append(reasons, st.Reason)
		}
	}
	if len(reasons) == 0 {
		return h.Reason
	}
	return strings.Join(reasons, " and ")
}
