package main

import (
	"testing"

	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	"k8s.io/kubernetes/pkg/features"

	"github.com/muster-dev/muster/scheduler-plugin/gang"
)

// TestNominatedNodeNameForExpectationOffUnlessAsked: muster's scheduler
// starts with the gate off, and --feature-gates still turns it on.
func TestNominatedNodeNameForExpectationOffUnlessAsked(t *testing.T) {
	gate := features.NominatedNodeNameForExpectation
	if !utilfeature.DefaultFeatureGate.Enabled(gate) {
		t.Fatalf("%s is off before defaultGates: kube-scheduler's default changed, revisit defaultGates", gate)
	}
	if err := defaultGates(); err != nil {
		t.Fatal(err)
	}
	if utilfeature.DefaultFeatureGate.Enabled(gate) {
		t.Fatalf("%s still on after defaultGates", gate)
	}
	// The command applies --feature-gates in its PersistentPreRunE (the
	// component globals registry), as it does when the binary runs.
	run := func(args ...string) bool {
		t.Helper()
		cmd := app.NewSchedulerCommand(app.WithPlugin(gang.Name, gang.New))
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		if err := cmd.PersistentPreRunE(cmd, nil); err != nil {
			t.Fatal(err)
		}
		return utilfeature.DefaultFeatureGate.Enabled(gate)
	}
	if run() {
		t.Fatalf("%s on once the command applied its flags, with no --feature-gates", gate)
	}
	if !run("--feature-gates=" + string(gate) + "=true") {
		t.Fatalf("--feature-gates=%s=true did not turn it back on", gate)
	}
}
