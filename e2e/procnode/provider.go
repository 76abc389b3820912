package procnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	podutil "k8s.io/kubernetes/pkg/api/v1/pod"
	kubeletstatus "k8s.io/kubernetes/pkg/kubelet/status"
	kubetypes "k8s.io/kubernetes/pkg/kubelet/types"
)

type providerConfig struct {
	// ctx is the node's life; API calls of a pod's cleanup use it.
	ctx         context.Context
	cfg         Config
	nodeName    string
	client      kubernetes.Interface
	ips         *ipPool
	podsDir     string
	allocatable corev1.ResourceList
	log         *slog.Logger
}

// provider is vk's PodLifecycleHandler for one node: it runs the pods
// bound to the node as local processes.
type provider struct {
	providerConfig
	recorder record.EventRecorder

	mu       sync.Mutex
	pods     map[string]*podRuntime // by namespace/name
	notify   func(*corev1.Pod)
	stopping bool
	wg       sync.WaitGroup // one per pod runtime, until its processes are gone
}

var (
	_ vknode.PodLifecycleHandler = (*provider)(nil)
	_ vknode.PodNotifier         = (*provider)(nil)
)

func newProvider(c providerConfig) *provider {
	return &provider{providerConfig: c, pods: map[string]*podRuntime{}}
}

func podKey(namespace, name string) string { return namespace + "/" + name }

func (p *provider) lookup(namespace, name string) *podRuntime {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[podKey(namespace, name)]
}

// NotifyPods registers vk's callback for status changes.
func (p *provider) NotifyPods(_ context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notify = f
}

// CreatePod starts running a pod: its IP, dir and volumes, then its
// containers, all in the background. It fails only when the pod cannot get
// an address (vk then marks the pod failed, as a kubelet would after
// failing to create the sandbox).
func (p *provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	for {
		p.mu.Lock()
		if p.stopping {
			p.mu.Unlock()
			return errors.New("node is stopping")
		}
		old := p.pods[key]
		if old == nil {
			break
		}
		if old.uid() == pod.UID {
			p.mu.Unlock()
			return p.UpdatePod(ctx, pod)
		}
		p.mu.Unlock()
		// A pod of the same name that is still going away (a StatefulSet
		// replacing its pod): wait for it rather than fail, since vk turns
		// an error here into a Failed pod.
		old.terminate(nil)
		select {
		case <-old.gone:
		case <-ctx.Done():
			return fmt.Errorf("wait for the previous pod %s (uid %s) to go: %w", key, old.uid(), ctx.Err())
		}
	}
	ip, err := p.ips.allocate()
	if err != nil {
		p.mu.Unlock()
		return err
	}
	dir := filepath.Join(p.podsDir, fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID))
	pr := newPodRuntime(p, pod, ip, dir)
	p.pods[key] = pr
	p.wg.Add(1)
	p.mu.Unlock()
	p.log.Info("pod created", "pod", key, "ip", ip)
	go func() {
		defer p.wg.Done()
		pr.run()
	}()
	return nil
}

// UpdatePod takes the pod's new metadata and spec. Only what a running
// pod may change matters: labels and annotations (the downward API), and
// readiness gate conditions.
func (p *provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	pr := p.lookup(pod.Namespace, pod.Name)
	if pr == nil || pr.uid() != pod.UID {
		return errdefs.NotFoundf("pod %s/%s not found", pod.Namespace, pod.Name)
	}
	pr.update(pod)
	return nil
}

// DeletePod terminates the pod (SIGTERM, SIGKILL after the grace period)
// and returns once its processes are gone, its final status written, its
// dir removed and the Pod object deleted, as a kubelet does. It blocks:
// vk force-deletes the object one grace period after DeletePod returns,
// which must never happen while the pod's processes still run. Called
// again (vk does), it only shortens the grace period if asked to.
func (p *provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	pr := p.lookup(pod.Namespace, pod.Name)
	if pr == nil || (pod.UID != "" && pr.uid() != pod.UID) {
		return errdefs.NotFoundf("pod %s/%s not found", pod.Namespace, pod.Name)
	}
	pr.terminate(pod)
	select {
	case <-pr.gone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for pod %s to terminate: %w", pr.key, ctx.Err())
	}
}

// GetPod is the pod as the provider runs it, status included.
func (p *provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	pr := p.lookup(namespace, name)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s not found", namespace, name)
	}
	return pr.snapshot(), nil
}

