// Command scheduler is kube-scheduler with muster's gang plugin compiled in.
// Configure it with deploy/scheduler/config.yaml (--config).
//
// Besides kube-scheduler's own flags it takes muster's two: --version
// prints muster's version, commit, Go and Kubernetes versions (where
// kube-scheduler's prints only Kubernetes'), and --log-format text|json is
// kube-scheduler's --logging-format under the name every muster binary
// uses.
//
// One default differs from kube-scheduler's: NominatedNodeNameForExpectation
// is off (see defaultGates); --feature-gates=NominatedNodeNameForExpectation=true
// turns it back on.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register" // --logging-format json, as kube-scheduler registers it
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	"k8s.io/kubernetes/pkg/features"

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
	if err := defaultGates(); err != nil {
		fmt.Fprintln(os.Stderr, "scheduler:", err)
		os.Exit(1)
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

// defaultGates turns NominatedNodeNameForExpectation off before the flags
// are parsed, so --feature-gates can still turn it on. With it on (the
// default since Kubernetes 1.35), every pod that waits at Permit gets one
// status PATCH announcing its node before it binds. A gang's members wait
// there only until the rest of the group is reserved and its turn to bind
// comes, milliseconds to a few seconds, so for muster's pods the write
// tells an autoscaler nothing it could act on, and it costs the apiserver
// one more write and watch event per pod while the group binds: in make
// bench (100 gangs of 8 on 200 nodes) 126 pods/s with it on (121-132 in
// 6 runs), 145 with it off (118-177 in 9 runs). Pods of no group wait at
// Permit or PreBind only under plugins that ask for it (volume binding,
// DRA), and lose the same early announcement.
func defaultGates() error {
	return utilfeature.DefaultMutableFeatureGate.SetFromMap(map[string]bool{string(features.NominatedNodeNameForExpectation): false})
}
