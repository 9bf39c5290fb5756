package tsc

const supported = true

// readTSC returns the time stamp counter (RDTSC).
func readTSC() uint64
