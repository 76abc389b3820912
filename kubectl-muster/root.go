// Package kubectlmuster is the kubectl plugin for muster groups (kubectl
// muster get|describe|logs|restart group). It reads groups from the
// coordinator and their pods from the Kubernetes API, both with the
// user's own kubeconfig credentials, so it can do no more than the user
// may.
package kubectlmuster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/internal/version"
	"github.com/muster-dev/muster/podapi"
)

// options are the flags every command shares.
type options struct {
	kube          *genericclioptions.ConfigFlags
	coord         coordinatorFlags
	allNamespaces bool
	output        string
	streams       genericiooptions.IOStreams
	now           func() time.Time
}

// NewCommand is `kubectl muster`.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{kube: genericclioptions.NewConfigFlags(true), streams: streams, now: time.Now}
	root := &cobra.Command{
		Use:   "kubectl-muster",
		Short: "See and operate muster groups: which exist, who holds which rank where, why they restarted, their logs",
		Long: `kubectl muster shows the groups muster's coordinator runs (one group per
multi-node model: its pods, ranks, phases and restarts) and operates them.

It reads groups from the coordinator and pods from the Kubernetes API, both
with your kubeconfig's credentials: you see the groups of the namespaces
RBAC lets you read (verb get/list on groups.muster.dev; the chart grants it
with view), and restart those it lets you restart (verb create on
groups/restart; granted with edit).

The coordinator is found through ConfigMap muster-coordinator in
--coordinator-namespace (muster): its address and CA.`,
		Example: `  kubectl muster get groups -A
  kubectl muster describe group tp-model -n demo
  kubectl muster logs group tp-model -n demo -f
  kubectl muster restart group tp-model -n demo --reason "new weights"`,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl muster"},
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Get().String("kubectl-muster"),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	fs := root.PersistentFlags()
	o.kube.AddFlags(fs)
	fs.StringVar(&o.coord.address, "coordinator", "", "the coordinator's gRPC address (host:port), e.g. 127.0.0.1:7070 through kubectl port-forward; default: from ConfigMap muster-coordinator")
	fs.StringVar(&o.coord.namespace, "coordinator-namespace", podapi.CoordinatorNamespace, "namespace of muster's coordinator (its ConfigMap muster-coordinator)")
	fs.StringVar(&o.coord.caFile, "coordinator-ca", "", "PEM CA that verifies the coordinator; default: from ConfigMap muster-coordinator")
	fs.StringVar(&o.coord.serverName, "coordinator-server-name", "", "the name the coordinator's certificate carries; default: the host of the published address")
	fs.DurationVar(&o.coord.timeout, "coordinator-timeout", 30*time.Second, "how long one call to the coordinator may take")

	get := &cobra.Command{Use: "get", Short: "List groups"}
	get.AddCommand(o.getGroups())
	describe := &cobra.Command{Use: "describe", Short: "Show one group in detail"}
	describe.AddCommand(o.describeGroup())
	logs := &cobra.Command{Use: "logs", Short: "Print the logs of a group's ranks"}
	logs.AddCommand(o.logsGroup())
	restart := &cobra.Command{Use: "restart", Short: "Restart a group in place"}
	restart.AddCommand(o.restartGroup())
	ver := &cobra.Command{Use: "version", Short: "Print the plugin's version", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(o.streams.Out, version.Get().String("kubectl-muster"))
			return err
		}}
	root.AddCommand(get, describe, logs, restart, ver)
	return root
}

// clients are the user's Kubernetes client and, connected lazily, the
// coordinator.
type clients struct {
	cfg *rest.Config
	cs  kubernetes.Interface
	ns  string
}

func (o *options) clients() (*clients, error) {
	cfg, err := o.kube.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	if cfg.Impersonate.UserName != "" || len(cfg.Impersonate.Groups) > 0 || cfg.Impersonate.UID != "" {
		return nil, fmt.Errorf("--as/--as-group/--as-uid: the coordinator takes no impersonation; use the identity's own kubeconfig or --context")
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ns, _, err := o.kube.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, err
	}
	return &clients{cfg: cfg, cs: cs, ns: ns}, nil
}

func (o *options) connect(ctx context.Context, c *clients) (*coordinator, error) {
	return connect(ctx, c.cfg, c.cs, o.coord)
}

// open is the user's Kubernetes client and a connection to the
// coordinator (the caller closes it).
func (o *options) open(ctx context.Context) (*clients, *coordinator, error) {
	c, err := o.clients()
	if err != nil {
		return nil, nil, err
	}
	co, err := o.connect(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	return c, co, nil
}

func (o *options) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, o.coord.timeout)
}

// addOutput registers -o with the formats a command supports.
func (o *options) addOutput(cmd *cobra.Command, formats ...string) {
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "output format: one of "+strings.Join(formats, "|"))
}

func (o *options) checkOutput(formats ...string) error {
	if o.output == "" {
		return nil
	}
	for _, f := range formats {
		if o.output == f {
			return nil
		}
	}
	return fmt.Errorf("--output %q: want one of %s", o.output, strings.Join(formats, ", "))
}

// printObject prints v as JSON or YAML.
func printObject(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// exactlyOneGroup checks a command's arguments: group NAME.
func exactlyOneGroup(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s needs exactly one group name (got %d); see kubectl muster get groups", cmd.CommandPath(), len(args))
	}
	return nil
}
