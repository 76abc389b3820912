package procnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	podutil "k8s.io/kubernetes/pkg/api/v1/pod"
)

// ctr is one container of a pod and its supervisor. Its state is guarded
// by the pod's mu.
type ctr struct {
	pr   *podRuntime
	spec *corev1.Container
	init bool

	state    corev1.ContainerState
	last     corev1.ContainerState
	restarts int32
	ready    bool // readiness probe passing (or no probe)
	started  bool // startup probe passed (or no probe)
	proc     *proc
	changed  chan struct{} // closed and replaced on every state change
}

func newCtr(pr *podRuntime, spec *corev1.Container, init bool) *ctr {
	reason := "ContainerCreating"
	if !init && len(pr.pod.Spec.InitContainers) > 0 {
		reason = "PodInitializing"
	}
	return &ctr{
		pr: pr, spec: spec, init: init,
		state:   corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}},
		changed: make(chan struct{}),
	}
}

func (c *ctr) restartable() bool { return c.init && podutil.IsRestartableInitContainer(c.spec) }

// id names one run of the container (kubelet: the runtime's container id).
func (c *ctr) id(run int32) string {
	return fmt.Sprintf("%s-%s-%d", c.pr.uidv, c.spec.Name, run)
}

func (c *ctr) statusLocked() corev1.ContainerStatus {
	started := c.state.Running != nil && c.started
	ready := c.state.Running != nil && c.ready
	if c.init && !c.restartable() {
		// A regular init container is "ready" once it has completed.
		ready = c.state.Terminated != nil && c.state.Terminated.ExitCode == 0
	}
	st := corev1.ContainerStatus{
		Name:                 c.spec.Name,
		Image:                c.spec.Image,
		ImageID:              "procnode://" + c.spec.Image,
		State:                *c.state.DeepCopy(),
		LastTerminationState: *c.last.DeepCopy(),
		Ready:                ready,
		RestartCount:         c.restarts,
		Started:              &started,
	}
	if c.state.Waiting == nil || c.last.Terminated != nil {
		st.ContainerID = "procnode://" + c.id(c.restarts)
	}
	return st
}

// setState changes the container's state and reports the pod's status.
func (c *ctr) setState(f func()) {
	c.pr.mu.Lock()
	f()
	close(c.changed)
	c.changed = make(chan struct{})
	c.pr.mu.Unlock()
	c.pr.report()
}

func (c *ctr) setWaiting(reason, msg string) {
	c.setState(func() {
		c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	})
}

// waitStarted waits until a sidecar has started (its startup probe
// passed), as the kubelet does before it starts the next init container.
func (c *ctr) waitStarted(ctx context.Context) bool {
	for {
		c.pr.mu.Lock()
		ok := c.state.Running != nil && c.started
		ch := c.changed
		c.pr.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// runInit runs an init container to completion, restarting it on failure
// unless the pod's restartPolicy is Never, which fails the pod. It reports
// whether the pod may go on.
func (c *ctr) runInit(ctx context.Context) bool {
	backoff := c.pr.p.cfg.BackoffInitial
	for {
		exit, ran := c.runOnce(ctx)
		if !ran || ctx.Err() != nil {
			return false
		}
		if exit == 0 {
			return true
		}
		if c.pr.current().Spec.RestartPolicy == corev1.RestartPolicyNever {
			c.pr.mu.Lock()
			c.pr.failed = true
			c.pr.mu.Unlock()
			c.pr.report()
			return false
		}
		if !c.backOff(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, c.pr.p.cfg.BackoffMax)
	}
}

// supervise runs a container and restarts it as its restart policy says,
// with a back-off that doubles up to BackoffMax (and starts over after a
// run longer than twice that, as the kubelet's does), until the pod
// terminates or the container is done.
func (c *ctr) supervise(ctx context.Context) {
	backoff := c.pr.p.cfg.BackoffInitial
	for {
		began := time.Now()
		exit, ran := c.runOnce(ctx)
		if !ran || ctx.Err() != nil {
			return
		}
		policy := c.pr.current().Spec.RestartPolicy
		if c.restartable() {
			policy = corev1.RestartPolicyAlways
		}
		if policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && exit == 0) {
			return
		}
		if time.Since(began) > 2*c.pr.p.cfg.BackoffMax {
			backoff = c.pr.p.cfg.BackoffInitial
		}
		if !c.backOff(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, c.pr.p.cfg.BackoffMax)
	}
}

// backOff waits before a restart in CrashLoopBackOff, then counts the
// restart.
func (c *ctr) backOff(ctx context.Context, d time.Duration) bool {
	c.setState(func() {
		c.last = c.state
		c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason:  "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", d, c.spec.Name, c.pr.key),
		}}
	})
	if !sleepCtx(ctx, d) {
		return false
	}
	c.pr.mu.Lock()
	c.restarts++
	c.pr.mu.Unlock()
	return true
}

