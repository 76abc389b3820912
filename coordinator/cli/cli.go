// Package cli parses the coordinator's command line into a Config and runs
// it until a signal arrives.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"strings"
	"syscall"

	"github.com/muster-dev/muster/coordinator"
)

const usage = `Usage: coordinator [flags]

Serves muster's rendezvous API (gRPC): agents join groups, wait at the
barrier, receive RANK / WORLD_SIZE / MASTER_ADDR, and are told to restart
when a member fails. All state lives in etcd: with no --etcd-endpoints the
coordinator runs an embedded etcd in --data-dir; several replicas may share
one etcd (start the second with --etcd-endpoints set to the first's
embedded etcd URL, which it logs).

Flags:
`

// Main runs the coordinator with args; it returns the process exit code.
func Main(args []string, stderr io.Writer) int {
	cfg := coordinator.DefaultConfig()
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var endpoints, logLevel string
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "gRPC address to serve on (host:port)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the embedded etcd's data")
	fs.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs; empty runs an embedded etcd")
	fs.StringVar(&cfg.EtcdClientAddr, "etcd-listen-client", cfg.EtcdClientAddr, "embedded etcd: client address (host:port, port 0 picks one)")
	fs.StringVar(&cfg.EtcdPeerAddr, "etcd-listen-peer", cfg.EtcdPeerAddr, "embedded etcd: peer address (host:port, port 0 picks one)")
	fs.StringVar(&cfg.Prefix, "etcd-prefix", cfg.Prefix, "etcd key prefix for groups")
	fs.DurationVar(&cfg.MemberTTL, "member-ttl", cfg.MemberTTL, "how long a member outlives its agent's last contact (etcd lease TTL, at least 2s)")
	fs.IntVar(&cfg.MaxRestarts, "max-restarts", cfg.MaxRestarts, "restarts a group gets before it is Failed")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig of the cluster whose pods run muster agents: the coordinator then sets the muster.dev/group-ready condition on them; empty: bare hosts only")
	fs.BoolVar(&cfg.InCluster, "in-cluster", false, "like --kubeconfig, with the pod's service account (when the coordinator runs on the cluster)")
	fs.StringVar(&cfg.WebhookListen, "webhook-listen", "", "serve the mutating admission webhook (TLS) on host:port; with --kubeconfig it is also registered; empty: no webhook")
	fs.StringVar(&cfg.WebhookCertDir, "webhook-cert-dir", "", "where the webhook's CA and serving certificate live (made on first start); default DATA_DIR/webhook")
	fs.StringVar(&cfg.WebhookTLSDir, "webhook-tls-dir", "", "serve the webhook with tls.crt and tls.key from this directory as given (a mounted Secret) and register nothing: the deployment owns the MutatingWebhookConfiguration and its caBundle; --webhook-listen may then be :8443")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics), /healthz and /readyz over HTTP on host:port; empty: none (the gRPC health service is always on --listen)")
	fs.StringVar(&cfg.Advertise, "advertise", "", "coordinator address(es) injected agents dial, host:port[,host:port]; default the --listen address")
	fs.StringVar(&cfg.AgentImage, "agent-image", "", "image holding the agent at /muster/agent, for the injected init container (default muster/agent:dev)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "coordinator: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	if endpoints != "" {
		cfg.EtcdEndpoints = strings.Split(endpoints, ",")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "coordinator: --log-level %q: want debug, info, warn or error\n", logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	c, err := coordinator.Start(ctx, cfg)
	if err != nil {
		log.Error("coordinator failed to start", "err", err)
		return 1
	}
	defer c.Close()
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return 0
	case err := <-c.Err():
		log.Error("coordinator stopped", "err", err)
		return 1
	}
}
