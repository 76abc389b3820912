package sched

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	spv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"
	spclientset "sigs.k8s.io/scheduler-plugins/pkg/generated/clientset/versioned"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/test/podbuilder"
)

const (
	gpuResource = cluster.GPUResource
	// gangLabel names a pod's gang whatever the scheduler: the tracker and
	// the deleter go by it.
	gangLabel = "bench.muster.dev/gang"
	// createWorkers is how many pods are created at once: enough that
	// creating them is faster than any scheduler binds them.
	createWorkers = 16
)

// workload is a set of identical gangs.
type workload struct {
	gangs, members int
	gpus           int64 // per member
	// topologyKey, if set, asks that each gang stay in one domain of this
	// node label.
	topologyKey string
}

func (w workload) pods() int { return w.gangs * w.members }

func (w workload) String() string {
	s := fmt.Sprintf("%d gangs x %d pods x %d GPU", w.gangs, w.members, w.gpus)
	if w.topologyKey != "" {
		s += ", each in one " + w.topologyKey
	}
	return s
}

func gangName(i int) string { return "g" + strconv.Itoa(i) }

// clients are the benchmark's own: fast enough that creating pods never
// waits for its rate limiter.
type clients struct {
	core kubernetes.Interface
	sp   spclientset.Interface
}

func newClients(rc *rest.Config) (clients, error) {
	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst = 5000, 10000
	core, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return clients{}, err
	}
	sp, err := spclientset.NewForConfig(rc)
	if err != nil {
		return clients{}, err
	}
	return clients{core: core, sp: sp}, nil
}

// createGroups creates the objects that define the gangs for schedulers
// that need them (PodGroups), before the pods: workloads create those first.
func (w workload) createGroups(ctx context.Context, cl clients, ns string, s scheduler) error {
	create := func(i int) error {
		name := gangName(i)
		switch s.groups {
		case coschedulingGroups:
			pg := &spv1alpha1.PodGroup{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec:       spv1alpha1.PodGroupSpec{MinMember: int32(w.members)},
			}
			_, err := cl.sp.SchedulingV1alpha1().PodGroups(ns).Create(ctx, pg, metav1.CreateOptions{})
			return err
		case upstreamGroups:
			pg := &schedulingv1beta1.PodGroup{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: schedulingv1beta1.PodGroupSpec{SchedulingPolicy: schedulingv1beta1.PodGroupSchedulingPolicy{
					Gang: &schedulingv1beta1.GangSchedulingPolicy{MinCount: int32(w.members)},
				}},
			}
			if w.topologyKey != "" {
				pg.Spec.SchedulingConstraints = &schedulingv1beta1.PodGroupSchedulingConstraints{
					Topology: []schedulingv1beta1.TopologyConstraint{{Key: w.topologyKey}},
				}
			}
			_, err := cl.core.SchedulingV1beta1().PodGroups(ns).Create(ctx, pg, metav1.CreateOptions{})
			return err
		}
		return nil
	}
	return inParallel(ctx, w.gangs, func(i int) error {
		if err := create(i); err != nil {
			return fmt.Errorf("create group object %s/%s for %s: %w", ns, gangName(i), s.name, err)
		}
		return nil
	})
}

// pod is member m of gang i, as scheduler s expects it.
func (w workload) pod(s scheduler, i, m int) *corev1.Pod {
	g := gangName(i)
	pod := podbuilder.MakePod().Name(g+"-"+strconv.Itoa(m)).Label(gangLabel, g).PodIndex(m).
		SchedulerName(s.profile).Toleration(cluster.KwokAnnotation).
		Container("model", "bench").GPU(w.gpus).Request(corev1.ResourceCPU, "100m")
	switch s.groups {
	case musterGroups:
		pod.Group(g).Size(w.members)
		if w.topologyKey != "" {
			pod.TopologyKey(w.topologyKey)
		}
	case coschedulingGroups:
		pod.PodGroup(g)
	case upstreamGroups:
		pod.SchedulingGroup(g)
	}
	return pod.Obj()
}

// createPods creates every member of every gang, gang after gang (members
// of one gang arrive together, as from one workload controller), with
// createWorkers requests in flight.
func (w workload) createPods(ctx context.Context, cl clients, ns string, s scheduler) error {
	return inParallel(ctx, w.pods(), func(k int) error {
		pod := w.pod(s, k/w.members, k%w.members)
		if _, err := cl.core.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s/%s: %w", ns, pod.Name, err)
		}
		return nil
	})
}

// inParallel calls f(0) .. f(n-1), handing out indices in order to
// createWorkers goroutines, and returns the first errors.
func inParallel(ctx context.Context, n int, f func(i int) error) error {
	next := make(chan int)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for range min(createWorkers, n) {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more", len(errs)-3))
	}
	if len(errs) == 0 && ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.Join(errs...)
}

// deleteGang deletes a gang's pods in one call: the gang has finished.
func deleteGang(ctx context.Context, cs kubernetes.Interface, ns, gang string) error {
	err := cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{LabelSelector: gangLabel + "=" + gang})
	if err != nil {
		return fmt.Errorf("delete gang %s/%s: %w", ns, gang, err)
	}
	return nil
}

// newNamespace creates a namespace for one run.
func newNamespace(ctx context.Context, cs kubernetes.Interface, run string) (string, error) {
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: run + "-"}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace for %s: %w", run, err)
	}
	return ns.Name, nil
}

// clearNamespace deletes every pod of ns, waits until they are gone (so the
// next run finds every node empty), then deletes ns (its PodGroups go with
// it). The apiserver works through one delete-collection call with a single
// worker (--delete-collection-workers=1), about 10 ms a pod here; one call
// per gang, createWorkers at once, clears 800 pods several times faster.
func clearNamespace(ctx context.Context, cs kubernetes.Interface, ns string, gangs int) error {
	err := inParallel(ctx, gangs, func(i int) error { return deleteGang(ctx, cs, ns, gangName(i)) })
	if err != nil {
		return err
	}
	if err := cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{}); err != nil {
		return fmt.Errorf("delete pods of %s: %w", ns, err)
	}
	left := -1
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		left = len(pods.Items)
		return left == 0, nil
	})
	if err != nil {
		return fmt.Errorf("pods of %s not gone (%d left): %w", ns, left, err)
	}
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	return nil
}
