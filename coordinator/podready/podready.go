// Package podready mirrors a group's readiness onto its pods: the
// condition muster.dev/group-ready, which the webhook adds as a readiness
// gate, is True on every pod of a group only while every rank's runtime is
// ready, and False while the group forms or restarts. So a Service over the
// group's pods routes to it exactly when it can answer.
package podready

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/muster-dev/muster/podapi"
)

// Syncer patches the condition on pods. It is safe for concurrent use;
// updates for one group are applied in order, the latest winning.
type Syncer struct {
	cs  kubernetes.Interface
	log *slog.Logger

	mu      sync.Mutex
	pending map[string]update // by namespace/group
	running map[string]bool
}

type update struct {
	namespace string
	pods      []string
	ready     bool
	message   string
}

// New returns a Syncer using cs.
func New(cs kubernetes.Interface, log *slog.Logger) *Syncer {
	return &Syncer{cs: cs, log: log, pending: map[string]update{}, running: map[string]bool{}}
}

// Set records that group (in namespace) is ready or not and patches its
// pods in the background. Pods that do not exist (a bare-host member, a
// deleted pod) are skipped.
func (s *Syncer) Set(namespace, group string, pods []string, ready bool, message string) {
	key := namespace + "/" + group
	s.mu.Lock()
	s.pending[key] = update{namespace: namespace, pods: pods, ready: ready, message: message}
	if s.running[key] {
		s.mu.Unlock()
		return
	}
	s.running[key] = true
	s.mu.Unlock()
	go s.drain(key)
}

func (s *Syncer) drain(key string) {
	for {
		s.mu.Lock()
		u, ok := s.pending[key]
		delete(s.pending, key)
		if !ok {
			delete(s.running, key)
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, pod := range u.pods {
			if err := s.patch(u, pod); err != nil {
				s.log.Warn("set pod condition", "pod", u.namespace+"/"+pod, "condition", string(podapi.ConditionGroupReady), "err", err)
			}
		}
	}
}

// Event records a warning event on each of the pods (in the background);
// pods that do not exist are skipped.
func (s *Syncer) Event(namespace string, pods []string, reason, message string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		now := metav1.NewTime(time.Now())
		for _, pod := range pods {
			p, err := s.cs.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
			if err != nil {
				continue
			}
			ev := &v1.Event{
				ObjectMeta:     metav1.ObjectMeta{GenerateName: pod + ".", Namespace: namespace},
				InvolvedObject: v1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: pod, UID: p.UID, APIVersion: "v1"},
				Reason:         reason, Message: message, Type: v1.EventTypeWarning,
				FirstTimestamp: now, LastTimestamp: now, Count: 1,
				Source: v1.EventSource{Component: "muster-coordinator"},
			}
			if _, err := s.cs.CoreV1().Events(namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
				s.log.Warn("record pod event", "pod", namespace+"/"+pod, "reason", reason, "err", err)
			}
		}
	}()
}

func (s *Syncer) patch(u update, pod string) error {
	status, reason := v1.ConditionFalse, "GroupNotReady"
	if u.ready {
		status, reason = v1.ConditionTrue, "GroupReady"
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []v1.PodCondition{{
		Type: podapi.ConditionGroupReady, Status: status, Reason: reason, Message: u.message,
		LastTransitionTime: metav1.NewTime(time.Now()),
	}}}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Conditions merge by type, so this touches muster's condition only.
	_, err = s.cs.CoreV1().Pods(u.namespace).Patch(ctx, pod, types.StrategicMergePatchType, body, metav1.PatchOptions{FieldManager: "muster-coordinator"}, "status")
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("patch %s/%s status: %w", u.namespace, pod, err)
	}
	return nil
}
