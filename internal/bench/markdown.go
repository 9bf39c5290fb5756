package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/cylo-dev/cylo"
)

// Markers around the hand-written reading of the page. WriteMarkdown
// writes the text between them unchanged, so a regenerated page keeps it.
const (
	readingStart = "<!-- reading: written by hand, kept when the page is regenerated -->"
	readingEnd   = "<!-- /reading -->"
)

// Reading returns the hand-written text between the reading markers of
// an existing page, or "" when there is none.
func Reading(page string) string {
	_, rest, ok := strings.Cut(page, readingStart)
	if !ok {
		return ""
	}
	text, _, ok := strings.Cut(rest, readingEnd)
	if !ok {
		return ""
	}
	return strings.TrimSpace(text)
}

// phaseTitles are the column titles of the phases the drivers report.
var phaseTitles = map[string]string{
	"vmm_start": "VMM start + configure",
	"boot":      "boot to agent ready",
	"run":       "run",
	"teardown":  "teardown",
}

// WriteMarkdown writes the benchmark page. reading is the hand-written
// interpretation kept from the previous page (see Reading).
func (r *Report) WriteMarkdown(w io.Writer, reading string) error {
	var b strings.Builder
	floor := r.Floor()

	b.WriteString("# Benchmarks\n\n")
	paragraph(&b, "What cylo costs next to running the same snippet directly on the host. "+
		"`scripts/bench` regenerates this page: it builds cylo, ensures the base image and runs `cylo bench`. "+
		"Everything but the reading is generated.")
	paragraph(&b, fmt.Sprintf("Measured on %s UTC in %s. "+
		"Each figure is the median of %d measured runs after one unmeasured warm-up run, with the spread as (min–max). "+
		"A ratio (×) is the median divided by the floor's median for the same snippet.",
		r.Started.UTC().Format("2006-01-02 15:04"), formatSeconds(r.Finished.Sub(r.Started).Seconds()), r.Runs))

	r.writeMachine(&b)

	b.WriteString("## Reading\n\n" + readingStart + "\n")
	if reading != "" {
		b.WriteString(reading + "\n")
	} else {
		b.WriteString("(No reading written yet.)\n")
	}
	b.WriteString(readingEnd + "\n\n")

	r.writeTimeShares(&b, floor)
	r.writeSingle(&b, floor)
	r.writePhases(&b, floor)
	r.writeThroughput(&b, floor)
	r.writeMemory(&b, floor)
	r.writeNotMeasured(&b)
	r.writeFailures(&b)
	writeMethod(&b)

	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) writeMachine(b *strings.Builder) {
	b.WriteString("## Machine\n\n| | |\n|---|---|\n")
	fmt.Fprintf(b, "| CPU | %d cores, %s |\n", r.Machine.Cores, cell(r.Machine.CPUModel))
	fmt.Fprintf(b, "| memory | %s |\n", formatBytes(float64(r.Machine.MemoryBytes)))
	fmt.Fprintf(b, "| accelerator | %s |\n", cell(r.Machine.Accelerator))
	fmt.Fprintf(b, "| host kernel | %s |\n", cell(r.Machine.HostKernel))
	for _, p := range r.Paths {
		if p.Kind == KindVM {
			fmt.Fprintf(b, "| %s | %s, guest kernel %s |\n", cell(backendName(p)), cell(p.VMM), cell(p.GuestKernel))
		}
	}
	var versions []string
	for _, s := range snippets {
		if v := r.Machine.Interpreters[s.host[0]]; v != "" {
			versions = append(versions, v)
		}
	}
	fmt.Fprintf(b, "| floor interpreters | %s |\n", cell(strings.Join(versions, "; ")))
	var loads []string
	for _, l := range r.Load {
		loads = append(loads, fmt.Sprintf("%.2f %s (%d other VMMs)", l.Load1, l.When, l.OtherVMMs))
	}
	fmt.Fprintf(b, "| load (1-minute average, this run's own included) | %s |\n\n", cell(strings.Join(loads, "; ")))
}

