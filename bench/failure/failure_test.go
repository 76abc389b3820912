// Package failure benchmarks how fast a group notices that one member died:
// muster's agents against torchrun's elastic agent (torch 1.13), a group of
// 8 on loopback running the same training-like worker (testdata/worker.py:
// a gloo process group all_reducing in a loop).
package failure

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/muster-dev/muster/bench/rendezvous"
	"github.com/muster-dev/muster/bench/report"
)

const size = 8

// trials returns how many groups to fault, per kind and system: def
// unless $MUSTER_FAILURE_TRIALS says otherwise.
func trials(def int) int {
	if v, err := strconv.Atoi(os.Getenv("MUSTER_FAILURE_TRIALS")); err == nil && v > 0 {
		return v
	}
	return def
}

// settings are torchrun's elastic agent configurations compared.
var settings = []struct {
	name string
	args []string
	conf string // --rdzv_conf, is_host added
}{
	// monitor_interval 5s; the rendezvous keep-alive (5s x 3) is fixed.
	{"defaults", nil, ""},
	// The agent polls its workers every 0.1s. torch 1.13 reads no
	// keep-alive setting from rdzv_conf (DynamicRendezvousHandler.from_backend
	// fixes 5s x 3): the keys are passed and ignored.
	{"fastest", []string{"--monitor_interval", "0.1"}, "keep_alive_interval=1,keep_alive_max_attempt=1,"},
}

// BenchmarkFailureDetection kills -9 one member of a group of 8 once every
// worker is all_reducing, and measures from the kill (wall clock, just
// before the signal) to the last of the other 7 members being told to
// restart, by each one's own log timestamp: muster's agent logging "group
// restarting" (ms resolution), torchrun's agent logging "will restart
// worker group".
//
//   - runtime-kill: the victim's worker process dies; its launcher lives.
//   - agent-kill: muster: the agent process (its runtime dies with it, by
//     Pdeathsig); torchrun: the node (torchrun and its worker, the process
//     group), since a torchrun killed alone leaves its worker running and
//     the collective intact, so nobody would notice.
func BenchmarkFailureDetection(b *testing.B) {
	py := rendezvous.TorchPython(b)
	coord := rendezvous.Coordinator(b)
	for _, kill := range []string{"runtime-kill", "agent-kill"} {
		b.Run(kill, func(b *testing.B) {
			var ours []float64
			theirs := make([][]float64, len(settings))
			trials := trials(3) // a median that is not the smaller of two
			for trial := range trials {
				victim := 1 + trial%(size-1) // torchrun's node 0 hosts the rendezvous store
				ours = append(ours, ms(musterTrial(b, coord, py, kill, victim, fmt.Sprintf("%s-%d", kill, trial))))
				for i, s := range settings {
					theirs[i] = append(theirs[i], ms(torchTrial(b, py, kill, victim, s.args, s.conf)))
				}
			}
			o := report.Summarize(ours)
			for i, s := range settings {
				t := report.Summarize(theirs[i])
				report.Add(b, report.Row{
					Name: fmt.Sprintf("failure/%s (torch %s)", kill, s.name), Unit: "ms", Better: report.Lower,
					Ours: o.Median, Anchor: "torch-elastic", AnchorValue: t.Median,
					OursSpread: o.Spread("ms"), AnchorSpread: t.Spread("ms"),
					Params: fmt.Sprintf("group of %d on loopback, kill -9 of one member's %s; median over %d trials of the last survivor told; torchrun %s: --nnodes %d --nproc_per_node 1 --rdzv_backend c10d --max_restarts 100 %s --rdzv_conf %sis_host=0|1",
						size, map[string]string{"runtime-kill": "worker", "agent-kill": "agent (muster) / node: torchrun and its worker (torch)"}[kill], trials, s.name, size, strings.Join(s.args, " "), s.conf),
					Note: notes[kill],
				})
			}
		})
	}
}

var notes = map[string]string{
	"runtime-kill": "muster: the victim's agent sees its runtime exit and the coordinator tells every member at once; " +
		"torchrun: each agent finds out at its next monitor_interval poll (its own worker failed, or a peer waits for a new round)",
	"agent-kill": "muster: the killed agent's connections close at once; the coordinator sees its stream end, finds its gossip port closed and tells everyone (gossip is for hosts cut off, see e2e's cut-off test); " +
		"torchrun: an agent learns of a dead node only when its own worker fails in the collective (gloo took 1-3s here to fail every survivor), at its next monitor_interval poll; " +
		"torchrun killed without its worker is never noticed (the orphaned worker keeps all_reducing), and the rendezvous keep-alive (15s in torch 1.13) restarts nobody",
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func worker() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata", "worker.py")
}

