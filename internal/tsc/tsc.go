// Package tsc measures the host's time stamp counter (TSC) frequency.
//
// Under QEMU's TCG accelerator the guest reads the host's TSC, so the
// guest's TSC frequency is the host's. Pass it to a Linux guest on QEMU
// microvm with the tsc_early_khz= kernel parameter. Without it the kernel
// calibrates the TSC against the emulated PIT, which fails when the host is
// busy, and the boot then hangs before init runs. With Debian's 6.1 cloud
// kernel and QEMU 7.2 every boot hung while both host cores were busy.
package tsc

import (
	"errors"
	"slices"
	"sync"
	"time"
)

var (
	once    sync.Once
	khz     int64
	khzErr  error
	samples = 5
)

// HostKHz returns the host's TSC frequency in kHz, measured against the
// monotonic clock on the first call (about 50 ms) and cached after.
func HostKHz() (int64, error) {
	once.Do(func() { khz, khzErr = measure() })
	return khz, khzErr
}

// measure returns the median of several 10 ms samples, so one sample cut
// short or stretched by preemption does not skew the result.
func measure() (int64, error) {
	if !supported {
		return 0, errors.New("reading the TSC is supported on amd64 only")
	}
	rates := make([]int64, 0, samples)
	for range samples {
		t0, c0 := time.Now(), readTSC()
		time.Sleep(10 * time.Millisecond)
		c1, t1 := readTSC(), time.Now()
		ns := t1.Sub(t0).Nanoseconds()
		if ns <= 0 || c1 <= c0 {
			continue
		}
		rates = append(rates, int64((c1-c0)*1_000_000/uint64(ns)))
	}
	if len(rates) == 0 {
		return 0, errors.New("TSC did not advance during measurement")
	}
	slices.Sort(rates)
	return rates[len(rates)/2], nil
}
