package kubectlmuster

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

func (o *options) describeGroup() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "group NAME",
		Aliases: []string{"groups", "g"},
		Short:   "Show a group: its members (rank, pod, node, domain, state, address), the time each phase took, and every restart with its reason",
		Example: `  kubectl muster describe group tp-model -n demo`,
		Args:    exactlyOneGroup,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput("json", "yaml"); err != nil {
				return err
			}
			g, err := o.fetch(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if o.output != "" {
				return printObject(o.streams.Out, o.output, g)
			}
			return describe(o.streams.Out, g, o.now())
		},
	}
	o.addOutput(cmd, "json", "yaml")
	return cmd
}

// fetch reads one group from the coordinator and its pods from Kubernetes.
func (o *options) fetch(ctx context.Context, name string) (Group, error) {
	c, co, err := o.open(ctx)
	if err != nil {
		return Group{}, err
	}
	defer co.Close()
	cctx, cancel := o.callCtx(ctx)
	defer cancel()
	raw, err := co.client.GetGroup(cctx, &musterv1.GetGroupRequest{Group: &musterv1.GroupRef{Namespace: c.ns, Name: name}})
	if err != nil {
		return Group{}, co.explain(err, fmt.Sprintf("get group %s/%s", c.ns, name))
	}
	pods, err := groupPods(ctx, c, c.ns, name)
	if err != nil {
		// The coordinator's record still says a lot; nodes stay empty.
		fmt.Fprintf(o.streams.ErrOut, "warning: pods of group %s/%s not listed (nodes unknown): %v\n", c.ns, name, err)
	}
	return groupOf(raw, pods), nil
}

// describe prints g as kubectl describe does.
func describe(out io.Writer, g Group, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	p := func(k, format string, a ...any) { fmt.Fprintf(w, "%s:\t"+format+"\n", append([]any{k}, a...)...) }
	p("Name", "%s", g.Name)
	p("Namespace", "%s", g.Namespace)
	p("Runtime", "%s", g.Runtime)
	p("Size", "%d", g.Size)
	phase := g.Phase
	if g.Phase == "Running" {
		phase = fmt.Sprintf("Running, %d/%d ranks ready", g.ReadyRanks, g.Size)
	}
	p("Phase", "%s", phase)
	p("Generation", "%d", g.Generation)
	p("Restarts", "%d", g.Restarts)
	leader := orNone(g.Leader)
	if g.LeaderAddr != "" {
		leader += " (" + g.LeaderAddr + ")"
	}
	p("Leader", "%s", leader)
	p("Rank order", "%s", orNone(g.RankOrder))
	if g.Created != nil {
		p("Created", "%s (%s ago)", g.Created.Format(time.RFC3339), age(g.Created, now))
	}
	if g.LastError != "" {
		label := "Last restart"
		if g.Phase == "Failed" {
			label = "Failed"
		}
		p(label, "%s", g.LastError)
	}
	if err := w.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(out, "Members:")
	w = tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "  RANK\tMEMBER\tNODE\tDOMAIN\tSTATE\tADDRESS\tGENERATION")
	for _, m := range g.Members {
		rank := "-"
		if m.Rank >= 0 {
			rank = fmt.Sprint(m.Rank)
		}
		state := m.State
		if m.State == "Exited" {
			state = fmt.Sprintf("Exited (%d)", m.ExitCode)
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\t%d\n", rank, m.ID, orNone(m.Node), orNone(m.TopologyDomain), state, orNone(m.Address), m.Generation)
	}
	if err := w.Flush(); err != nil {
		return err
	}

	cur := g.Current
	fmt.Fprintf(out, "Phases (generation %d):\n", cur.Generation)
	w = tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	type row struct {
		name string
		at   *time.Time
		note string
	}
	var rows []row
	if cur.Generation == 0 {
		rows = append(rows, row{"pods created", cur.PodsCreated, "the first pod made (Kubernetes)"}, row{"bound", cur.Bound, "the last pod scheduled (Kubernetes)"},
			row{"first joined", cur.Started, "the first agent reached the coordinator"})
	} else {
		rows = append(rows, row{"restarted", cur.Started, "the generation began"})
		if cur.Bound != nil {
			rows = append(rows, row{"bound", cur.Bound, "the last new pod scheduled (Kubernetes)"})
		}
	}
	rows = append(rows, row{"all joined", cur.Joined, "the last member reached the barrier"},
		row{"released", cur.Released, "ranks assigned, every member told"},
		row{"ready", cur.ReadyAt, "every rank's runtime ready"})
	start := rows[0].at
	if start == nil {
		start = cur.Started
	}
	fmt.Fprintln(w, "  PHASE\tAT\tSINCE START\tTOOK\t")
	prev := start
	for i, r := range rows {
		took := "-"
		if r.at != nil && prev != nil && i > 0 {
			took = since(r.at, prev)
		}
		at := "-"
		if r.at != nil {
			at = r.at.Local().Format("15:04:05.000")
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", r.name, at, since(r.at, start), took, r.note)
		if r.at != nil {
			prev = r.at
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}

	if len(g.History) == 0 {
		fmt.Fprintln(out, "History:\t<none>: no restarts")
		return nil
	}
	fmt.Fprintln(out, "History:")
	w = tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "  GENERATION\tSTARTED\tJOINED\tRELEASED\tREADY\tENDED\tREASON")
	for _, h := range g.History {
		started := "-"
		if h.Started != nil {
			started = h.Started.Local().Format("15:04:05")
		}
		fmt.Fprintf(w, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Generation, started, since(h.Joined, h.Started), since(h.Released, h.Started),
			since(h.ReadyAt, h.Started), since(h.Ended, h.Started), strings.TrimSpace(h.EndReason))
	}
	return w.Flush()
}