var workerPid = regexp.MustCompile(`worker-start \d+ rank \d+ restart \S+ pid (\d+)`)

// waitWorkers waits until every process's worker printed worker-ready and
// returns each one's worker pid.
func waitWorkers(b *testing.B, ps []*rendezvous.Proc, within time.Duration) []int {
	b.Helper()
	deadline := time.Now().Add(within)
	pids := make([]int, len(ps))
	for i, p := range ps {
		if _, _, err := p.Line(0, "worker-ready", deadline); err != nil {
			b.Fatal(err)
		}
		l, _, err := p.Line(0, "worker-start", deadline)
		if err != nil {
			b.Fatal(err)
		}
		m := workerPid.FindStringSubmatch(l)
		if m == nil {
			b.Fatalf("no pid in %q", l)
		}
		pids[i], _ = strconv.Atoi(m[1])
	}
	return pids
}

// told waits until every process but victim logged a line containing
// substr after line index from[i], and returns the latest such time after
// the kill, read from the line by stamp.
func told(b *testing.B, ps []*rendezvous.Proc, from []int, victim int, substr string, killed time.Time, stamp func(string) (time.Time, error)) time.Duration {
	b.Helper()
	deadline := killed.Add(time.Minute)
	var last time.Time
	var each []string
	for i, p := range ps {
		if i == victim {
			continue
		}
		l, _, err := p.Line(from[i], substr, deadline)
		if err != nil {
			b.Fatalf("member %d not told to restart after the fault to member %d: %v", i, victim, err)
		}
		t, err := stamp(l)
		if err != nil {
			b.Fatal(err)
		}
		if t.After(last) {
			last = t
		}
		each = append(each, fmt.Sprintf("%d:%s", i, t.Sub(killed).Round(time.Millisecond)))
	}
	b.Logf("fault to member %d; told after %s (member:delay %s)", victim, last.Sub(killed).Round(time.Millisecond), strings.Join(each, " "))
	return last.Sub(killed)
}

func lineCounts(ps []*rendezvous.Proc) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.Lines()
	}
	return out
}

func killAll(ps []*rendezvous.Proc) {
	for _, p := range ps {
		p.Kill()
	}
}

// musterTrial runs one group of agents, kills one member and returns the
// time until every other member was told to restart.
func musterTrial(b *testing.B, coord, py, kill string, victim int, group string) time.Duration {
	b.Helper()
	ps := rendezvous.Agents(b, coord, group, size, []string{"--stop-grace", "1s"}, py, worker())
	defer killAll(ps)
	pids := waitWorkers(b, ps, 2*time.Minute)
	// Every agent has met its peers before one dies.
	for _, p := range ps {
		if _, _, err := p.Line(0, "gossip: joined peers", time.Now().Add(30*time.Second)); err != nil {
			b.Fatal(err)
		}
	}
	pid := pids[victim]
	if kill == "agent-kill" {
		pid = ps[victim].Cmd.Process.Pid
	}
	from := lineCounts(ps)
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		b.Fatal(err)
	}
	return told(b, ps, from, victim, "group restarting", killed, rendezvous.SlogTime)
}

// torchTrial runs one torchrun group (c10d rendezvous), kills one member
// and returns the time until every other agent logged that it restarts its
// worker group.
func torchTrial(b *testing.B, py, kill string, victim int, args []string, conf string) time.Duration {
	b.Helper()
	endpoint := rendezvous.FreeAddr(b, "127.0.0.1")
	id := fmt.Sprintf("fail-%d", time.Now().UnixNano())
	ps := make([]*rendezvous.Proc, size)
	for i := range ps {
		a := []string{rendezvous.Testdata("torchrun.py"), "--nnodes", strconv.Itoa(size), "--nproc_per_node", "1",
			"--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", id, "--max_restarts", "100"}
		// Node 0 hosts the store, as the host the endpoint names would.
		a = append(append(a, args...), "--rdzv_conf", fmt.Sprintf("%sis_host=%d", conf, min(i, 1)^1))
		ps[i] = rendezvous.Start(b, []string{"LOGLEVEL=INFO"}, py, append(a, worker())...)
	}
	defer killAll(ps)
	pids := waitWorkers(b, ps, 2*time.Minute)
	from := lineCounts(ps)
	killed := time.Now()
	var err error
	if kill == "agent-kill" {
		err = syscall.Kill(-ps[victim].Cmd.Process.Pid, syscall.SIGKILL)
	} else {
		err = syscall.Kill(pids[victim], syscall.SIGKILL)
	}
	if err != nil {
		b.Fatal(err)
	}
	return told(b, ps, from, victim, "will restart worker group", killed, func(l string) (time.Time, error) { return rendezvous.UnixField(l, 0) })
}
