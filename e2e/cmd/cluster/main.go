// Command cluster runs muster's local Kubernetes control plane (package
// e2e/cluster) in the foreground, and stops it from another shell:
//
//	cluster up   --dir .local [--nodes 4 --gpus 8 --rack-size 2 --node-backend kwok|process ...]
//	cluster down --dir .local
//
// `up` writes <dir>/cluster.pid at once and <dir>/cluster.ready when the
// cluster can take work, and runs until SIGTERM or SIGINT (or until a
// component dies: then it stops the rest and exits 1). `down` signals the
// pid in cluster.pid and waits until the launcher and every child it
// recorded are gone. `make cluster` / `make cluster-down` wrap both.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/kserve"
	"github.com/muster-dev/muster/e2e/procnode"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "cluster: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  cluster up   --dir DIR [flags]   run a local control plane until SIGTERM
  cluster down --dir DIR           stop the one running in DIR
run "cluster up -h" for the flags
`)
}

func pidFile(dir string) string   { return filepath.Join(dir, "cluster.pid") }
func readyFile(dir string) string { return filepath.Join(dir, "cluster.ready") }

func up(args []string) error {
	fs := flag.NewFlagSet("cluster up", flag.ExitOnError)
	def := cluster.DefaultNodeShape()
	dir := fs.String("dir", ".local", "directory for the kubeconfig, logs and state")
	binDir := fs.String("bin-dir", "bin", "directory with kube-apiserver, kube-controller-manager, scheduler and kwok")
	schedConfig := fs.String("scheduler-config", "deploy/scheduler/config.yaml", "KubeSchedulerConfiguration template (clientConnection.kubeconfig is filled in); empty: default-scheduler only")
	noScheduler := fs.Bool("no-scheduler", false, "run no scheduler")
	crdDir := fs.String("crd-dir", "deploy/crds", "install every *.yaml CustomResourceDefinition in this directory before the scheduler starts; empty: none")
	coordinator := fs.Bool("coordinator", true, "run muster's coordinator (BIN_DIR/coordinator) on the cluster's etcd, with its admission webhook registered")
	backend := fs.String("node-backend", "process", "who plays the kubelets: kwok (pods go Running but run nothing) or process (each container's command runs as a local process; package e2e/procnode)")
	agentBin := fs.String("agent-bin", "", "process nodes: the agent binary that containers of the agent image run (default: <bin-dir>/agent)")
	nodes := fs.Int("nodes", def.Count, "number of nodes")
	gpus := fs.Int64("gpus", def.GPUs, "nvidia.com/gpu per node")
	cpu := fs.String("cpu", def.CPU, "cpu per node")
	memory := fs.String("memory", def.Memory, "memory per node")
	pods := fs.Int64("pods", def.Pods, "pods per node")
	rackSize := fs.Int("rack-size", def.RackSize, "nodes per "+cluster.RackLabel+" value (rack-a, rack-b, ...)")
	gates := fs.String("feature-gates", "", "feature gates on top of the defaults (GenericWorkload=true,TopologyAwareWorkloadScheduling=true), e.g. Foo=true,Bar=false")
	timeout := fs.Duration("timeout", 0, "start timeout (0: 3m plus 100ms per node)")
	kserveBin := fs.String("kserve-manager", "", "also run KServe's controller manager (bin/kserve-manager from `make kserve-bin`), with its CRDs, ConfigMap and webhooks (package e2e/kserve)")
	kserveModule := fs.String("kserve-module", "", "with --kserve-manager: the github.com/kserve/kserve module directory (CRDs, ConfigMap, webhook manifests)")
	fs.Parse(args)

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	absDir, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(absDir, 0o755); err != nil {
		return err
	}
	if pid, ok := runningPID(absDir); ok {
		return fmt.Errorf("a cluster is already running in %s (pid %d): run cluster down --dir %s", absDir, pid, *dir)
	}
	_ = os.Remove(readyFile(absDir))
	if err := os.WriteFile(pidFile(absDir), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	defer os.Remove(pidFile(absDir))
	defer os.Remove(readyFile(absDir))

	absBin, err := filepath.Abs(*binDir)
	if err != nil {
		return err
	}
	cfg := cluster.DefaultConfig(absDir, absBin)
	cfg.Logger = log
	cfg.StartTimeout = *timeout
	cfg.SchedulerConfig = *schedConfig
	if *crdDir != "" {
		if cfg.CRDs, err = filepath.Glob(filepath.Join(*crdDir, "*.yaml")); err != nil {
			return fmt.Errorf("--crd-dir %q: %w", *crdDir, err)
		}
	}
	if (*kserveBin == "") != (*kserveModule == "") {
		return fmt.Errorf("--kserve-manager and --kserve-module go together")
	}
	if *kserveBin != "" {
		crds, err := kserve.CRDs(*kserveModule)
		if err != nil {
			return fmt.Errorf("--kserve-module: %w", err)
		}
		cfg.CRDs = append(cfg.CRDs, crds...)
	}
	if *noScheduler {
		cfg.Binaries.Scheduler = ""
	}
	if *gates != "" {
		for _, kv := range strings.Split(*gates, ",") {
			k, v, ok := strings.Cut(kv, "=")
			b, err := strconv.ParseBool(v)
			if !ok || err != nil {
				return fmt.Errorf("--feature-gates: %q is not Name=true|false", kv)
			}
			cfg.FeatureGates[strings.TrimSpace(k)] = b
		}
	}
	if *coordinator {
		cfg.Binaries.Coordinator = filepath.Join(absBin, "coordinator")
	}
	shape := def
	shape.Count, shape.GPUs, shape.CPU, shape.Memory, shape.Pods, shape.RackSize =
		*nodes, *gpus, *cpu, *memory, *pods, *rackSize
	switch *backend {
	case "kwok":
		cfg.Nodes.(*cluster.KwokNodes).Shape = shape
	case "process":
		pcfg := procnode.DefaultConfig(absBin)
		pcfg.Shape = shape
		if !pcfg.WithPodNetwork() {
			log.Warn("pods get loopback addresses (not root, or no iproute2): Services will have no EndpointSlices")
		}
		if *agentBin != "" {
			if pcfg.AgentBin, err = filepath.Abs(*agentBin); err != nil {
				return err
			}
		}
		cfg.Nodes = procnode.New(pcfg)
	default:
		return fmt.Errorf("--node-backend %q: want kwok or process", *backend)
	}

	// SIGTERM/SIGINT during start cancel it; afterwards they stop the cluster.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		return err
	}
	if *kserveBin != "" {
		log.Info("starting KServe's controller manager", "bin", *kserveBin)
		if _, err := kserve.Start(ctx, c, *kserveBin, *kserveModule); err != nil {
			c.Stop()
			return fmt.Errorf("KServe: %w", err)
		}
	}
	if err := os.WriteFile(readyFile(absDir), []byte(c.Kubeconfig()+"\n"), 0o644); err != nil {
		c.Stop()
		return fmt.Errorf("write ready marker: %w", err)
	}
	fmt.Fprintf(os.Stderr, "\ncluster ready: %d nodes, apiserver %s\n  export KUBECONFIG=%s\n  kubectl get nodes\n\n", len(c.Nodes()), c.APIServer(), c.Kubeconfig())

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("signal received, stopping")
	case <-c.Failed():
		runErr = c.Err()
	}
	_ = os.Remove(readyFile(absDir))
	if err := c.Stop(); err != nil {
		runErr = errors.Join(runErr, err)
	}
	return runErr
}

// runningPID is the pid in dir's pid file if that process is alive and is
// a cluster launcher (a stale file's pid may have been reused).
func runningPID(dir string) (int, bool) {
	data, err := os.ReadFile(pidFile(dir))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 || !cluster.Alive(pid) {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return pid, true // cannot tell: assume it is ours
	}
	argv := strings.Split(string(cmdline), "\x00")
	return pid, len(argv) > 1 && argv[1] == "up"
}

func down(args []string) error {
	fs := flag.NewFlagSet("cluster down", flag.ExitOnError)
	dir := fs.String("dir", ".local", "directory the cluster runs in")
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for everything to stop")
	fs.Parse(args)
	absDir, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	// Read the children before the launcher removes the state on exit.
	var children []cluster.ProcessState
	if st, err := cluster.ReadState(absDir); err == nil {
		children = st.Processes
	}
	pid, running := runningPID(absDir)
	if running {
		fmt.Printf("stopping cluster in %s (pid %d)", absDir, pid)
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal pid %d: %w", pid, err)
		}
		deadline := time.Now().Add(*timeout)
		lastDot := time.Now()
		for cluster.Alive(pid) {
			if time.Now().After(deadline) {
				fmt.Println()
				_ = syscall.Kill(pid, syscall.SIGKILL)
				return fmt.Errorf("cluster launcher pid %d did not stop within %s; killed it (its children die with it)", pid, *timeout)
			}
			if time.Since(lastDot) >= time.Second {
				fmt.Print(".")
				lastDot = time.Now()
			}
			time.Sleep(100 * time.Millisecond)
		}
		fmt.Println(" stopped")
	} else {
		fmt.Printf("no cluster running in %s\n", absDir)
		_ = os.Remove(pidFile(absDir))
		_ = os.Remove(readyFile(absDir))
	}
	// The launcher stops its children before exiting, and the kernel kills
	// them if it died; check anyway, giving the kernel a moment.
	var left []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		left = left[:0]
		for _, p := range children {
			if cluster.Alive(p.PID) && isChild(p) {
				left = append(left, fmt.Sprintf("%s (pid %d)", p.Name, p.PID))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) > 0 {
		for _, p := range children {
			if cluster.Alive(p.PID) && isChild(p) {
				_ = syscall.Kill(-p.PID, syscall.SIGKILL)
			}
		}
		return fmt.Errorf("still running after the launcher exited, killed: %s", strings.Join(left, ", "))
	}
	return nil
}

// isChild guards against pid reuse: the process must still be the binary
// recorded for it.
func isChild(p cluster.ProcessState) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return strings.Contains(filepath.Base(argv0), p.Name) || strings.Contains(p.Name, filepath.Base(argv0))
}
