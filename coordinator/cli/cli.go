// Package cli parses the coordinator's command line into a Config and runs
// it until a signal arrives.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/muster-dev/muster/coordinator"
	"github.com/muster-dev/muster/internal/logging"
	"github.com/muster-dev/muster/internal/version"
)

const usage = `Usage: coordinator [flags]

Serves muster's rendezvous API (gRPC): agents join groups, wait at the
barrier, receive RANK / WORLD_SIZE / MASTER_ADDR, and are told to restart
when a member fails. All state lives in etcd: with no --etcd-endpoints the
coordinator runs an embedded etcd in --data-dir; several replicas may share
one etcd (start the second with --etcd-endpoints set to the first's
embedded etcd URL, which it logs).

Callers are authenticated (see docs/security.md): pods by their projected
service-account token (with --kubeconfig or --in-cluster), bare hosts by a
client certificate (--client-ca; make them with "coordinator certs").
With neither, the coordinator listens on loopback only, unless --insecure.

  coordinator certs --help    make a CA, server and member certificates

Flags:
`

// Main runs the coordinator with args; it returns the process exit code.
func Main(args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "certs" {
		return certsMain(args[1:], os.Stdout, stderr)
	}
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		fmt.Fprintln(os.Stdout, version.Get().String("coordinator"))
		return 0
	}
	cfg := coordinator.DefaultConfig()
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var endpoints string
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
	fs.BoolVar(&cfg.Pprof, "pprof", false, "also serve Go's profiles (/debug/pprof/: CPU, heap, goroutines, mutex and block contention) on --metrics-listen, for finding where the coordinator spends its time; off by default")
	fs.StringVar(&cfg.Advertise, "advertise", "", "coordinator address(es) injected agents dial, host:port[,host:port]; default the --listen address")
	fs.StringVar(&cfg.AgentImage, "agent-image", "", "image holding the agent at /muster/agent, for the injected init container (default muster/agent:dev)")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "serve gRPC with TLS: the certificate (PEM; re-read when the file changes)")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "the key of --tls-cert")
	fs.StringVar(&cfg.AgentCA, "agent-ca", "", "CA (PEM file) injected agents verify the gRPC port with (MUSTER_COORDINATOR_CA); default: the webhook's CA when the coordinator makes the gRPC certificate itself (--kubeconfig with --webhook-listen and no --tls-cert), or --webhook-tls-dir's ca.crt")
	fs.StringVar(&cfg.PublishNamespace, "publish-namespace", "", "with --kubeconfig/--in-cluster: write ConfigMap "+coordinator.PublishConfigMap+" in this namespace (the address agents dial, the CA that verifies it), where kubectl muster finds the coordinator; empty: none")
	fs.StringVar(&cfg.ClientCA, "client-ca", "", "verify client certificates with this CA (PEM): a member certificate (coordinator certs member) makes its holder that member of that group")
	fs.StringVar(&cfg.TokenAudience, "token-audience", cfg.TokenAudience, "with --kubeconfig/--in-cluster: the audience of pods' service-account tokens (the webhook projects them)")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "take unauthenticated callers at their word even beyond loopback: anyone who reaches --listen may act as any member of any group")
	fs.Float64Var(&cfg.RateLimit, "rate-limit", cfg.RateLimit, "calls per second one identity may make (0: no limit)")
	fs.IntVar(&cfg.RateBurst, "rate-burst", cfg.RateBurst, "burst of --rate-limit")
	fs.IntVar(&cfg.MaxMessageBytes, "max-message-bytes", cfg.MaxMessageBytes, "largest gRPC request accepted")
	fs.IntVar(&cfg.MaxGroupSize, "max-group-size", cfg.MaxGroupSize, "members one group may have")
	fs.IntVar(&cfg.MaxGroupsPerNamespace, "max-groups-per-namespace", cfg.MaxGroupsPerNamespace, "groups one namespace may hold, finished ones included until reaped (0: no cap)")
	fs.DurationVar(&cfg.FinishedGroupTTL, "finished-group-ttl", cfg.FinishedGroupTTL, "delete a Completed or Failed group with no members after this long")
	fs.StringVar(&cfg.EtcdCACert, "etcd-cacert", "", "external etcd: CA of its serving certificate (PEM)")
	fs.StringVar(&cfg.EtcdCert, "etcd-cert", "", "external etcd: client certificate (PEM)")
	fs.StringVar(&cfg.EtcdKey, "etcd-key", "", "external etcd: key of --etcd-cert")
	var logFlags logging.Flags
	logFlags.Register(fs)
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
	log, err := logFlags.New(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "coordinator: %v\n", err)
		return 2
	}
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
