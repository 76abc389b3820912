package procstat

import (
	"os"
	"runtime"
	"testing"
)

// This process has used some CPU and holds some memory, its peak at least
// what it holds now.
func TestSelf(t *testing.T) {
	pid := os.Getpid()
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	if cpu := CPU(pid); cpu <= 0 {
		t.Errorf("CPU(self) = %v, want > 0", cpu)
	}
	rss, peak := Memory(pid)
	if rss < 32<<20 || peak < rss {
		t.Errorf("Memory(self) = rss %d, peak %d; want rss >= 32 MiB (a 64 MiB buffer is held) and peak >= rss", rss, peak)
	}
	runtime.KeepAlive(buf)
	if cpu := CPU(-1); cpu != 0 {
		t.Errorf("CPU of no process = %v, want 0", cpu)
	}
	if rss, peak := Memory(-1); rss != 0 || peak != 0 {
		t.Errorf("Memory of no process = %d, %d; want 0, 0", rss, peak)
	}
}
