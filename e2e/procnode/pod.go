package procnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	podutil "k8s.io/kubernetes/pkg/api/v1/pod"
	kubeletstatus "k8s.io/kubernetes/pkg/kubelet/status"
)

// defaultGrace is the termination grace period of a pod that sets none
// (the API server defaults it to 30s anyway).
const defaultGrace = 30 * time.Second

// podRuntime is one pod on a node: its address, its dir, and a supervisor
// per container.
type podRuntime struct {
	p    *provider
	key  string
	uidv types.UID
	dir  string
	ip   netip.Addr
	log  *slog.Logger

	// ctx ends when the pod is to terminate (deleted, or the node stops).
	ctx    context.Context
	cancel context.CancelFunc
	// hurry is closed when processes are to be killed without grace.
	hurry     chan struct{}
	hurryOnce sync.Once
	// gone is closed once the pod's processes are gone and, unless the
	// node stopped, its dir and object too.
	gone chan struct{}
	// bg holds the pod's goroutines besides its containers' (the token
	// refresher), which end with ctx; finish waits for them.
	bg sync.WaitGroup

	// reportMu orders status reports: each one is taken and sent under it,
	// so vk never gets an older status after a newer one.
	reportMu sync.Mutex

	mu           sync.Mutex
	pod          *corev1.Pod // latest metadata and spec
	foreign      []corev1.PodCondition
	startTime    metav1.Time
	sandboxOK    bool   // dir and volumes set up
	initDone     bool   // every init container has completed
	failed       bool   // an init container failed under restartPolicy Never
	message      string // why the pod is not running, if it is not
	inits        []*ctr
	ctrs         []*ctr
	terminating  bool
	killDeadline time.Time // when termination turns to SIGKILL
	stopped      bool      // the node stopped: kill, report nothing
	volumes      map[string]string
}

func newPodRuntime(p *provider, pod *corev1.Pod, ip netip.Addr, dir string) *podRuntime {
	ctx, cancel := context.WithCancel(context.Background())
	pr := &podRuntime{
		p:         p,
		key:       podKey(pod.Namespace, pod.Name),
		uidv:      pod.UID,
		dir:       dir,
		ip:        ip,
		log:       p.log.With("pod", podKey(pod.Namespace, pod.Name)),
		ctx:       ctx,
		cancel:    cancel,
		hurry:     make(chan struct{}),
		gone:      make(chan struct{}),
		pod:       pod.DeepCopy(),
		foreign:   foreignConditions(pod.Status.Conditions),
		startTime: metav1.Now(),
	}
	// The container specs of a pod do not change (but for the image,
	// which does not matter here): the supervisors keep the first ones.
	for i := range pr.pod.Spec.InitContainers {
		pr.inits = append(pr.inits, newCtr(pr, &pr.pod.Spec.InitContainers[i], true))
	}
	for i := range pr.pod.Spec.Containers {
		pr.ctrs = append(pr.ctrs, newCtr(pr, &pr.pod.Spec.Containers[i], false))
	}
	return pr
}

func (pr *podRuntime) uid() types.UID { return pr.uidv }

// current is a copy of the pod's latest metadata and spec.
func (pr *podRuntime) current() *corev1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pod.DeepCopy()
}

func (pr *podRuntime) update(pod *corev1.Pod) {
	pr.mu.Lock()
	status := pr.pod.Status
	pr.pod = pod.DeepCopy()
	pr.pod.Status = status
	pr.foreign = foreignConditions(pod.Status.Conditions)
	pr.mu.Unlock()
	pr.report()
}

func (pr *podRuntime) setForeignConditions(conds []corev1.PodCondition) {
	pr.mu.Lock()
	pr.foreign = foreignConditions(conds)
	pr.pod.Status.Conditions = conds
	pr.mu.Unlock()
	pr.report()
}

// terminate starts the pod's termination with the grace period of the
// deleted pod (nil: the spec's). A second call may shorten it.
func (pr *podRuntime) terminate(deleted *corev1.Pod) {
	grace := defaultGrace
	pr.mu.Lock()
	if s := pr.pod.Spec.TerminationGracePeriodSeconds; s != nil {
		grace = time.Duration(*s) * time.Second
	}
	if deleted != nil && deleted.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*deleted.DeletionGracePeriodSeconds) * time.Second
	}
	if deleted != nil {
		pr.pod.DeletionTimestamp = deleted.DeletionTimestamp
		pr.pod.DeletionGracePeriodSeconds = deleted.DeletionGracePeriodSeconds
	}
	deadline := time.Now().Add(grace)
	if !pr.terminating || deadline.Before(pr.killDeadline) {
		pr.killDeadline = deadline
	}
	first := !pr.terminating
	pr.terminating = true
	pr.mu.Unlock()
	if first {
		pr.log.Info("terminating pod", "grace", grace)
	}
	if grace <= 0 {
		pr.hurryOnce.Do(func() { close(pr.hurry) })
	}
	pr.cancel()
}