// runOnce starts the container's process and waits until it exits, is
// killed for the pod's termination or by a failing liveness or startup
// probe. ran is false if no process was started because the pod terminated
// first.
func (c *ctr) runOnce(ctx context.Context) (exit int32, ran bool) {
	backoff := c.pr.p.cfg.BackoffInitial
	var spec *processSpec
	for {
		var err error
		if spec, err = c.prepare(ctx); err == nil {
			break
		}
		// Like the kubelet: a missing ConfigMap key or the like leaves the
		// container waiting, and it is tried again; no restart is counted.
		c.pr.log.Warn("container config", "container", c.spec.Name, "err", err)
		c.pr.p.event(c.pr.current(), corev1.EventTypeWarning, "Failed", fmt.Sprintf("Error: %v", err))
		c.setWaiting("CreateContainerConfigError", err.Error())
		if !sleepCtx(ctx, backoff) {
			return 0, false
		}
		backoff = min(2*backoff, c.pr.p.cfg.BackoffMax)
	}
	if ctx.Err() != nil {
		return 0, false
	}
	c.pr.mu.Lock()
	run := c.restarts
	c.pr.mu.Unlock()
	logPath := c.logPath(run)
	began := metav1.Now()
	if nw := c.pr.p.ips.net; nw != nil {
		wrapped := *spec
		wrapped.argv = nw.wrap(spec.argv)
		spec = &wrapped
	}
	p, err := startProcess(spec, logPath)
	if err != nil {
		c.pr.log.Warn("container start failed", "container", c.spec.Name, "err", err)
		c.pr.p.event(c.pr.current(), corev1.EventTypeWarning, "Failed", fmt.Sprintf("Error: %v", err))
		c.setState(func() {
			c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 128, Reason: "StartError", Message: err.Error(),
				StartedAt: began, FinishedAt: metav1.Now(), ContainerID: "procnode://" + c.id(run),
			}}
		})
		return 128, true
	}
	c.pr.log.Info("container started", "container", c.spec.Name, "pid", p.pid(), "argv", spec.argv, "restarts", run)
	c.setState(func() {
		c.proc = p
		c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: began}}
		c.started = c.spec.StartupProbe == nil
		c.ready = c.spec.ReadinessProbe == nil && c.started
	})

	probeCtx, stopProbes := context.WithCancel(ctx)
	killed := make(chan string, 1)
	var probes sync.WaitGroup
	probes.Go(func() { c.probe(probeCtx, spec, killed) })

	var message string
	select {
	case <-p.done:
	case <-ctx.Done():
		p.stop(c.pr.graceDeadline(), c.pr.hurry)
	case message = <-killed:
		c.pr.p.event(c.pr.current(), corev1.EventTypeNormal, "Killing", message)
		p.stop(time.Now().Add(c.probeGrace()), c.pr.hurry)
	}
	stopProbes()
	probes.Wait()
	p.finish()
	code := p.exitCode()
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	c.pr.log.Info("container exited", "container", c.spec.Name, "exit", code, "msg", message)
	c.setState(func() {
		c.ready = false
		c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: code, Reason: reason, Message: message,
			StartedAt: began, FinishedAt: metav1.Now(), ContainerID: "procnode://" + c.id(run),
		}}
	})
	return code, true
}

// probeGrace is the grace period for a container a probe kills.
func (c *ctr) probeGrace() time.Duration {
	pod := c.pr.current()
	for _, p := range []*corev1.Probe{c.spec.LivenessProbe, c.spec.StartupProbe} {
		if p != nil && p.TerminationGracePeriodSeconds != nil {
			return time.Duration(*p.TerminationGracePeriodSeconds) * time.Second
		}
	}
	if s := pod.Spec.TerminationGracePeriodSeconds; s != nil {
		return time.Duration(*s) * time.Second
	}
	return defaultGrace
}

func (c *ctr) logDir() string { return filepath.Join(c.pr.dir, "logs", c.spec.Name) }

func (c *ctr) logPath(run int32) string {
	return filepath.Join(c.logDir(), strconv.Itoa(int(run))+".log")
}

// processSpec is what a container runs, with paths on the host.
type processSpec struct {
	argv []string
	env  []string // KEY=value
	dir  string
}

