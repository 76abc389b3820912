package webhook

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// keyPEM is a PEM private key block (its bytes are not a key: Validate
// must refuse the block by its type).
var keyPEM = []byte("-----BEGIN PRIVATE KEY-----\nbXVzdGVy\n-----END PRIVATE KEY-----\n")

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	valid := map[string]func(*Config){
		"a CA": func(c *Config) { c.CoordinatorCA = testCA },
		"a CA bundle with comments": func(c *Config) {
			c.CoordinatorCA = slices.Concat([]byte("# muster\n"), testCA, []byte("subject=CN=again\n"), testCA)
		},
		"the longest token": func(c *Config) { c.TokenExpiration = 1 << 32 * time.Second },
		"a URL as audience": func(c *Config) { c.TokenAudience = "https://muster.example.com" },
	}
	for name, change := range valid {
		c := DefaultConfig()
		change(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
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
		{func(c *Config) { c.TokenAudience = " " }, "TokenAudience is empty"},
		{func(c *Config) { c.TokenExpiration = 0 }, "TokenExpiration 0s: want whole seconds from 10m0s to 2^32s"},
		{func(c *Config) { c.TokenExpiration = 5 * time.Minute }, "TokenExpiration 5m0s"},
		{func(c *Config) { c.TokenExpiration = 10*time.Minute + time.Millisecond }, "TokenExpiration 10m0.001s"},
		{func(c *Config) { c.TokenExpiration = 1<<32*time.Second + time.Second }, "TokenExpiration 1193046h28m17s"},
		{func(c *Config) { c.CoordinatorCA = []byte("/etc/muster/ca.crt") }, "CoordinatorCA: no PEM certificate: want the PEM text"},
		{func(c *Config) { c.CoordinatorCA = slices.Concat(testCA, keyPEM) }, "CoordinatorCA: PEM block 2 is a PRIVATE KEY: want CERTIFICATE blocks only"},
		{func(c *Config) {
			c.CoordinatorCA = []byte("-----BEGIN CERTIFICATE-----\nbXVzdGVy\n-----END CERTIFICATE-----\n")
		}, "CoordinatorCA: PEM block 1: x509: malformed certificate"},
	}
	for _, tc := range tests {
		c := DefaultConfig()
		tc.change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
		}
	}
}
