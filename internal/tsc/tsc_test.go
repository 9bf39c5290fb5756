package tsc

import (
	"runtime"
	"testing"
)

func TestHostKHz(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("TSC reading is amd64 only")
	}
	got, err := HostKHz()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host TSC: %d kHz", got)
	// Any x86-64 CPU of the last two decades runs its TSC between 1 and
	// 6 GHz.
	if got < 1_000_000 || got > 6_000_000 {
		t.Fatalf("HostKHz = %d, want between 1e6 and 6e6", got)
	}
	again, _ := HostKHz()
	if again != got {
		t.Errorf("second call = %d, want the cached %d", again, got)
	}
}
