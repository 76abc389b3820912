package podready

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/muster-dev/muster/podapi"
)

func TestSetPatchesOnlyMustersConditionAndSkipsMissingPods(t *testing.T) {
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "g-0"},
		Status:     v1.PodStatus{Conditions: []v1.PodCondition{{Type: v1.PodScheduled, Status: v1.ConditionTrue}}},
	}
	cs := fake.NewSimpleClientset(pod)
	s := New(cs, slog.New(slog.NewTextHandler(io.Discard, nil)))
	check := func(want v1.ConditionStatus) {
		t.Helper()
		err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
			got, err := cs.CoreV1().Pods("ns").Get(ctx, "g-0", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			var mine, scheduled *v1.PodCondition
			for i, c := range got.Status.Conditions {
				switch c.Type {
				case podapi.ConditionGroupReady:
					mine = &got.Status.Conditions[i]
				case v1.PodScheduled:
					scheduled = &got.Status.Conditions[i]
				}
			}
			return mine != nil && mine.Status == want && scheduled != nil, nil
		})
		if err != nil {
			t.Fatalf("condition %s never became %s with PodScheduled kept: %v", podapi.ConditionGroupReady, want, err)
		}
	}
	s.Set("ns", "g", []string{"g-0", "gone"}, true, "4/4 ranks ready")
	check(v1.ConditionTrue)
	s.Set("ns", "g", []string{"g-0"}, false, "restarting to generation 1")
	check(v1.ConditionFalse)
}

func TestEventLandsOnExistingPods(t *testing.T) {
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "g-0", UID: "u0"}}
	cs := fake.NewSimpleClientset(pod)
	s := New(cs, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.Event("ns", []string{"g-0", "gone"}, "GroupFailed", "group failed: member g-1 exited with code 2")
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := cs.CoreV1().Events("ns").List(ctx, metav1.ListOptions{})
		return err == nil && len(evs.Items) == 1 && evs.Items[0].InvolvedObject.Name == "g-0" && evs.Items[0].Reason == "GroupFailed", nil
	})
	if err != nil {
		t.Fatalf("no GroupFailed event on g-0: %v", err)
	}
}
