// Command coscheduling-scheduler is kube-scheduler with scheduler-plugins'
// Coscheduling plugin registered: the upstream anchor of muster's gang
// benchmarks (bench/sched). It has a module of its own because
// scheduler-plugins v0.34.7 builds only against Kubernetes v1.34 libraries,
// while muster builds on v1.37.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // rest client metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	// Registers the scheduler-plugins config types (CoschedulingArgs).
	_ "sigs.k8s.io/scheduler-plugins/apis/config/scheme"
	"sigs.k8s.io/scheduler-plugins/pkg/coscheduling"
)

func main() {
	cmd := app.NewSchedulerCommand(app.WithPlugin(coscheduling.Name, coscheduling.New))
	os.Exit(cli.Run(cmd))
}
