package sched

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// tracker follows the pods of one run through a watch and knows, at any
// moment, which gangs are whole (every member bound at once) and how many
// GPUs gangs that are not whole hold. Times are when the watch delivered
// the change, the same delay for every scheduler.
type tracker struct {
	size int               // members per gang
	rack map[string]string // node -> rack

	mu         sync.Mutex
	pods       map[string]*podState
	gangs      map[string]*gangState
	firstBind  time.Time
	lastBind   time.Time
	onWhole    func(gang string) // called (without mu) once per gang
	whole      int
	wholeCh    chan struct{} // signalled whenever a gang becomes whole
	heldSample heldStats
}

type podState struct {
	gang  string
	gpus  int64
	node  string // "" until bound
	alive bool
}

type gangState struct {
	bound       int
	boundGPUs   int64
	firstBindAt time.Time // zero until a member was bound
	wholeAt     time.Time // zero until every member was bound
	racks       map[string]bool
}

// heldStats summarises the GPUs held by gangs that were not whole, sampled.
type heldStats struct {
	max        int64
	gpuSeconds float64
	samples    int
	timeline   []int64 // one value per second of the run: the max seen in it
}

func newTracker(size int, rack map[string]string) *tracker {
	return &tracker{
		size:    size,
		rack:    rack,
		pods:    map[string]*podState{},
		gangs:   map[string]*gangState{},
		wholeCh: make(chan struct{}, 1),
	}
}

// watch follows the namespace's pods until ctx ends. It returns once the
// watch is established, so that nothing created afterwards is missed.
func (tr *tracker) watch(ctx context.Context, cs kubernetes.Interface, ns string) error {
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list pods of %s: %w", ns, err)
	}
	for i := range list.Items {
		tr.observe(&list.Items[i], false)
	}
	lw := &cache.ListWatch{WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		return cs.CoreV1().Pods(ns).Watch(ctx, o)
	}}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, lw)
	if err != nil {
		return fmt.Errorf("watch pods of %s: %w", ns, err)
	}
	go func() {
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.ResultChan():
				if !ok {
					return
				}
				if pod, isPod := ev.Object.(*corev1.Pod); isPod {
					tr.observe(pod, ev.Type == watch.Deleted)
				}
			}
		}
	}()
	return nil
}

func (tr *tracker) observe(pod *corev1.Pod, deleted bool) {
	now := time.Now()
	g := pod.Labels[gangLabel]
	if g == "" {
		return
	}
	tr.mu.Lock()
	p := tr.pods[pod.Name]
	if p == nil {
		p = &podState{gang: g, gpus: podGPUs(pod), alive: true}
		tr.pods[pod.Name] = p
	}
	gs := tr.gangs[g]
	if gs == nil {
		gs = &gangState{racks: map[string]bool{}}
		tr.gangs[g] = gs
	}
	becameWhole := false
	switch {
	case deleted || pod.DeletionTimestamp != nil:
		if p.alive && p.node != "" {
			gs.bound--
			gs.boundGPUs -= p.gpus
		}
		p.alive = false
	case p.node == "" && pod.Spec.NodeName != "" && p.alive:
		p.node = pod.Spec.NodeName
		gs.bound++
		gs.boundGPUs += p.gpus
		gs.racks[tr.rack[p.node]] = true
		if tr.firstBind.IsZero() {
			tr.firstBind = now
		}
		if gs.firstBindAt.IsZero() {
			gs.firstBindAt = now
		}
		tr.lastBind = now
		if gs.bound == tr.size && gs.wholeAt.IsZero() {
			gs.wholeAt = now
			tr.whole++
			becameWhole = true
		}
	}
	onWhole := tr.onWhole
	tr.mu.Unlock()
	if becameWhole {
		select {
		case tr.wholeCh <- struct{}{}:
		default:
		}
		if onWhole != nil {
			onWhole(g)
		}
	}
}

func podGPUs(pod *corev1.Pod) int64 {
	var n int64
	for _, c := range pod.Spec.Containers {
		if q, ok := c.Resources.Requests[gpuResource]; ok {
			n += q.Value()
		}
	}
	return n
}

// heldByIncomplete is the GPUs that members of gangs not (yet) whole hold.
func (tr *tracker) heldByIncomplete() int64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var held int64
	for _, gs := range tr.gangs {
		if gs.wholeAt.IsZero() {
			held += gs.boundGPUs
		}
	}
	return held
}

// sample records heldByIncomplete every interval until ctx ends.
func (tr *tracker) sample(ctx context.Context, start time.Time, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			held := tr.heldByIncomplete()
			tr.mu.Lock()
			s := &tr.heldSample
			s.samples++
			s.max = max(s.max, held)
			s.gpuSeconds += float64(held) * now.Sub(last).Seconds()
			sec := int(now.Sub(start) / time.Second)
			for len(s.timeline) <= sec {
				s.timeline = append(s.timeline, 0)
			}
			s.timeline[sec] = max(s.timeline[sec], held)
			tr.mu.Unlock()
			last = now
		}
	}
}

// waitWhole waits until n gangs are whole or ctx ends; it reports how
// many are.
func (tr *tracker) waitWhole(ctx context.Context, n int) int {
	for {
		tr.mu.Lock()
		whole := tr.whole
		tr.mu.Unlock()
		if whole >= n {
			return whole
		}
		select {
		case <-ctx.Done():
			return whole
		case <-tr.wholeCh:
		}
	}
}

// summary is what a run's tracker saw.
type summary struct {
	firstBind, lastBind, lastWhole time.Time
	boundPods                      int // pods bound at some point
	whole                          int // gangs that were whole at some point
	partial                        int // gangs holding some members, never whole
	partialGPUs                    int64
	split                          int // whole gangs spread over more than one rack
	held                           heldStats
	// partialFor is, per gang that had a member bound, how long it held
	// GPUs while not whole: from its first bind until it was whole, or
	// until end if it never was.
	partialFor []time.Duration
}

func (tr *tracker) summary(end time.Time) summary {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	s := summary{firstBind: tr.firstBind, lastBind: tr.lastBind, whole: tr.whole, held: tr.heldSample}
	s.held.timeline = append([]int64(nil), tr.heldSample.timeline...)
	for _, p := range tr.pods {
		if p.node != "" {
			s.boundPods++
		}
	}
	for _, gs := range tr.gangs {
		switch {
		case gs.firstBindAt.IsZero():
		case gs.wholeAt.IsZero():
			s.partialFor = append(s.partialFor, end.Sub(gs.firstBindAt))
		default:
			s.partialFor = append(s.partialFor, gs.wholeAt.Sub(gs.firstBindAt))
		}
		switch {
		case !gs.wholeAt.IsZero():
			if gs.wholeAt.After(s.lastWhole) {
				s.lastWhole = gs.wholeAt
			}
			if len(gs.racks) > 1 {
				s.split++
			}
		case gs.bound > 0:
			s.partial++
			s.partialGPUs += gs.boundGPUs
		}
	}
	return s
}
