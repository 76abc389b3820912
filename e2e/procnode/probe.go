package procnode

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	kubecontainer "k8s.io/kubernetes/pkg/kubelet/container"
	"k8s.io/kubernetes/pkg/probe"
	execprobe "k8s.io/kubernetes/pkg/probe/exec"
	grpcprobe "k8s.io/kubernetes/pkg/probe/grpc"
	httpprobe "k8s.io/kubernetes/pkg/probe/http"
	tcpprobe "k8s.io/kubernetes/pkg/probe/tcp"
	utilexec "k8s.io/utils/exec"
)

// The kubelet's probers (pkg/probe); only where and how a probe runs is
// this package's own.
var (
	httpProber = httpprobe.New(false)
	tcpProber  = tcpprobe.New()
	execProber = execprobe.New()
	grpcProber = grpcprobe.New()
)

// probe runs the container's startup, readiness and liveness probes until
// ctx ends, as the kubelet's prober workers do: the startup probe first,
// then readiness and liveness side by side. A failed startup or liveness
// probe sends a message to kill.
func (c *ctr) probe(ctx context.Context, spec *processSpec, kill chan<- string) {
	started := time.Now()
	if p := c.spec.StartupProbe; p != nil {
		ok := c.probeLoop(ctx, p, spec, started, "Startup", func(success bool) bool {
			if success {
				c.setState(func() {
					c.started = true
					c.ready = c.spec.ReadinessProbe == nil
				})
				return false // done
			}
			return true
		})
		if !ok {
			sendKill(kill, fmt.Sprintf("Container %s failed startup probe, will be restarted", c.spec.Name))
			return
		}
	}
	var wg sync.WaitGroup
	if p := c.spec.ReadinessProbe; p != nil {
		wg.Go(func() {
			c.probeLoop(ctx, p, spec, started, "Readiness", func(success bool) bool {
				c.pr.mu.Lock()
				same := c.ready == success
				c.pr.mu.Unlock()
				if !same {
					c.setState(func() { c.ready = success })
				}
				return true
			})
		})
	}
	if p := c.spec.LivenessProbe; p != nil {
		wg.Go(func() {
			if !c.probeLoop(ctx, p, spec, started, "Liveness", func(bool) bool { return true }) {
				sendKill(kill, fmt.Sprintf("Container %s failed liveness probe, will be restarted", c.spec.Name))
			}
		})
	}
	wg.Wait()
}

func sendKill(kill chan<- string, msg string) {
	select {
	case kill <- msg:
	default:
	}
}

// probeLoop probes every period after the initial delay and calls result
// whenever the thresholds turn the outcome (successThreshold successes,
// failureThreshold failures in a row); result returns whether to go on.
// It returns false when the failure threshold was reached and the probe is
// one whose failure kills the container (startup, liveness), true
// otherwise.
func (c *ctr) probeLoop(ctx context.Context, p *corev1.Probe, spec *processSpec, started time.Time, kind string, result func(success bool) bool) bool {
	period := seconds(p.PeriodSeconds, 10)
	successThreshold := int(max(p.SuccessThreshold, 1))
	failureThreshold := int(max(p.FailureThreshold, 1))
	if p.FailureThreshold == 0 {
		failureThreshold = 3
	}
	if !sleepCtx(ctx, time.Until(started.Add(time.Duration(p.InitialDelaySeconds)*time.Second))) {
		return true
	}
	kills := kind != "Readiness"
	successes, failures := 0, 0
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		res, out, err := c.runProbe(ctx, p, spec)
		if ctx.Err() != nil {
			return true
		}
		if res == probe.Success || res == probe.Warning {
			successes, failures = successes+1, 0
			if successes == successThreshold {
				if !result(true) {
					return true
				}
			}
		} else {
			failures, successes = failures+1, 0
			if failures == 1 || failures == failureThreshold {
				msg := out
				if err != nil {
					msg = err.Error()
				}
				c.pr.log.Info(kind+" probe failed", "container", c.spec.Name, "output", msg, "failures", failures)
				c.pr.p.event(c.pr.current(), corev1.EventTypeWarning, "Unhealthy", fmt.Sprintf("%s probe failed: %s", kind, msg))
			}
			if failures == failureThreshold {
				if kills {
					return false
				}
				if !result(false) {
					return true
				}
			}
		}
		select {
		case <-ctx.Done():
			return true
		case <-tick.C:
		}
	}
}

func seconds(s, def int32) time.Duration {
	if s <= 0 {
		s = def
	}
	return time.Duration(s) * time.Second
}

// runProbe runs one probe against the pod's address (HTTP, TCP, gRPC) or
// as a process with the container's env and dir (exec).
func (c *ctr) runProbe(ctx context.Context, p *corev1.Probe, spec *processSpec) (probe.Result, string, error) {
	timeout := seconds(p.TimeoutSeconds, 1)
	podIP := c.pr.ip.String()
	switch {
	case p.HTTPGet != nil:
		if err := loopbackOnly(p.HTTPGet.Host); err != nil {
			return probe.Failure, err.Error(), nil
		}
		req, err := httpprobe.NewRequestForHTTPGetAction(p.HTTPGet, c.spec, podIP, "probe")
		if err != nil {
			return probe.Unknown, "", err
		}
		return httpProber.Probe(req.WithContext(ctx), timeout)
	case p.TCPSocket != nil:
		port, err := probe.ResolveContainerPort(p.TCPSocket.Port, c.spec)
		if err != nil {
			return probe.Unknown, "", err
		}
		host := p.TCPSocket.Host
		if err := loopbackOnly(host); err != nil {
			return probe.Failure, err.Error(), nil
		}
		if host == "" {
			host = podIP
		}
		return tcpProber.Probe(host, port, timeout)
	case p.GRPC != nil:
		service := ""
		if p.GRPC.Service != nil {
			service = *p.GRPC.Service
		}
		return grpcProber.Probe(podIP, service, int(p.GRPC.Port), timeout, grpcprobe.ProbeOptions{})
	case p.Exec != nil:
		// As the kubelet: $(VAR) in the command from the container's
		// static env only.
		argv := kubecontainer.ExpandContainerCommandOnlyStatic(p.Exec.Command, c.spec.Env)
		if len(argv) == 0 {
			return probe.Unknown, "", fmt.Errorf("exec probe without a command")
		}
		mounts, err := c.pr.mountTable(c.spec)
		if err != nil {
			return probe.Unknown, "", err
		}
		for i := range argv {
			argv[i] = mounts.translate(argv[i])
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		cmd := utilexec.New().CommandContext(ctx, argv[0], argv[1:]...)
		cmd.SetEnv(spec.env)
		cmd.SetDir(spec.dir)
		res, out, err := execProber.Probe(cmd)
		if ctx.Err() == context.DeadlineExceeded {
			return probe.Failure, "command timed out after " + timeout.String(), nil
		}
		return res, out, err
	}
	return probe.Unknown, "", fmt.Errorf("probe of container %s has no handler", c.spec.Name)
}

// loopbackOnly refuses a probe host off this machine: pods here have
// loopback addresses, and a probe must never send traffic anywhere else.
func loopbackOnly(host string) error {
	if host == "" || host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("probe host %q refused: process nodes probe loopback addresses only", host)
}
