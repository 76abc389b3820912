package sched

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/muster-dev/muster/bench/report"
	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/test/clustertest"
)

// The cluster every scheduler runs against: 200 kwok nodes of 8 GPUs
// (1600 GPUs), racks of 8 nodes (25 racks of 64 GPUs).
const (
	nodeCount = 200
	nodeGPUs  = 8
	rackSize  = 8
)

var (
	// throughput: 100 gangs of 8 single-GPU pods, half the cluster.
	throughputWork = workload{gangs: 100, members: 8, gpus: 1}
	// contention: gangs of 8 whole nodes; 25 fit at once, twice as many
	// come. Each runs for contentionHold once whole, then is deleted.
	contentionWork = workload{gangs: 50, members: 8, gpus: 8}
	// topology: gangs of 8 x 4 GPUs that must each stay in one rack (two fit
	// in a rack of 64 GPUs; the cluster is 80% full once all are placed).
	topologyWork = workload{gangs: 40, members: 8, gpus: 4, topologyKey: cluster.RackLabel}
)

const (
	throughputRuns     = 3
	topologyRuns       = 3
	contentionHold     = 2 * time.Second
	throughputDeadline = time.Minute
	topologyDeadline   = time.Minute
	// contentionDeadline caps a run that deadlocks: what happened by then
	// is the result.
	contentionDeadline = time.Minute
	sampleEvery        = 50 * time.Millisecond
)

// env is what every run shares.
type env struct {
	c     *cluster.Cluster
	cl    clients
	racks map[string]string // node -> rack
}

// BenchmarkGangScheduling starts one cluster and runs each comparison with
// every scheduler in turn, each scheduler alone (started for its runs and
// stopped after).
func BenchmarkGangScheduling(b *testing.B) {
	e := newEnv(b, nodeCount)
	b.Run("throughput", e.benchThroughput)
	b.Run("contention", e.benchContention)
	b.Run("topology", e.benchTopology)
}

// newEnv starts a cluster of count kwok nodes of nodeGPUs GPUs in racks of
// rackSize nodes, with no scheduler: each run starts its own.
func newEnv(b *testing.B, count int) *env {
	c := clustertest.New(b, func(cfg *cluster.Config) {
		cfg.Binaries.Scheduler = ""
		nodes, ok := cfg.Nodes.(*cluster.KwokNodes)
		if !ok {
			b.Fatalf("cluster nodes: want kwok, got %T", cfg.Nodes)
		}
		nodes.Shape.Count, nodes.Shape.GPUs, nodes.Shape.RackSize = count, nodeGPUs, rackSize
	})
	cl, err := newClients(c.RESTConfig())
	if err != nil {
		b.Fatal(err)
	}
	e := &env{c: c, cl: cl, racks: map[string]string{}}
	nodes, err := cl.core.CoreV1().Nodes().List(b.Context(), metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if len(nodes.Items) != count {
		b.Fatalf("cluster has %d nodes, want %d", len(nodes.Items), count)
	}
	for _, n := range nodes.Items {
		e.racks[n.Name] = n.Labels[cluster.RackLabel]
	}
	return e
}

// runSpec is one run: a workload for one scheduler.
type runSpec struct {
	w workload
	// hold > 0: each gang is deleted this long after it is whole, and the
	// run ends once every gang has been deleted.
	hold     time.Duration
	deadline time.Duration
}

// runResult is what one run measured; times are from the scheduler's start.
type runResult struct {
	summary
	created time.Duration // creating every pod took (before the scheduler started)
	// bindRate is pods bound per second from the first bind to the last.
	bindRate float64
	// done is when the last gang was whole (hold == 0) or deleted; the
	// deadline when the run did not finish.
	done     time.Duration
	finished bool
	// usage is what the scheduler used, its start included: CPU time and
	// peak memory.
	usage
}

// run creates the workload in a fresh namespace, then starts s and follows
// the gangs until they are done or the deadline passes, then stops s and
// clears the namespace.
//
// The pods exist before the scheduler starts: on 2 shared cores creating
// 800 pods takes seconds, and a scheduler that was already running would
// only show how fast they arrive. Every run includes its scheduler's start
// (under a second), the same handicap for all.
func (e *env) run(b *testing.B, s scheduler, name string, spec runSpec) runResult {
	b.Helper()
	cs := e.cl.core
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	ns, err := newNamespace(ctx, cs, name)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		began := time.Now()
		if err := clearNamespace(context.WithoutCancel(ctx), cs, ns, spec.w.gangs); err != nil {
			b.Error(err)
		}
		b.Logf("%s: namespace cleared in %s", name, time.Since(began).Round(time.Millisecond))
	}()
	w := spec.w
	if err := w.createGroups(ctx, e.cl, ns, s); err != nil {
		b.Fatal(err)
	}
	tr := newTracker(w.members, e.racks)
	del := newDeleter(ctx, cs, ns, w.gangs, spec.hold)
	if spec.hold > 0 {
		tr.onWhole = del.schedule
	}
	if err := tr.watch(ctx, cs, ns); err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	if err := w.createPods(ctx, e.cl, ns, s); err != nil {
		b.Fatal(err)
	}
	res := runResult{created: time.Since(began)}

	start := time.Now()
	stop := s.start(b, e.c, name)
	var sampling sync.WaitGroup
	sampling.Go(func() { tr.sample(ctx, start, sampleEvery) })
	wctx, wcancel := context.WithDeadline(ctx, start.Add(spec.deadline))
	defer wcancel()
	if spec.hold > 0 {
		select {
		case <-del.allGone:
			res.finished = true
		case <-wctx.Done():
		}
	} else {
		res.finished = tr.waitWhole(wctx, w.gangs) >= w.gangs
	}
	end := time.Now()
	res.usage = stop()
	cancel()
	sampling.Wait()
	lastDel, err := del.stop()
	if err != nil {
		b.Fatal(err)
	}
	if err := e.c.Err(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}

	res.summary = tr.summary(end)
	if window := res.lastBind.Sub(res.firstBind); !res.firstBind.IsZero() && window > 0 {
		res.bindRate = float64(res.boundPods) / window.Seconds()
	}
	switch {
	case !res.finished:
		res.done = spec.deadline
	case spec.hold > 0:
		res.done = lastDel.Sub(start)
	default:
		res.done = res.lastWhole.Sub(start)
	}
	b.Logf("%s %s: %s; pods created in %s; %d/%d gangs ran, done %s (finished %v); bind rate %.0f pods/s; "+
		"GPUs held by incomplete gangs: max %d, %.1f GPU-s; %d gangs partial at the end (%d GPUs), %d split; end %s; scheduler CPU %s",
		s.name, name, w, res.created.Round(time.Millisecond), res.whole, w.gangs, res.done.Round(time.Millisecond), res.finished,
		res.bindRate, res.held.max, res.held.gpuSeconds, res.partial, res.partialGPUs, res.split, end.Sub(start).Round(time.Millisecond), res.cpu)
	return res
}

