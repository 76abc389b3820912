package preset

import (
	"slices"
	"testing"

	"github.com/muster-dev/muster/podapi"
)

// The webhook and the coordinator accept the runtimes podapi names; the
// agent must have a preset for each, and no preset a pod cannot ask for.
func TestPresetsAreThePodContractsRuntimes(t *testing.T) {
	want := slices.Sorted(slices.Values(podapi.Runtimes))
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("presets %v, podapi.Runtimes %v: add the preset's name to podapi.Runtimes, or the preset for a name there", got, want)
	}
	if _, err := Get(podapi.DefaultRuntime); err != nil {
		t.Fatalf("podapi.DefaultRuntime %q has no preset: %v", podapi.DefaultRuntime, err)
	}
}
