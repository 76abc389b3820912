// Command scheduler is kube-scheduler with muster's gang plugin compiled in.
// Configure it with deploy/scheduler/config.yaml (--config).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	"github.com/muster-dev/muster/scheduler-plugin/gang"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand(app.WithPlugin(gang.Name, gang.New))))
}
