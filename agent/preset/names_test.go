package preset

import (
	"slices"
	"testing"

	"github.com/muster-dev/muster/podapi/names"
)

// The webhook and the coordinator accept the runtimes podapi names; the
// agent must have a preset for each, and no preset a pod cannot ask for.
func TestPresetsAreThePodContractsRuntimes(t *testing.T) {
	want := slices.Sorted(slices.Values(names.Runtimes))
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("presets %v, names.Runtimes %v: add the preset's name to names.Runtimes, or the preset for a name there", got, want)
	}
	if _, err := Get(names.DefaultRuntime); err != nil {
		t.Fatalf("names.DefaultRuntime %q has no preset: %v", names.DefaultRuntime, err)
	}
}
