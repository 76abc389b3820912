package webhook

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	tests := []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.CoordinatorAddress = "" }, "CoordinatorAddress is empty"},
		{func(c *Config) { c.CoordinatorAddress = "a:1,coordinator" }, `CoordinatorAddress "a:1,coordinator": want host:port`},
		{func(c *Config) { c.AgentImage = " " }, "AgentImage is empty"},
		{func(c *Config) { c.SchedulerName = "Muster Scheduler" }, `SchedulerName "Muster Scheduler"`},
		{func(c *Config) { c.Runtimes = []string{"torchrun"} }, `Runtimes ["torchrun"] must include "env"`},
		{func(c *Config) { c.EndpointPort = 0 }, "EndpointPort 0"},
	}
	for _, tc := range tests {
		c := DefaultConfig()
		tc.change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
		}
	}
}