// kill ends every process at once; the node is stopping.
func (pr *podRuntime) kill() {
	pr.mu.Lock()
	pr.stopped, pr.terminating = true, true
	pr.killDeadline = time.Now()
	pr.mu.Unlock()
	pr.hurryOnce.Do(func() { close(pr.hurry) })
	pr.cancel()
}

// graceDeadline is when a container being stopped for the pod's
// termination gets SIGKILL.
func (pr *podRuntime) graceDeadline() time.Time {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.killDeadline
}

func (pr *podRuntime) isStopped() bool {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.stopped
}

// run is the pod's life: sandbox, init containers in order, then the
// containers until none will run again; then, once the pod is deleted,
// cleanup.
func (pr *podRuntime) run() {
	defer pr.finish()
	if !pr.setup() {
		return
	}
	// Native sidecars (init containers with restartPolicy Always) keep
	// running beside the containers; they are stopped once those are done.
	sidecarCtx, stopSidecars := context.WithCancel(pr.ctx)
	defer stopSidecars()
	var sidecars sync.WaitGroup
	defer sidecars.Wait()
	for _, c := range pr.inits {
		if c.restartable() {
			sidecars.Go(func() { c.supervise(sidecarCtx) })
			if !c.waitStarted(pr.ctx) {
				return
			}
			continue
		}
		if !c.runInit(pr.ctx) {
			return
		}
	}
	pr.mu.Lock()
	pr.initDone = true
	pr.mu.Unlock()
	pr.report()

	var wg sync.WaitGroup
	for _, c := range pr.ctrs {
		wg.Go(func() { c.supervise(pr.ctx) })
	}
	wg.Wait()
	stopSidecars()
}

// setup makes the pod's dir and volumes, retrying (as the kubelet retries
// mounts) until it works or the pod terminates; then it starts the
// refresher of the pod's service-account tokens (token.go).
func (pr *podRuntime) setup() bool {
	backoff := pr.p.cfg.BackoffInitial
	for {
		tokens, err := pr.makeSandbox(pr.ctx)
		if err == nil {
			pr.mu.Lock()
			pr.sandboxOK, pr.message = true, ""
			pr.mu.Unlock()
			if len(tokens) > 0 {
				pod := pr.current()
				pr.bg.Go(func() { pr.refreshTokens(pr.ctx, pod, tokens) })
			}
			pr.report()
			return true
		}
		pr.log.Warn("pod setup failed", "err", err)
		pr.mu.Lock()
		pr.message = err.Error()
		pr.mu.Unlock()
		pr.p.event(pr.current(), corev1.EventTypeWarning, "FailedMount", err.Error())
		pr.report()
		if !sleepCtx(pr.ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, pr.p.cfg.BackoffMax)
	}
}

// makeSandbox makes the pod's dir and volumes; it returns the
// service-account token files to keep fresh.
func (pr *podRuntime) makeSandbox(ctx context.Context) ([]*projectedToken, error) {
	for _, d := range []string{pr.dir, filepath.Join(pr.dir, "logs"), filepath.Join(pr.dir, "volumes")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create pod dir: %w", err)
		}
	}
	vols, tokens, err := pr.makeVolumes(ctx, pr.current())
	if err != nil {
		return nil, err
	}
	pr.mu.Lock()
	pr.volumes = vols
	pr.mu.Unlock()
	return tokens, nil
}

// finish runs once every container is done: it waits for the pod's
// deletion, then removes the dir, frees the IP, writes the final status
// and deletes the Pod object, as the kubelet's status manager does once a
// deleted pod's containers are gone.
func (pr *podRuntime) finish() {
	defer close(pr.gone)
	pr.report()
	<-pr.ctx.Done()
	pr.bg.Wait()
	if pr.isStopped() {
		return
	}
	if err := os.RemoveAll(pr.dir); err != nil {
		pr.log.Warn("remove pod dir", "err", err)
	}
	pr.p.ips.release(pr.ip)

	ctx, cancel := context.WithTimeout(pr.p.ctx, 30*time.Second)
	defer cancel()
	pod := pr.snapshot()
	pods := statusMerger{PodInterface: pr.p.client.CoreV1().Pods(pod.Namespace), p: pr.p}
	if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		pr.log.Warn("write final status", "err", err)
	}
	zero := int64(0)
	err := pr.p.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      metav1.NewUIDPreconditions(string(pod.UID)),
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		pr.log.Warn("delete pod object", "err", err)
	}
	pr.p.forget(pr)
	pr.log.Info("pod gone")
}

