package bench

import (
	"slices"
	"time"
)

// Stats summarises repeated measurements of one figure. The zero value
// means nothing was measured.
type Stats struct {
	N            int
	Median       float64
	Min, Max     float64
	Failed       int    // runs that returned an error and are not in N
	FirstFailure string // the first failed run's error
	values       []float64
}

// add records one measurement.
func (s *Stats) add(v float64) {
	s.values = append(s.values, v)
	s.summarise()
}

// addDuration records one measurement of a duration, in seconds.
func (s *Stats) addDuration(d time.Duration) { s.add(d.Seconds()) }

// fail records a failed run.
func (s *Stats) fail(err error) {
	if s.Failed == 0 {
		s.FirstFailure = err.Error()
	}
	s.Failed++
}

func (s *Stats) summarise() {
	sorted := slices.Clone(s.values)
	slices.Sort(sorted)
	s.N = len(sorted)
	if s.N == 0 {
		return
	}
	s.Min, s.Max = sorted[0], sorted[s.N-1]
	if s.N%2 == 1 {
		s.Median = sorted[s.N/2]
	} else {
		s.Median = (sorted[s.N/2-1] + sorted[s.N/2]) / 2
	}
}

// ratio returns s's median divided by floor's, or 0 when either is
// missing.
func ratio(s, floor Stats) float64 {
	if s.N == 0 || floor.N == 0 || floor.Median == 0 {
		return 0
	}
	return s.Median / floor.Median
}