// deleter ends gangs: each is deleted hold after it became whole.
type deleter struct {
	ctx     context.Context
	cs      kubernetes.Interface
	ns      string
	gangs   int
	hold    time.Duration
	allGone chan struct{} // closed once every gang was deleted

	wg      sync.WaitGroup
	mu      sync.Mutex
	timers  []*time.Timer
	stopped bool
	deleted int
	last    time.Time
	err     error
}

func newDeleter(ctx context.Context, cs kubernetes.Interface, ns string, gangs int, hold time.Duration) *deleter {
	return &deleter{ctx: ctx, cs: cs, ns: ns, gangs: gangs, hold: hold, allGone: make(chan struct{})}
}

// schedule deletes gang after the hold.
func (d *deleter) schedule(gang string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.wg.Add(1)
	d.timers = append(d.timers, time.AfterFunc(d.hold, func() {
		defer d.wg.Done()
		err := deleteGang(d.ctx, d.cs, d.ns, gang)
		d.mu.Lock()
		defer d.mu.Unlock()
		if err != nil && d.ctx.Err() == nil && d.err == nil {
			d.err = err
		}
		d.deleted++
		d.last = time.Now()
		if d.deleted == d.gangs {
			close(d.allGone)
		}
	}))
}

// stop cancels pending deletions, waits for those under way and returns
// when the last gang was deleted and the first error.
func (d *deleter) stop() (time.Time, error) {
	d.mu.Lock()
	d.stopped = true
	for _, t := range d.timers {
		if t.Stop() {
			d.wg.Done()
		}
	}
	d.mu.Unlock()
	d.wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last, d.err
}

// results collects one measure per scheduler over repeated runs.
type results map[string][]float64

// row compares ours with anchor: the medians, and the spread of each.
func (r results) row(name, unit, anchor string, better report.Better, params string) report.Row {
	o, a := report.Summarize(r[ours]), report.Summarize(r[anchor])
	return report.Row{
		Name: name, Unit: unit, Better: better, Params: params,
		Ours: o.Median, Anchor: anchor, AnchorValue: a.Median,
		OursSpread: o.Spread(unit), AnchorSpread: a.Spread(unit),
	}
}

// fromStart is where every time in these benchmarks begins.
const fromStart = "from the scheduler's start with every pod already pending"

func (e *env) benchThroughput(b *testing.B) {
	w := throughputWork
	lastGang, rate, cpu := results{}, results{}, results{}
	notes := map[string][]string{}
	for _, s := range selected(b) {
		for i := range throughputRuns {
			res := e.run(b, s, fmt.Sprintf("%s-tp%d", s.name, i), runSpec{w: w, deadline: throughputDeadline})
			lastGang[s.name] = append(lastGang[s.name], res.done.Seconds())
			rate[s.name] = append(rate[s.name], res.bindRate)
			cpu[s.name] = append(cpu[s.name], res.cpu.Seconds())
			if !res.finished {
				notes[s.name] = append(notes[s.name], fmt.Sprintf("run %d did not finish in %s (time is that cap): %d of %d gangs bound, %d partially",
					i, throughputDeadline, res.whole, w.gangs, res.partial))
			}
		}
	}
	params := fmt.Sprintf("%d kwok nodes x %d GPUs; %s; %s; median of %d runs", nodeCount, nodeGPUs, w, qpsParam, throughputRuns)
	for _, a := range selected(b)[1:] {
		for _, r := range []report.Row{
			rate.row("gang scheduling: pods bound per second", "pods/s", a.name, report.Higher, params+"; from the first bind to the last"),
			lastGang.row(fmt.Sprintf("gang scheduling: time until the last of %d gangs of %d is bound", w.gangs, w.members), "s", a.name, report.Lower, params+"; "+fromStart),
		} {
			// CPU explains much of a difference on 2 shared cores.
			r.Note = strings.TrimPrefix(noteFor(notes, a.name)+fmt.Sprintf("; scheduler CPU time a run, median: muster %s s, %s %s s",
				report.Fmt(report.Summarize(cpu[ours]).Median), a.name, report.Fmt(report.Summarize(cpu[a.name]).Median)), "; ")
			report.Add(b, r)
		}
	}
}