// proc is a running container process, leader of its own process group.
type proc struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when the leader has exited and been reaped
	err     error
	copying sync.WaitGroup // the log copiers, until every writer closed the pipes
	logFile *os.File
}

// startProcess starts spec in its own process group with stdout and stderr
// going, in CRI log format, to logPath.
func startProcess(spec *processSpec, logPath string) (*proc, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open container log: %w", err)
	}
	p := &proc{done: make(chan struct{}), logFile: f}
	var mu sync.Mutex
	var pipes []*os.File
	cmd := exec.Command(spec.argv[0], spec.argv[1:]...)
	cmd.Env, cmd.Dir = spec.env, spec.dir
	cmd.Stdin = nil
	for _, stream := range []struct {
		name string
		dst  *io.Writer
	}{{"stdout", &cmd.Stdout}, {"stderr", &cmd.Stderr}} {
		r, w, err := os.Pipe()
		if err != nil {
			f.Close()
			for _, p := range pipes {
				p.Close()
			}
			return nil, fmt.Errorf("pipe for %s: %w", stream.name, err)
		}
		pipes = append(pipes, r, w)
		*stream.dst = w
		p.copying.Go(func() {
			defer r.Close()
			copyCRILog(r, f, &mu, stream.name)
		})
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group: termination signals the whole tree the container
		// started, as a runtime kills a container's cgroup.
		Setpgid: true,
		// If the launcher dies without Stop, the kernel kills the leader.
		Pdeathsig: syscall.SIGKILL,
	}
	p.cmd = cmd
	startErr := cmd.Start()
	// The child has its copies of the write ends; closing ours lets the
	// copiers see EOF once every process of the container closed them.
	for i := 1; i < len(pipes); i += 2 {
		pipes[i].Close()
	}
	if startErr != nil {
		p.copying.Wait()
		f.Close()
		return nil, fmt.Errorf("start %s: %w", spec.argv[0], startErr)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM to the process group and SIGKILL at deadline, or at
// once when hurry is closed; it returns once the leader has exited.
func (p *proc) stop(deadline time.Time, hurry <-chan struct{}) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	case <-hurry:
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
}

// finish kills what is left of the process group once the leader exited (a
// container ends with its main process), and waits for the log copiers.
func (p *proc) finish() {
	<-p.done
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	// A process that left the group (setsid) may hold the pipes open for
	// ever; its output after this point is lost.
	copied := make(chan struct{})
	go func() {
		p.copying.Wait()
		close(copied)
	}()
	select {
	case <-copied:
	case <-time.After(2 * time.Second):
	}
	p.logFile.Close()
	// SIGKILL is delivered asynchronously: the container is over only when
	// no process of its group runs any more (zombies aside, which their
	// new parent reaps).
	deadline := time.Now().Add(5 * time.Second)
	for len(p.groupMembers()) > 0 && time.Now().Before(deadline) {
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		time.Sleep(10 * time.Millisecond)
	}
}

// exitCode is the container's exit code as a runtime reports it: 128+n
// for a process killed by signal n.
func (p *proc) exitCode() int32 {
	st := p.cmd.ProcessState
	if st == nil {
		return 128
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int32(ws.Signal())
	}
	return int32(st.ExitCode())
}

// groupMembers lists the live processes of the group, from /proc.
func (p *proc) groupMembers() []int {
	return processGroup(p.pid())
}

// processGroup lists the processes in process group pgid, from /proc.
func processGroup(pgid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		i := strings.LastIndexByte(string(stat), ')')
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// maxLogLine is where a long line is split into partial CRI records.
const maxLogLine = 16 * 1024

// copyCRILog copies a stream to the log in the CRI format the kubelet
// reads ("<RFC3339Nano> <stream> <F|P> <text>"), one record per line, a
// line longer than maxLogLine in P(artial) records.
func copyCRILog(r io.Reader, w io.Writer, mu *sync.Mutex, stream string) {
	br := bufio.NewReaderSize(r, maxLogLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			tag := "P"
			if line[len(line)-1] == '\n' {
				tag, line = "F", line[:len(line)-1]
			}
			rec := make([]byte, 0, len(line)+64)
			rec = time.Now().UTC().AppendFormat(rec, "2006-01-02T15:04:05.000000000Z07:00")
			rec = append(rec, ' ')
			rec = append(rec, stream...)
			rec = append(rec, ' ')
			rec = append(rec, tag...)
			rec = append(rec, ' ')
			rec = append(rec, line...)
			rec = append(rec, '\n')
			mu.Lock()
			_, _ = w.Write(rec)
			mu.Unlock()
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}
