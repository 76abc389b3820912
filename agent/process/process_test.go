package process

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestResultCodes(t *testing.T) {
	tests := []struct {
		name      string
		argv      []string
		code      int
		signal    string
		tailHas   string
		reasonHas string
	}{
		{"exit 0", []string{"true"}, 0, "", "", "exit code 0"},
		{"exit 7 with stderr", []string{"sh", "-c", "echo first >&2; echo boom >&2; exit 7"}, 7, "", "first\nboom", "exit code 7; stderr tail: first\nboom"},
		{"killed by a signal", []string{"sh", "-c", "kill -9 $$"}, 128 + 9, "killed", "", "killed by killed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Start(tc.argv, nil, io.Discard, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			r := p.Result()
			if r.Code != tc.code || !strings.Contains(r.Signal, tc.signal) || !strings.Contains(r.Tail, tc.tailHas) || !strings.Contains(r.Reason(), tc.reasonHas) {
				t.Fatalf("result %+v (reason %q), want code %d signal %q tail %q reason %q", r, r.Reason(), tc.code, tc.signal, tc.tailHas, tc.reasonHas)
			}
		})
	}
}

func TestStartFailureNamesTheCommand(t *testing.T) {
	_, err := Start([]string{"/no/such/runtime"}, nil, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "/no/such/runtime") {
		t.Fatalf("err = %v, want it to name the command", err)
	}
}

func TestStopEscalatesToSIGKILLAndEndsTheTree(t *testing.T) {
	// The shell ignores SIGTERM and has a child: both must be gone after Stop.
	// The shell says "ready" once its trap is set and its child forked.
	ready := newLineWaiter("ready")
	p, err := Start([]string{"sh", "-c", "trap '' TERM; sleep 300 & echo ready; wait"}, nil, ready, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ready.seen:
	case <-time.After(10 * time.Second):
		p.Stop(0)
		t.Fatal("the shell did not say ready within 10s")
	}
	start := time.Now()
	r := p.Stop(300 * time.Millisecond)
	if r.Signal != "killed" {
		t.Fatalf("result %+v, want killed after the grace period", r)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("stopped after %s, before the grace period", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		live := liveInGroup(t, p.Pid())
		if len(live) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v of group %d still run after Stop", live, p.Pid())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// liveInGroup lists the processes of group pgid that are not zombies
// (a zombie is dead; reaping it is init's business).
func liveInGroup(t *testing.T, pgid int) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var live []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			live = append(live, e.Name())
		}
	}
	return live
}

func TestTailKeepsLastLines(t *testing.T) {
	w := &tailWriter{max: 3}
	for _, s := range []string{"a\nb\n", "c\nd", "e\n", "f"} {
		w.Write([]byte(s))
	}
	// Three whole lines and the unfinished one.
	if got, want := w.String(), "b\nc\nde\nf"; got != want {
		t.Fatalf("tail %q, want %q", got, want)
	}
}

// lineWaiter is an io.Writer that closes seen once a line equal to want was
// written.
type lineWaiter struct {
	mu   sync.Mutex
	buf  []byte
	want string
	seen chan struct{}
	once sync.Once
}

func newLineWaiter(want string) *lineWaiter {
	return &lineWaiter{want: want, seen: make(chan struct{})}
}

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for _, line := range strings.Split(string(w.buf), "\n") {
		if line == w.want {
			w.once.Do(func() { close(w.seen) })
		}
	}
	return len(p), nil
}
