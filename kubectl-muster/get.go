package kubectlmuster

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

func (o *options) getGroups() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "groups [NAME]",
		Aliases: []string{"group", "g"},
		Short:   "List the groups of a namespace (-A: of every namespace you may read)",
		Example: `  kubectl muster get groups -A
  kubectl muster get groups -n demo -o wide
  kubectl muster get group tp-model -n demo -o yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput("wide", "json", "yaml", "name"); err != nil {
				return err
			}
			return o.runGet(cmd.Context(), args)
		},
	}
	cmd.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "list the groups of every namespace")
	o.addOutput(cmd, "wide", "json", "yaml", "name")
	return cmd
}

func (o *options) runGet(ctx context.Context, args []string) error {
	c, co, err := o.open(ctx)
	if err != nil {
		return err
	}
	defer co.Close()
	ns := c.ns
	if o.allNamespaces {
		ns = ""
	}
	var raw []*musterv1.Group
	if len(args) == 1 {
		cctx, cancel := o.callCtx(ctx)
		g, err := co.client.GetGroup(cctx, &musterv1.GetGroupRequest{Group: &musterv1.GroupRef{Namespace: c.ns, Name: args[0]}})
		cancel()
		if err != nil {
			return co.explain(err, fmt.Sprintf("get group %s/%s", c.ns, args[0]))
		}
		raw = append(raw, g)
	} else {
		token := ""
		for {
			cctx, cancel := o.callCtx(ctx)
			page, err := co.client.ListGroups(cctx, &musterv1.ListGroupsRequest{Namespace: ns, PageToken: token})
			cancel()
			if err != nil {
				what := "list groups in namespace " + ns
				if ns == "" {
					what = "list groups in all namespaces"
				}
				return co.explain(err, what)
			}
			raw = append(raw, page.GetGroups()...)
			if token = page.GetNextPageToken(); token == "" {
				break
			}
		}
	}
	groups := make([]Group, 0, len(raw))
	for _, g := range raw {
		groups = append(groups, groupOf(g, nil))
	}
	switch o.output {
	case "json", "yaml":
		if len(args) == 1 {
			return printObject(o.streams.Out, o.output, groups[0])
		}
		return printObject(o.streams.Out, o.output, map[string]any{"kind": "GroupList", "items": groups})
	case "name":
		for _, g := range groups {
			fmt.Fprintf(o.streams.Out, "group/%s\n", g.Name)
		}
		return nil
	}
	if len(groups) == 0 {
		if ns == "" {
			fmt.Fprintln(o.streams.ErrOut, "No groups found.")
		} else {
			fmt.Fprintf(o.streams.ErrOut, "No groups found in %s namespace.\n", ns)
		}
		return nil
	}
	if o.output == "wide" {
		o.addNodes(ctx, c, groups)
	}
	return o.printTable(groups, ns == "")
}

// addNodes fills each member's node from its pod (-o wide), as far as the
// user may list pods.
func (o *options) addNodes(ctx context.Context, c *clients, groups []Group) {
	for i := range groups {
		pods, err := c.cs.CoreV1().Pods(groups[i].Namespace).List(ctx, metav1.ListOptions{LabelSelector: podapi.LabelGroup + "=" + groups[i].Name})
		if err != nil {
			continue
		}
		g := &groups[i]
		for j := range g.Members {
			for _, p := range pods.Items {
				if p.Name == g.Members[j].ID {
					g.Members[j].Pod, g.Members[j].Node = p.Name, p.Spec.NodeName
				}
			}
		}
	}
}

func (o *options) printTable(groups []Group, withNS bool) error {
	w := tabwriter.NewWriter(o.streams.Out, 0, 8, 3, ' ', 0)
	head := "NAME\tPHASE\tGENERATION\tREADY\tRESTARTS\tLEADER\tAGE"
	if withNS {
		head = "NAMESPACE\t" + head
	}
	if o.output == "wide" {
		head += "\tRUNTIME\tLEADER ADDRESS\tNODES\tLAST ERROR"
	}
	fmt.Fprintln(w, head)
	now := o.now()
	for _, g := range groups {
		row := fmt.Sprintf("%s\t%s\t%d\t%d/%d\t%d\t%s\t%s", g.Name, g.Phase, g.Generation, g.ReadyRanks, g.Size, g.Restarts, orNone(g.Leader), age(g.Created, now))
		if withNS {
			row = g.Namespace + "\t" + row
		}
		if o.output == "wide" {
			row += fmt.Sprintf("\t%s\t%s\t%s\t%s", g.Runtime, orNone(g.LeaderAddr), orNone(nodes(g)), orNone(oneLine(g.LastError, 60)))
		}
		fmt.Fprintln(w, row)
	}
	return w.Flush()
}

func nodes(g Group) string {
	var out []string
	seen := map[string]bool{}
	for _, m := range g.Members {
		if m.Node != "" && !seen[m.Node] {
			seen[m.Node] = true
			out = append(out, m.Node)
		}
	}
	return strings.Join(out, ",")
}

func oneLine(s string, max int) string {
	for i := range len(s) {
		if s[i] == '\n' {
			s = s[:i]
			break
		}
	}
	if len(s) > max {
		return s[:max-3] + "..."
	}
	return s
}

// groupPods lists a group's pods, as far as the user may.
func groupPods(ctx context.Context, c *clients, ns, name string) ([]v1.Pod, error) {
	list, err := c.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: podapi.LabelGroup + "=" + name})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}
