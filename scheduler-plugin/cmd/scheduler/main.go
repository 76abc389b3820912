// Command scheduler is kube-scheduler with muster's gang plugin compiled in.
// Configure it with deploy/scheduler/config.yaml (--config).
//
// Besides kube-scheduler's own flags it takes muster's two: --version
// prints muster's version, commit, Go and Kubernetes versions (where
// kube-scheduler's prints only Kubernetes'), and --log-format text|json is
// kube-scheduler's --logging-format under the name every muster binary
// uses.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register" // --logging-format json, as kube-scheduler registers it
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	"github.com/muster-dev/muster/internal/version"
	"github.com/muster-dev/muster/scheduler-plugin/gang"
)

func main() {
	for _, a := range os.Args[1:] {
		if a == "--version" || a == "-version" {
			fmt.Println(version.Get().String("scheduler"))
			os.Exit(0)
		}
	}
	cmd := app.NewSchedulerCommand(app.WithPlugin(gang.Name, gang.New))
	fs := cmd.Flags()
	fs.Var(&logFormat{fs: fs}, "log-format", "text or json: the same as --logging-format, under the name every muster binary uses")
	os.Exit(cli.Run(cmd))
}

// logFormat passes --log-format on to kube-scheduler's --logging-format.
type logFormat struct {
	fs    *pflag.FlagSet
	value string
}

func (f *logFormat) String() string { return f.value }
func (f *logFormat) Type() string   { return "string" }
func (f *logFormat) Set(v string) error {
	f.value = v
	return f.fs.Set("logging-format", v)
}