// report sends the pod's current status to vk.
func (pr *podRuntime) report() {
	pr.reportMu.Lock()
	defer pr.reportMu.Unlock()
	if pr.isStopped() {
		return
	}
	pr.p.send(pr.snapshot())
}

// snapshot is the pod with the status the node reports for it.
func (pr *podRuntime) snapshot() *corev1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pod := pr.pod.DeepCopy()
	old := pr.pod.Status.DeepCopy()
	st := corev1.PodStatus{
		HostIP:    hostIP,
		HostIPs:   []corev1.HostIP{{IP: hostIP}},
		PodIP:     pr.ip.String(),
		PodIPs:    []corev1.PodIP{{IP: pr.ip.String()}},
		StartTime: &pr.startTime,
		QOSClass:  pod.Status.QOSClass,
		Message:   pr.message,
	}
	for _, c := range pr.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, c.statusLocked())
	}
	for _, c := range pr.ctrs {
		st.ContainerStatuses = append(st.ContainerStatuses, c.statusLocked())
	}
	st.Phase = pr.phaseLocked()
	all := append(append([]corev1.ContainerStatus{}, st.InitContainerStatuses...), st.ContainerStatuses...)
	var conds []corev1.PodCondition
	if ownCondition(corev1.PodReadyToStartContainers) {
		s := corev1.ConditionFalse
		if pr.sandboxOK {
			s = corev1.ConditionTrue
		}
		conds = append(conds, corev1.PodCondition{Type: corev1.PodReadyToStartContainers, Status: s})
	}
	conds = append(conds,
		kubeletstatus.GeneratePodInitializedCondition(pod, old, all, st.Phase),
		kubeletstatus.GenerateContainersReadyCondition(pod, old, all, st.Phase),
		corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
	)
	conds = append(conds, pr.foreign...)
	conds = append(conds, kubeletstatus.GeneratePodReadyCondition(pod, old, conds, all, st.Phase))
	// Keep the times of conditions the server already has, so that an
	// unchanged status compares equal to the last one reported.
	for i := range conds {
		if _, prev := podutil.GetPodConditionFromList(old.Conditions, conds[i].Type); prev != nil && prev.Status == conds[i].Status {
			conds[i].LastTransitionTime = prev.LastTransitionTime
		}
	}
	st.Conditions = conds
	pod.Status = st
	return pod
}

// phaseLocked is the pod phase from the containers' states, after the
// kubelet's getPhase: Pending until every container has started once,
// Running while any runs or will run again, then Succeeded or Failed.
func (pr *podRuntime) phaseLocked() corev1.PodPhase {
	if pr.failed {
		return corev1.PodFailed
	}
	if !pr.initDone {
		return corev1.PodPending
	}
	var waiting, running, failed int
	for _, c := range pr.ctrs {
		switch {
		case c.state.Running != nil:
			running++
		case c.state.Terminated != nil:
			if c.state.Terminated.ExitCode != 0 {
				failed++
			}
		case c.last.Terminated != nil:
			running++ // waiting to restart
		default:
			waiting++
		}
	}
	switch {
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	}
	if !pr.terminating {
		switch pr.pod.Spec.RestartPolicy {
		case corev1.RestartPolicyAlways, "":
			return corev1.PodRunning
		case corev1.RestartPolicyOnFailure:
			if failed > 0 {
				return corev1.PodRunning
			}
		}
	}
	if failed > 0 {
		return corev1.PodFailed
	}
	return corev1.PodSucceeded
}

// leftovers lists processes of the pod still alive (none, after run).
func (pr *podRuntime) leftovers() []int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	var pids []int
	for _, c := range append(append([]*ctr{}, pr.inits...), pr.ctrs...) {
		if c.proc != nil {
			pids = append(pids, c.proc.groupMembers()...)
		}
	}
	return pids
}

// sleepCtx waits d, or less if ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// event records an event on the pod, if a recorder is set.
func (p *provider) event(pod *corev1.Pod, eventType, reason, msg string) {
	if p.recorder != nil {
		p.recorder.Event(pod, eventType, reason, msg)
	}
}

var errNoCommand = errors.New("no command: images are not run here, so a container needs a command (or args) unless it is of the agent image")