// writeTimeShares writes the computed summary: the share of each phase in
// a cold run and the agent protocol's cost over the floor.
func (r *Report) writeTimeShares(b *strings.Builder, floor *Path) {
	b.WriteString("## Where the time goes\n\n")
	b.WriteString("Computed from the tables below, for the python snippet.\n\n")
	language := throughputLanguage
	floorWall := stat(floor.Single, language)
	for _, p := range r.Paths {
		single := stat(p.Single, language)
		if single.N == 0 || p.Kind == KindFloor {
			continue
		}
		if p.Kind == KindAgent {
			writeAgentShare(b, p, floor)
			continue
		}
		var parts []string
		for _, name := range p.PhaseNames {
			phase := p.Phases[language][name]
			if phase == nil || phase.N == 0 {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %s (%.0f%%)", phaseTitle(name), formatSeconds(phase.Median), 100*phase.Median/single.Median))
		}
		fmt.Fprintf(b, "- %s: %s per run (%s the floor): %s.", p.Label, formatSeconds(single.Median), formatRatio(ratio(single, floorWall)), strings.Join(parts, ", "))
		if guest := stat(p.GuestWall, language); guest.N > 0 {
			fmt.Fprintf(b, " The program itself ran for %s in the guest, %s its %s on the host.",
				formatSeconds(guest.Median), formatRatio(ratio(guest, floorWall)), formatSeconds(floorWall.Median))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

// writeAgentShare writes the difference between the host-process agent
// and the floor for every snippet.
func writeAgentShare(b *strings.Builder, agent, floor *Path) {
	var parts []string
	for _, s := range snippets {
		single, floorWall := stat(agent.Single, s.language), stat(floor.Single, s.language)
		if single.N == 0 || floorWall.N == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s against %s on the floor (%+.2f ms)",
			s.language, formatSeconds(single.Median), formatSeconds(floorWall.Median), 1000*(single.Median-floorWall.Median)))
	}
	fmt.Fprintf(b, "- %s, per run: %s.\n", agent.Label, strings.Join(parts, ", "))
}

func (r *Report) writeSingle(b *strings.Builder, floor *Path) {
	b.WriteString("## Single run\n\n")
	var listed []string
	for _, s := range snippets {
		listed = append(listed, fmt.Sprintf("%s `%s`", s.language, s.code))
	}
	paragraph(b, "Wall time of one run as its caller sees it. Snippets: "+strings.Join(listed, ", ")+".")
	b.WriteString("| path |")
	for _, s := range snippets {
		fmt.Fprintf(b, " %s |", s.language)
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(snippets)) + "\n")
	for _, p := range r.Paths {
		fmt.Fprintf(b, "| %s |", cell(p.Label))
		for _, s := range snippets {
			fmt.Fprintf(b, " %s |", timeCell(stat(p.Single, s.language), stat(floor.Single, s.language), p.Kind != KindFloor))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func (r *Report) writePhases(b *strings.Builder, floor *Path) {
	for _, p := range r.Paths {
		if p.Kind != KindVM {
			continue
		}
		fmt.Fprintf(b, "## Cold run phases: %s\n\n", backendName(p))
		b.WriteString("| snippet |")
		for _, name := range p.PhaseNames {
			fmt.Fprintf(b, " %s |", phaseTitle(name))
		}
		b.WriteString(" total | program wall in guest |\n|---|" + strings.Repeat("---|", len(p.PhaseNames)+2) + "\n")
		for _, s := range snippets {
			floorWall := stat(floor.Single, s.language)
			fmt.Fprintf(b, "| %s |", s.language)
			for _, name := range p.PhaseNames {
				phase := Stats{}
				if p.Phases[s.language] != nil && p.Phases[s.language][name] != nil {
					phase = *p.Phases[s.language][name]
				}
				fmt.Fprintf(b, " %s |", timeCell(phase, floorWall, name == "run"))
			}
			fmt.Fprintf(b, " %s | %s |\n", timeCell(stat(p.Single, s.language), floorWall, true), timeCell(stat(p.GuestWall, s.language), floorWall, true))
		}
		b.WriteString("\n")
		writePhaseNotes(b, p)
	}
}

func writePhaseNotes(b *strings.Builder, p *Path) {
	text := "Ratios to the floor are given for the run phase, the total and the program's own wall time."
	if slices.Contains(p.PhaseNames, "vmm_start") {
		text += " VMM start + configure is the runtime directory, the scratch disk and the VMM process start. " +
			"QEMU takes its whole configuration on the command line, so it has no separate configure step."
	} else {
		text += " Boot to agent ready includes the VMM start and its configuration (API calls), which this driver does not time apart."
	}
	text += " Boot to agent ready ends when the agent has responded to a health check and a clock sync. " +
		"Run is one exec request through the agent. " +
		"Teardown kills the VMM and removes its files. " +
		"Total is `Backend.Run` as the caller times it, so it also contains the work between phases."
	paragraph(b, text)
}

func (r *Report) writeThroughput(b *strings.Builder, floor *Path) {
	b.WriteString("## Throughput\n\n")
	paragraph(b, fmt.Sprintf("Runs per second of the %s snippet with N runs at once. "+
		"Each of the %d rounds per N starts N workers together and waits for all of them. "+
		"A worker on a VM path does one run, which boots one VM. "+
		"A worker on the floor or the host-process agent does %d runs back to back, because one run of a few milliseconds would mostly time process start jitter. "+
		"Scaling is the median at N divided by the median at N=%d.",
		throughputLanguage, r.Runs, hostRunsPerWorker, r.Concurrency[0]))
	b.WriteString("| path | N | runs/s | scaling | ratio to floor at the same N |\n|---|---|---|---|---|\n")
	for _, p := range r.Paths {
		base := p.Throughput[r.Concurrency[0]]
		for _, n := range r.Concurrency {
			s := p.Throughput[n]
			if s == nil {
				continue
			}
			scaling, vsFloor := "", ""
			if base != nil && base.N > 0 && base.Median > 0 {
				scaling = fmt.Sprintf("%.2f", s.Median/base.Median)
			}
			if f := floor.Throughput[n]; f != nil && p.Kind != KindFloor {
				vsFloor = formatRatio(ratio(*s, *f))
			}
			fmt.Fprintf(b, "| %s | %d | %s | %s | %s |\n", cell(p.Label), n, spread(*s, formatRate), scaling, vsFloor)
		}
	}
	b.WriteString("\n")
}

func (r *Report) writeMemory(b *strings.Builder, floor *Path) {
	b.WriteString("## Memory\n\n")
	paragraph(b, fmt.Sprintf("Resident set size of the %s snippet's runs. "+
		"The VMM's RSS is read on the host after the run, before teardown. "+
		"It contains the guest memory the guest has touched (the guest agent's among it) and, under TCG, QEMU's translated code. "+
		"The ratio divides by the floor interpreter's peak RSS.", throughputLanguage))
	b.WriteString("| path | figure | bytes | ratio to floor |\n|---|---|---|---|\n")
	var floorRSS Stats
	if len(floor.Memory) > 0 {
		floorRSS = floor.Memory[0].Bytes
	}
	for _, p := range r.Paths {
		for _, m := range p.Memory {
			vsFloor := ""
			if p.Kind != KindFloor {
				vsFloor = formatRatio(ratio(m.Bytes, floorRSS))
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s |\n", cell(p.Label), m.Label, spread(m.Bytes, formatBytes), vsFloor)
		}
	}
	b.WriteString("\n")
}

func (r *Report) writeNotMeasured(b *strings.Builder) {
	if len(r.NotMeasured) == 0 {
		return
	}
	b.WriteString("## Not measured here\n\n")
	for _, n := range r.NotMeasured {
		fmt.Fprintf(b, "- %s: %s.\n", n.Backend, strings.TrimSuffix(n.Reason, "."))
	}
	b.WriteString("\n")
}

func (r *Report) writeFailures(b *strings.Builder) {
	var lines []string
	add := func(p *Path, what string, s *Stats) {
		if s != nil && s.Failed > 0 {
			lines = append(lines, fmt.Sprintf("- %s, %s: %d failed runs, first: %s", p.Label, what, s.Failed, firstLine(s.FirstFailure)))
		}
	}
	for _, p := range r.Paths {
		for _, s := range snippets {
			add(p, string(s.language), p.Single[s.language])
		}
		for _, n := range r.Concurrency {
			add(p, fmt.Sprintf("%d concurrent", n), p.Throughput[n])
		}
	}
	if len(lines) == 0 {
		return
	}
	b.WriteString("## Failed runs\n\nFailed runs are left out of the figures above.\n\n")
	b.WriteString(strings.Join(lines, "\n") + "\n\n")
}

func writeMethod(b *strings.Builder) {
	b.WriteString(`## Method

- Floor: the interpreter started directly on the host with the code as an
  argument (` + "`bash -c`, `python3 -c`, `node -e`" + `), found in the PATH that the
  agent gives programs. Wall time is process start to exit.
- Agent protocol: cylo-agent as a host process on a Unix socket. One run
  connects, runs the health check and clock sync, sends one exec request
  and closes, which is what a VM run does once its guest is up. The agent
  writes the code to a file and runs it in a cgroup of its own when the
  host allows it.
- Cold run: ` + "`cylo.Run`" + ` on the backend with default limits (256 MiB for the
  program, 1 vCPU). Every run boots a fresh VM from the base image.
- The host's page cache is warm after the warm-up run, so no figure
  includes reading the image from disk.
`)
}

func backendName(p *Path) string {
	name, _, _ := strings.Cut(p.Label, ":")
	return name
}

func phaseTitle(name string) string {
	if title, ok := phaseTitles[name]; ok {
		return title
	}
	return name
}

func stat(m map[cylo.Language]*Stats, language cylo.Language) Stats {
	if s := m[language]; s != nil {
		return *s
	}
	return Stats{}
}

// timeCell formats a duration figure and, when withRatio is set, its
// ratio to floor.
func timeCell(s, floor Stats, withRatio bool) string {
	if s.N == 0 {
		return "—"
	}
	text := spread(s, formatSeconds)
	if withRatio && floor.N > 0 {
		text += ", " + formatRatio(ratio(s, floor))
	}
	return text
}

// spread formats the median and the range of s.
func spread(s Stats, format func(float64) string) string {
	if s.N == 0 {
		return "—"
	}
	if s.N == 1 {
		return format(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", format(s.Median), format(s.Min), format(s.Max))
}

func formatSeconds(seconds float64) string {
	ms := seconds * 1000
	switch {
	case math.Abs(ms) < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case math.Abs(ms) < 100:
		return fmt.Sprintf("%.1f ms", ms)
	case math.Abs(ms) < 1000:
		return fmt.Sprintf("%.0f ms", ms)
	case math.Abs(seconds) >= 120:
		return fmt.Sprintf("%.1f min", seconds/60)
	default:
		return fmt.Sprintf("%.2f s", seconds)
	}
}

func formatRate(perSecond float64) string {
	if perSecond < 10 {
		return fmt.Sprintf("%.2f", perSecond)
	}
	return fmt.Sprintf("%.0f", perSecond)
}

func formatBytes(bytes float64) string {
	return fmt.Sprintf("%.1f MiB", bytes/(1<<20))
}

func formatRatio(r float64) string {
	switch {
	case r == 0:
		return ""
	case r < 0.01:
		return fmt.Sprintf("%.2g×", r)
	case r < 10:
		return fmt.Sprintf("%.2f×", r)
	default:
		return fmt.Sprintf("%.0f×", r)
	}
}

// paragraph writes text wrapped at 72 columns, then a blank line.
func paragraph(b *strings.Builder, text string) {
	column := 0
	for i, word := range strings.Fields(text) {
		if i > 0 && column+1+len(word) > 72 {
			b.WriteString("\n")
			column = 0
		} else if i > 0 {
			b.WriteString(" ")
			column++
		}
		b.WriteString(word)
		column += len(word)
	}
	b.WriteString("\n\n")
}

// cell makes text safe inside a Markdown table cell.
func cell(text string) string {
	return strings.ReplaceAll(firstLine(text), "|", `\|`)
}

func firstLine(text string) string {
	line, _, _ := strings.Cut(text, "\n")
	return line
}
