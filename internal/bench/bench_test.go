package bench

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/backend"
)

func TestStatsMedianAndRange(t *testing.T) {
	tests := []struct {
		name                string
		values              []float64
		median, least, most float64
	}{
		{"odd count", []float64{3, 1, 2}, 2, 1, 3},
		{"even count", []float64{4, 1, 3, 2}, 2.5, 1, 4},
		{"one value", []float64{7}, 7, 7, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Stats
			for _, v := range tt.values {
				s.add(v)
			}
			if s.N != len(tt.values) {
				t.Errorf("N = %d, want %d", s.N, len(tt.values))
			}
			if s.Median != tt.median {
				t.Errorf("median = %v, want %v", s.Median, tt.median)
			}
			if s.Min != tt.least {
				t.Errorf("min = %v, want %v", s.Min, tt.least)
			}
			if s.Max != tt.most {
				t.Errorf("max = %v, want %v", s.Max, tt.most)
			}
		})
	}
}

func TestRatioMissingFloor(t *testing.T) {
	var s, floor Stats
	s.add(2)
	if got := ratio(s, floor); got != 0 {
		t.Errorf("ratio to an empty floor = %v, want 0", got)
	}
	floor.add(0.5)
	if got := ratio(s, floor); got != 4 {
		t.Errorf("ratio = %v, want 4", got)
	}
}

func TestReadingKeptAcrossPages(t *testing.T) {
	report := sampleReport()
	var first strings.Builder
	if err := report.WriteMarkdown(&first, "Boot dominates.\n\nSecond paragraph."); err != nil {
		t.Fatal(err)
	}
	got := Reading(first.String())
	if got != "Boot dominates.\n\nSecond paragraph." {
		t.Errorf("Reading = %q, want the text written", got)
	}
	if Reading("# no markers") != "" {
		t.Error("Reading of a page without markers is not empty")
	}
}

func TestMarkdownShowsRatiosAndGaps(t *testing.T) {
	var page strings.Builder
	if err := sampleReport().WriteMarkdown(&page, ""); err != nil {
		t.Fatal(err)
	}
	text := page.String()
	for _, want := range []string{
		"| floor: host process, no sandbox | — | 10.0 ms | — |",
		"2.00 s (1.00 s–3.00 s), 200×",                        // cold python total and its ratio
		"| boot to agent ready |",                             // the phase column title
		"| qemu (tcg): cold run | 1 | 0.50 | 1.00 | 0.005× |", // throughput ratio below 0.01
		"- firecracker: no Firecracker binary.",
		"1 failed runs, first: boot timed out",
		"python 12.0 ms against 10.0 ms on the floor (+2.00 ms)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("page lacks %q:\n%s", want, text)
		}
	}
}

// sampleReport is a report with fixed figures: a floor, a host-process
// agent, one QEMU path with a failed run, and a skipped Firecracker.
func sampleReport() *Report {
	r := &Report{Runs: 3, Concurrency: []int{1}, Started: time.Unix(0, 0), Finished: time.Unix(60, 0)}
	floor := newPath(KindFloor, "floor: host process, no sandbox")
	floor.stats(floor.Single, cylo.Python).add(0.010)
	floor.Throughput[1] = &Stats{}
	floor.Throughput[1].add(100)
	floor.memory(memoryFloor).add(10 << 20)

	agent := newPath(KindAgent, "agent protocol")
	agent.stats(agent.Single, cylo.Python).add(0.012)

	vm := newPath(KindVM, "qemu (tcg): cold run")
	vm.Accelerator = "tcg"
	for _, seconds := range []float64{1, 2, 3} {
		vm.stats(vm.Single, cylo.Python).add(seconds)
		vm.addPhases(cylo.Python, []cylo.Phase{{Name: "vmm_start", Duration: time.Millisecond}, {Name: "boot", Duration: time.Second}})
	}
	vm.stats(vm.Single, cylo.Python).fail(context.DeadlineExceeded)
	vm.Single[cylo.Python].FirstFailure = "boot timed out"
	vm.Throughput[1] = &Stats{}
	vm.Throughput[1].add(0.5)
	vm.memory(memoryVMM).add(300 << 20)

	r.Paths = []*Path{floor, agent, vm}
	r.NotMeasured = []NotMeasured{{Backend: "firecracker", Reason: "no Firecracker binary"}}
	return r
}

// The benchmarks time the two paths that need no VM. Run them with
// go test -bench . ./internal/bench; the page itself comes from cylo bench.

func BenchmarkFloor(b *testing.B) {
	for _, s := range snippets {
		b.Run(string(s.language), func(b *testing.B) {
			if _, err := lookPath(s.host[0]); err != nil {
				b.Skip(err)
			}
			for b.Loop() {
				if _, err := runOnHost(context.Background(), s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkHostAgent(b *testing.B) {
	binary, err := backend.FindAgent(os.Getenv("CYLO_AGENT"))
	if err != nil {
		b.Skipf("needs the cylo-agent binary: build it with scripts/build and set CYLO_AGENT: %v", err)
	}
	agent, err := startHostAgent(context.Background(), binary)
	if err != nil {
		b.Fatal(err)
	}
	defer agent.stop()
	for _, s := range snippets {
		b.Run(string(s.language), func(b *testing.B) {
			if _, err := lookPath(s.host[0]); err != nil {
				b.Skip(err)
			}
			for b.Loop() {
				if _, err := agent.run(context.Background(), s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
