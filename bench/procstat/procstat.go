// Package procstat reads what a live process has used from /proc: its CPU
// time and its resident memory. Benchmarks use it to report muster's
// processes and the anchors' alike.
package procstat

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// CPU is the user+system CPU time process pid (not its children) used so
// far, from /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s on
// Linux); 0 when it cannot be read.
func CPU(pid int) time.Duration {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; the fields after it are
	// numbers.
	rest := string(data)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest) // f[0] is field 3
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// Memory is process pid's resident memory now (VmRSS) and at its peak
// (VmHWM), in bytes, from /proc/PID/status; 0 for what cannot be read.
func Memory(pid int) (rss, peak int64) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0
	}
	kb := func(v string) int64 {
		n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		return n << 10
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss = kb(v)
		} else if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			peak = kb(v)
		}
	}
	return rss, peak
}
