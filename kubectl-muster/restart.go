package kubectlmuster

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

func (o *options) restartGroup() *cobra.Command {
	var reason string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "group NAME",
		Short: "Restart a group in place: every rank's runtime stops and the group starts its next generation on the same pods, with the same ranks",
		Long: `Restart a group in place, as muster does when a member fails, but at once
(no backoff) and without spending the group's restart budget. The pods stay
where they are; their agents stop the runtimes and start them again after
the barrier. The reason and who asked are kept in the group's history
(kubectl muster describe group).

Needs RBAC verb create on groups/restart (API group muster.dev) in the
group's namespace; muster's chart grants it with edit.`,
		Example: `  kubectl muster restart group tp-model -n demo --reason "reload weights"
  kubectl muster restart group tp-model -n demo --wait 5m`,
		Args: exactlyOneGroup,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runRestart(cmd.Context(), args[0], reason, wait)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the group's history; one line, at most 256 bytes)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the new generation to be ready, showing its progress (0: do not wait)")
	return cmd
}

func (o *options) runRestart(ctx context.Context, name, reason string, wait time.Duration) error {
	if wait < 0 {
		return fmt.Errorf("--wait %s is negative", wait)
	}
	c, co, err := o.open(ctx)
	if err != nil {
		return err
	}
	defer co.Close()
	ref := &musterv1.GroupRef{Namespace: c.ns, Name: name}
	cctx, cancel := o.callCtx(ctx)
	g, err := co.client.RestartGroup(cctx, &musterv1.RestartGroupRequest{Group: ref, Reason: reason})
	cancel()
	if err != nil {
		return co.explain(err, fmt.Sprintf("restart group %s/%s", c.ns, name))
	}
	gen := g.GetGeneration()
	why := ""
	if h := g.GetHistory(); len(h) > 0 {
		why = ": " + h[len(h)-1].GetEndReason()
	}
	fmt.Fprintf(o.streams.Out, "group/%s restarted: generation %d -> %d%s\n", name, gen-1, gen, why)
	if wait == 0 {
		return nil
	}
	deadline := time.Now().Add(wait)
	last := ""
	for {
		cctx, cancel := o.callCtx(ctx)
		g, err = co.client.GetGroup(cctx, &musterv1.GetGroupRequest{Group: ref})
		cancel()
		if err != nil {
			return co.explain(err, fmt.Sprintf("get group %s/%s", c.ns, name))
		}
		v := groupOf(g, nil)
		msg := fmt.Sprintf("generation %d: %s, %d/%d ranks ready", v.Generation, v.Phase, v.ReadyRanks, v.Size)
		if msg != last {
			fmt.Fprintln(o.streams.ErrOut, msg)
			last = msg
		}
		switch {
		case v.Generation == gen && v.Ready:
			fmt.Fprintf(o.streams.Out, "group/%s ready in generation %d\n", name, gen)
			return nil
		case v.Generation > gen:
			return fmt.Errorf("group %s/%s restarted again (generation %d): %s", c.ns, name, v.Generation, v.LastError)
		case v.Phase == "Failed" || v.Phase == "Completed":
			return fmt.Errorf("group %s/%s is %s: %s", c.ns, name, v.Phase, v.LastError)
		case time.Now().After(deadline):
			return fmt.Errorf("group %s/%s not ready in generation %d after %s (%s)", c.ns, name, gen, wait, msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
