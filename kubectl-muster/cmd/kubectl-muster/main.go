// Command kubectl-muster is the kubectl plugin for muster groups: put it
// on PATH and run `kubectl muster --help`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	kubectlmuster "github.com/muster-dev/muster/kubectl-muster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cmd := kubectlmuster.NewCommand(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	err := cmd.ExecuteContext(ctx)
	interrupted := ctx.Err() != nil // read before stop, which cancels ctx
	stop()
	if err != nil && !interrupted {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
