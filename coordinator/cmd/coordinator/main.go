// Command coordinator serves muster's rendezvous API. See --help.
package main

import (
	"os"

	"github.com/muster-dev/muster/coordinator/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stderr)) }
