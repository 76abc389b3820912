package sched

import (
	"fmt"
	"testing"
	"time"

	"github.com/muster-dev/muster/bench/report"
)

// The gang rows at the size of kube-scheduler's own scheduler_perf tests
// (whose thresholds are 680-810 pods/s at 5000 nodes): 1000 kwok nodes of 8
// GPUs, and 1000 gangs of 4 single-GPU pods, half the cluster as in the
// throughput rows.
const scaleNodes = 1000

var scaleWork = workload{gangs: 1000, members: 4, gpus: 1}

const scaleDeadline = 4 * time.Minute

// BenchmarkGangSchedulingAtScale runs the throughput workload at 1000 nodes,
// once per scheduler, and reports each scheduler's peak memory with it.
func BenchmarkGangSchedulingAtScale(b *testing.B) {
	e := newEnv(b, scaleNodes)
	w := scaleWork
	lastGang, rate, mem, cpu := results{}, results{}, results{}, results{}
	notes := map[string][]string{}
	for _, s := range selected(b) {
		res := e.run(b, s, s.name+"-scale", runSpec{w: w, deadline: scaleDeadline})
		lastGang[s.name] = append(lastGang[s.name], res.done.Seconds())
		rate[s.name] = append(rate[s.name], res.bindRate)
		mem[s.name] = append(mem[s.name], float64(res.peakRSS)/(1<<20))
		cpu[s.name] = append(cpu[s.name], res.cpu.Seconds())
		if !res.finished {
			notes[s.name] = append(notes[s.name], fmt.Sprintf("did not finish in %s (time is that cap): %d of %d gangs bound, %d partially",
				scaleDeadline, res.whole, w.gangs, res.partial))
		}
		if res.peakRSS == 0 {
			b.Errorf("%s: peak memory unknown (no VmHWM in /proc/PID/status)", s.name)
		}
	}
	params := fmt.Sprintf("%d kwok nodes x %d GPUs; %s; %s; one run each", scaleNodes, nodeGPUs, w, qpsParam)
	name := fmt.Sprintf("gang scheduling at %d nodes: ", scaleNodes)
	for _, a := range selected(b)[1:] {
		for _, r := range []report.Row{
			rate.row(name+"pods bound per second", "pods/s", a.name, report.Higher, params+"; from the first bind to the last"),
			lastGang.row(fmt.Sprintf("%stime until the last of %d gangs of %d is bound", name, w.gangs, w.members), "s", a.name, report.Lower, params+"; "+fromStart),
			mem.row(name+"scheduler peak memory (RSS)", "MiB", a.name, report.Lower, params+"; the process's VmHWM when the last gang is bound, informer caches of every node and pod included"),
		} {
			r.Note = fmt.Sprintf("scheduler CPU time: muster %s s, %s %s s", report.Fmt(report.Summarize(cpu[ours]).Median), a.name, report.Fmt(report.Summarize(cpu[a.name]).Median))
			for _, n := range []string{ours, a.name} {
				if x := noteFor(notes, n); x != "" {
					r.Note += "; " + n + ": " + x
				}
			}
			report.Add(b, r)
		}
	}
}
