// Command agent joins a muster group and runs the model runtime with its
// rank. See `agent run --help`.
package main

import (
	"context"
	"os"
	"runtime/debug"

	"github.com/muster-dev/muster/agent/cli"
)

// gcPercent is the agent's GOGC unless its environment sets GOGC.
//
// The agent's live heap is a few MiB, and the group's endpoint allocates
// about 15 KiB a request (net/http's server and transport): at Go's default
// of 100 it collects dozens of times a second under load, and the
// collector's work and the wake-ups of its workers were a sixth of the
// endpoint's CPU. At 400 the endpoint spends 94-97 instead of 113-119 µs
// of CPU a request (wrk -c64 on loopback, 3 rounds each), for 30 instead
// of 18 MiB resident under that load. 200 and 800 did less well
// (100-105 µs).
const gcPercent = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stderr))
}
