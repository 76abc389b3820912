package sched

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/bench/procstat"
	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/test/clustertest"
)

// Every scheduler gets the same client rate limit: kube-scheduler's default
// (50 QPS / 100 burst) would cap each of them at about 50 binds a second and
// hide every difference between them.
const (
	schedulerQPS   = 1000
	schedulerBurst = 2000
)

// groupAPI is how a scheduler is told that pods form a gang.
type groupAPI int

const (
	// noGroups: plain pods, nothing ties them together.
	noGroups groupAPI = iota
	// musterGroups: label muster.dev/group, annotation muster.dev/size (and
	// muster.dev/topology-key).
	musterGroups
	// coschedulingGroups: label scheduling.x-k8s.io/pod-group naming a
	// scheduler-plugins PodGroup (scheduling.x-k8s.io/v1alpha1, minMember).
	coschedulingGroups
	// upstreamGroups: spec.schedulingGroup.podGroupName naming a
	// scheduling.k8s.io/v1beta1 PodGroup (gang minCount, topology key).
	upstreamGroups
)

// scheduler is one of the schedulers compared: muster's and the anchors.
type scheduler struct {
	// name is "muster-scheduler" or the anchor's name in the report.
	name string
	// bin is the binary's file name in the bin dir.
	bin string
	// config is a KubeSchedulerConfiguration template, relative to the repo
	// root; "" means a single default-scheduler profile.
	config string
	// profile is the schedulerName the pods carry.
	profile string
	// gates turns Kubernetes 1.37's gang scheduling on in the scheduler
	// (the apiserver always has it on here).
	gates  bool
	groups groupAPI
	// topology says whether the scheduler can keep a gang in one domain.
	topology bool
}

const ours = "muster-scheduler"

// schedulers: muster's first, then the anchors in the order of the report.
var schedulers = []scheduler{
	// As `make cluster` runs it: deploy/scheduler/config.yaml, gate on.
	{name: ours, bin: "scheduler", config: "deploy/scheduler/config.yaml", profile: "muster-scheduler", gates: true, groups: musterGroups, topology: true},
	// The stock scheduler: no gang semantics at all, the upper bound.
	{name: "default-scheduler", bin: "kube-scheduler", profile: "default-scheduler", groups: noGroups},
	{name: "coscheduling", bin: "coscheduling-scheduler", config: "tools/coscheduling/config.yaml", profile: "coscheduling", groups: coschedulingGroups},
	{name: "upstream-gang", bin: "kube-scheduler", profile: "default-scheduler", gates: true, groups: upstreamGroups, topology: true},
}

// selected are the schedulers this run compares: all of them, or with
// MUSTER_BENCH_ANCHORS=a,b (anchor names, for profiling one comparison)
// muster's and those anchors only; rows against the others are left out.
func selected(tb testing.TB) []scheduler {
	v := os.Getenv("MUSTER_BENCH_ANCHORS")
	if v == "" {
		return schedulers
	}
	out := schedulers[:1:1]
	for name := range strings.SplitSeq(v, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(schedulers[1:], func(s scheduler) bool { return s.name == name })
		if i < 0 {
			names := []string{}
			for _, s := range schedulers[1:] {
				names = append(names, s.name)
			}
			tb.Fatalf("MUSTER_BENCH_ANCHORS=%q: no anchor %q (anchors: %s)", v, name, strings.Join(names, ", "))
		}
		out = append(out, schedulers[1+i])
	}
	return out
}

// gangGates are the gates of Kubernetes 1.37's gang scheduling (GenericWorkload, beta, off by default).
const gangGates = "GenericWorkload=true,TopologyAwareWorkloadScheduling=true"

// binaryHint says how to build a missing scheduler binary.
var binaryHint = map[string]string{
	"scheduler":              "make kube-bins",
	"kube-scheduler":         "make kube-bins",
	"coscheduling-scheduler": "make coscheduling-bin",
}

// start runs the scheduler against c until the returned stop is called (or
// the benchmark ends). run names its log (<cluster dir>/logs) and config.
// stop returns what the scheduler used (zero what is unknown).
func (s scheduler) start(b *testing.B, c *cluster.Cluster, run string) (stop func() usage) {
	b.Helper()
	bin := filepath.Join(clustertest.Bins(b), s.bin)
	if _, err := os.Stat(bin); err != nil {
		b.Fatalf("%s: %v (%s builds it)", s.name, err, binaryHint[s.bin])
	}
	conf, err := s.writeConfig(c, run)
	if err != nil {
		b.Fatal(err)
	}
	// No serving port unless profiling (profile_test.go): nothing else
	// here reads the scheduler's endpoints.
	prof := newProfiler(b, c, s, run)
	args := []string{"--config=" + conf, "--secure-port=0"}
	if prof != nil {
		args = append(args[:1], prof.args()...)
	}
	if s.gates {
		args = append(args, "--feature-gates="+gangGates)
	}
	p, err := c.StartProcess("sched-"+run, bin, args...)
	if err != nil {
		b.Fatal(err)
	}
	if prof != nil {
		prof.start(b)
	}
	var (
		once sync.Once
		u    usage
	)
	stop = func() usage {
		once.Do(func() {
			if prof != nil {
				prof.finish(b)
			}
			_, peak := procstat.Memory(p.PID())
			u = usage{cpu: procstat.CPU(p.PID()), peakRSS: peak}
			p.Stop(5 * time.Second)
		})
		return u
	}
	b.Cleanup(func() { stop() })
	return stop
}

// usage is what a scheduler process used in its life.
type usage struct {
	cpu time.Duration
	// peakRSS is the most resident memory it ever had, in bytes (VmHWM).
	peakRSS int64
}

// writeConfig writes the scheduler's configuration for this cluster: its
// template (or one default-scheduler profile) with the cluster's
// kubeconfig, the common client rate limit and no leader election.
func (s scheduler) writeConfig(c *cluster.Cluster, run string) (string, error) {
	conf := map[string]any{
		"apiVersion": "kubescheduler.config.k8s.io/v1",
		"kind":       "KubeSchedulerConfiguration",
		"profiles":   []any{map[string]any{"schedulerName": s.profile}},
	}
	if s.config != "" {
		root, err := clustertest.RepoRoot()
		if err != nil {
			return "", err
		}
		path := filepath.Join(root, s.config)
		data, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("%s: scheduler config: %w", s.name, err)
		}
		conf = map[string]any{}
		if err := yaml.Unmarshal(data, &conf); err != nil {
			return "", fmt.Errorf("%s: parse %s: %w", s.name, path, err)
		}
	}
	conf["leaderElection"] = map[string]any{"leaderElect": false}
	conf["clientConnection"] = map[string]any{"kubeconfig": c.Kubeconfig(), "qps": schedulerQPS, "burst": schedulerBurst}
	data, err := yaml.Marshal(conf)
	if err != nil {
		return "", fmt.Errorf("%s: encode scheduler config: %w", s.name, err)
	}
	path := filepath.Join(c.StateDir(), "sched-"+run+".yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "", fmt.Errorf("%s: write scheduler config: %w", s.name, err)
	}
	return path, nil
}

// qpsParam is the setting every row states: the client rate limit, and
// which schedulers run with the gang scheduling gates (the apiserver always
// does).
var qpsParam = "client qps " + strconv.Itoa(schedulerQPS) + "/burst " + strconv.Itoa(schedulerBurst) +
	" for every scheduler; GenericWorkload gate on for muster-scheduler (as make cluster runs it) and upstream-gang"