func (e *env) benchContention(b *testing.B) {
	w := contentionWork
	allRun, maxHeld, gpuSeconds, longest := results{}, results{}, results{}, results{}
	notes := map[string][]string{}
	for _, s := range selected(b) {
		res := e.run(b, s, s.name+"-contention", runSpec{w: w, hold: contentionHold, deadline: contentionDeadline})
		allRun[s.name] = append(allRun[s.name], res.done.Seconds())
		maxHeld[s.name] = append(maxHeld[s.name], float64(res.held.max))
		gpuSeconds[s.name] = append(gpuSeconds[s.name], res.held.gpuSeconds)
		partial := report.Summarize(report.Millis(res.partialFor))
		longest[s.name] = append(longest[s.name], partial.Max/1000)
		note := fmt.Sprintf("mean %.0f GPUs held by incomplete gangs; a gang's first to last bind: median %s ms",
			res.held.gpuSeconds/max(res.done.Seconds(), 1e-3), report.Fmt(partial.Median))
		if !res.finished {
			note = fmt.Sprintf("did not finish in %s (time is that cap): %d of %d gangs never ran, %d partially bound holding %d GPUs at the end; %s",
				contentionDeadline, w.gangs-res.whole, w.gangs, res.partial, res.partialGPUs, note)
		}
		notes[s.name] = append(notes[s.name], note)
		b.Logf("%s: GPUs held by incomplete gangs, max per second: %s", s.name, timeline(res.held.timeline))
	}
	params := fmt.Sprintf("%d kwok nodes x %d GPUs; %s (twice what fits at once), each deleted %s after it is whole; %s; sampled every %s; one run",
		nodeCount, nodeGPUs, w, contentionHold, qpsParam, sampleEvery)
	for _, a := range selected(b)[1:] {
		for _, r := range []report.Row{
			allRun.row(fmt.Sprintf("contention: time until all %d gangs have run", w.gangs), "s", a.name, report.Lower, params+"; "+fromStart+", to the last gang's deletion"),
			maxHeld.row("contention: max GPUs held by incomplete gangs", "GPUs", a.name, report.Lower, params),
			gpuSeconds.row("contention: GPU-seconds held by incomplete gangs", "GPU-s", a.name, report.Lower, params),
			longest.row("contention: longest a gang held GPUs while incomplete", "s", a.name, report.Lower, params+"; from its first bind to its last (or the run's end)"),
		} {
			r.Note = "muster: " + noteFor(notes, ours) + "; " + a.name + ": " + noteFor(notes, a.name)
			report.Add(b, r)
		}
	}
}

func (e *env) benchTopology(b *testing.B) {
	w := topologyWork
	place, split := results{}, results{}
	notes := map[string][]string{}
	var compared []scheduler
	for _, s := range selected(b) {
		if !s.topology {
			continue
		}
		compared = append(compared, s)
		for i := range topologyRuns {
			res := e.run(b, s, fmt.Sprintf("%s-topo%d", s.name, i), runSpec{w: w, deadline: topologyDeadline})
			place[s.name] = append(place[s.name], res.done.Seconds())
			split[s.name] = append(split[s.name], float64(res.split))
			if !res.finished {
				notes[s.name] = append(notes[s.name], fmt.Sprintf("run %d did not finish in %s (time is that cap): %d of %d gangs placed", i, topologyDeadline, res.whole, w.gangs))
			}
		}
	}
	params := fmt.Sprintf("%d kwok nodes x %d GPUs in racks of %d nodes; %s; %s; median of %d runs",
		nodeCount, nodeGPUs, rackSize, w, qpsParam, topologyRuns)
	for _, a := range compared[1:] {
		for _, r := range []report.Row{
			place.row(fmt.Sprintf("topology: time to place %d gangs, each in one rack", w.gangs), "s", a.name, report.Lower, params+"; "+fromStart),
			split.row("topology: gangs split across racks", "gangs", a.name, report.Lower, params),
		} {
			r.Note = noteFor(notes, a.name)
			report.Add(b, r)
		}
	}
}

func noteFor(notes map[string][]string, name string) string {
	return strings.Join(notes[name], "; ")
}

func timeline(v []int64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprint(x)
	}
	return strings.Join(parts, " ")
}