// GetPodStatus is the pod's status as the provider sees it.
func (p *provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods lists the pods the provider runs.
func (p *provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	prs := make([]*podRuntime, 0, len(p.pods))
	for _, pr := range p.pods {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	pods := make([]*corev1.Pod, 0, len(prs))
	for _, pr := range prs {
		pods = append(pods, pr.snapshot())
	}
	return pods, nil
}

// podUpdated sees every change of a pod of this node. The conditions that
// others own (readiness gates) decide Ready, and vk only tells the
// provider about spec changes: a change of those conditions makes the pod
// report a new status, and so a new Ready.
func (p *provider) podUpdated(old, cur *corev1.Pod) {
	if equality.Semantic.DeepEqual(foreignConditions(old.Status.Conditions), foreignConditions(cur.Status.Conditions)) {
		return
	}
	if pr := p.lookup(cur.Namespace, cur.Name); pr != nil && pr.uid() == cur.UID {
		pr.setForeignConditions(cur.Status.Conditions)
	}
}

// forget drops a pod whose processes are gone and whose object was deleted.
func (p *provider) forget(pr *podRuntime) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pods[pr.key] == pr {
		delete(p.pods, pr.key)
	}
}

// send hands a status to vk; never called with a lock held (vk may block).
func (p *provider) send(pod *corev1.Pod) {
	p.mu.Lock()
	f, stopping := p.notify, p.stopping
	p.mu.Unlock()
	if f != nil && !stopping {
		f(pod)
	}
}

// killAll kills every process of every pod at once and waits until all
// are reaped. No pod is restarted, reported or deleted afterwards.
func (p *provider) killAll() error {
	p.mu.Lock()
	p.stopping = true
	prs := make([]*podRuntime, 0, len(p.pods))
	for _, pr := range p.pods {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	for _, pr := range prs {
		pr.kill()
	}
	p.wg.Wait()
	var errs []error
	for _, pr := range prs {
		if left := pr.leftovers(); len(left) > 0 {
			errs = append(errs, fmt.Errorf("pod %s: processes %v still running", pr.key, left))
		}
	}
	return errors.Join(errs...)
}

// ownCondition reports whether the node (as kubelet) sets this pod
// condition; all others belong to someone else and are never touched.
func ownCondition(t corev1.PodConditionType) bool {
	return kubetypes.PodConditionByKubelet(t)
}

func foreignConditions(conds []corev1.PodCondition) []corev1.PodCondition {
	var out []corev1.PodCondition
	for _, c := range conds {
		if !ownCondition(c.Type) {
			out = append(out, c)
		}
	}
	return out
}

// podsClient is the client vk's pod controller writes pod statuses with.
// vk replaces the whole status with the provider's; a kubelet instead
// merges: conditions it does not own (readiness gates patched by a
// controller, DisruptionTarget, ...) and fields others set are kept. So
// UpdateStatus here rebuilds the status on the latest Pod from the server
// and recomputes Ready against that Pod's readiness gate conditions, under
// optimistic concurrency: a gate patched in between means a conflict and
// another round, never a lost condition.
type podsClient struct {
	typedcorev1.PodsGetter
	p *provider
}

func (c podsClient) Pods(namespace string) typedcorev1.PodInterface {
	return statusMerger{PodInterface: c.PodsGetter.Pods(namespace), p: c.p}
}

type statusMerger struct {
	typedcorev1.PodInterface
	p *provider
}

func (m statusMerger) UpdateStatus(ctx context.Context, pod *corev1.Pod, opts metav1.UpdateOptions) (*corev1.Pod, error) {
	var out *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := m.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.UID != "" && cur.UID != pod.UID {
			// A new pod of the same name: this status is not for it.
			out = cur
			return nil
		}
		next := cur.DeepCopy()
		mergeStatus(next, &pod.Status)
		if equality.Semantic.DeepEqual(next.Status, cur.Status) {
			out = cur
			return nil
		}
		out, err = m.PodInterface.UpdateStatus(ctx, next, opts)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("update status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return out, nil
}

// mergeStatus writes the node's part of a pod status (ours) onto cur, which
// is the Pod as the server has it.
func mergeStatus(cur *corev1.Pod, ours *corev1.PodStatus) {
	old := cur.Status.DeepCopy()
	st := &cur.Status
	st.Phase = ours.Phase
	st.Reason, st.Message = ours.Reason, ours.Message
	st.HostIP, st.HostIPs = ours.HostIP, ours.HostIPs
	st.PodIP, st.PodIPs = ours.PodIP, ours.PodIPs
	if ours.StartTime != nil {
		st.StartTime = ours.StartTime
	}
	st.InitContainerStatuses = ours.InitContainerStatuses
	st.ContainerStatuses = ours.ContainerStatuses

	var conds []corev1.PodCondition
	for _, c := range ours.Conditions {
		if ownCondition(c.Type) && c.Type != corev1.PodReady {
			conds = append(conds, c)
		}
	}
	conds = append(conds, foreignConditions(old.Conditions)...)
	conds = append(conds, kubeletstatus.GeneratePodReadyCondition(cur, old, conds, ours.ContainerStatuses, ours.Phase))
	now := metav1.Now()
	for i := range conds {
		c := &conds[i]
		if !ownCondition(c.Type) {
			continue
		}
		if _, prev := podutil.GetPodConditionFromList(old.Conditions, c.Type); prev != nil && prev.Status == c.Status {
			c.LastTransitionTime = prev.LastTransitionTime
			c.LastProbeTime = prev.LastProbeTime
		} else {
			c.LastTransitionTime = now
		}
	}
	// Keep the server's order for conditions that were there, so that an
	// unchanged status compares equal and costs no write.
	slices.SortStableFunc(conds, func(a, b corev1.PodCondition) int {
		ia, _ := podutil.GetPodConditionFromList(old.Conditions, a.Type)
		ib, _ := podutil.GetPodConditionFromList(old.Conditions, b.Type)
		if ia < 0 {
			ia = len(old.Conditions)
		}
		if ib < 0 {
			ib = len(old.Conditions)
		}
		return ia - ib
	})
	st.Conditions = conds
}
