// Command agent joins a muster group and runs the model runtime with its
// rank. See `agent run --help`.
package main

import (
	"context"
	"os"

	"github.com/muster-dev/muster/agent/cli"
)

func main() { os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stderr)) }
