package kubectlmuster

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

func ms(d time.Duration) int64 { return t0.Add(d).UnixMilli() }

func sample() (*musterv1.Group, []v1.Pod) {
	g := &musterv1.Group{
		Ref: &musterv1.GroupRef{Namespace: "demo", Name: "tp"}, Size: 2, Runtime: "env", Generation: 1, Phase: musterv1.Phase_PHASE_RUNNING,
		Ready: true, Restarts: 1, LeaderAddress: "10.0.0.2", CreatedMs: ms(0), FirstError: "member tp-1 (rank 1) exited with code 3",
		Current: &musterv1.GenerationRecord{Generation: 1, StartedMs: ms(10 * time.Second), JoinedMs: ms(11 * time.Second), ReleasedMs: ms(11*time.Second + 20*time.Millisecond), ReadyMs: ms(15 * time.Second)},
		History: []*musterv1.GenerationRecord{{Generation: 0, StartedMs: ms(0), JoinedMs: ms(time.Second), ReleasedMs: ms(time.Second), ReadyMs: ms(5 * time.Second),
			EndedMs: ms(10 * time.Second), EndReason: "member tp-1 (rank 1) exited with code 3", EndMember: "tp-1"}},
		Members: []*musterv1.Member{
			{Id: "tp-1", Rank: 1, Live: true, Generation: 1, Address: "10.0.0.3", State: musterv1.RuntimeState_RUNTIME_STATE_READY, TopologyDomain: "rack-b"},
			{Id: "tp-0", Rank: 0, Live: true, Generation: 1, Address: "10.0.0.2", State: musterv1.RuntimeState_RUNTIME_STATE_READY, TopologyDomain: "rack-a"},
		},
	}
	pod := func(name, node string, created, scheduled time.Duration) v1.Pod {
		return v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", CreationTimestamp: metav1.NewTime(t0.Add(created))},
			Spec:   v1.PodSpec{NodeName: node},
			Status: v1.PodStatus{Conditions: []v1.PodCondition{{Type: v1.PodScheduled, Status: v1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0.Add(scheduled))}}}}
	}
	return g, []v1.Pod{pod("tp-0", "node-a", -2*time.Second, -time.Second), pod("tp-1", "node-b", -2*time.Second, -time.Second)}
}

func TestGroupOfJoinsCoordinatorAndPods(t *testing.T) {
	raw, pods := sample()
	g := groupOf(raw, pods)
	if g.Leader != "tp-0" || g.ReadyRanks != 2 || g.Members[0].ID != "tp-0" || g.Members[0].Node != "node-a" || g.Members[1].Node != "node-b" {
		t.Fatalf("groupOf: leader %q, ready %d, members %+v", g.Leader, g.ReadyRanks, g.Members)
	}
	// Generation 1 restarted in place: the pods were bound before it, so
	// no bound time belongs to it.
	if g.Current.Bound != nil || g.Current.PodsCreated != nil {
		t.Errorf("generation 1: bound %v, pods created %v; want neither", g.Current.Bound, g.Current.PodsCreated)
	}
	raw.Generation, raw.Current.Generation = 0, 0
	if g := groupOf(raw, pods); g.Current.Bound == nil || !g.Current.Bound.Equal(t0.Add(-time.Second)) || g.Current.PodsCreated == nil {
		t.Errorf("generation 0: bound %v, pods created %v", g.Current.Bound, g.Current.PodsCreated)
	}
	// A member whose pod is not scheduled: no bound time.
	pods[1].Status.Conditions = nil
	if g := groupOf(raw, pods); g.Current.Bound != nil {
		t.Errorf("one pod unscheduled: bound %v, want none", g.Current.Bound)
	}
}

func TestDescribe(t *testing.T) {
	raw, pods := sample()
	var b bytes.Buffer
	if err := describe(&b, groupOf(raw, pods), t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Phase:         Running, 2/2 ranks ready", "Restarts:      1", "Leader:        tp-0 (10.0.0.2)",
		"Last restart:  member tp-1 (rank 1) exited with code 3",
		"  0     tp-0    node-a  rack-a  Ready  10.0.0.2  1",
		"restarted   ", "+1.02s", "+3.98s", // released 1.02 s after the restart; ready 3.98 s after release
		"  0           10:00:00  +1s     +1s       +5s    +10s   member tp-1 (rank 1) exited with code 3",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("describe lacks %q:\n%s", want, out)
		}
	}
}

func TestDiscoverSaysWhatToDo(t *testing.T) {
	ctx := context.Background()
	_, err := discover(ctx, fake.NewClientset(), podapi.CoordinatorNamespace)
	if err == nil || !strings.Contains(err.Error(), "not found") || !strings.Contains(err.Error(), "--coordinator") {
		t.Errorf("no ConfigMap: %v", err)
	}
	cm := &v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: podapi.CoordinatorConfigMap, Namespace: "m"}, Data: map[string]string{podapi.CoordinatorCAKey: "x"}}
	if _, err := discover(ctx, fake.NewClientset(cm), "m"); err == nil || !strings.Contains(err.Error(), `no "address"`) {
		t.Errorf("ConfigMap without address: %v", err)
	}
	cm.Data[podapi.CoordinatorAddressKey] = "10.0.0.1:7070"
	if p, err := discover(ctx, fake.NewClientset(cm), "m"); err != nil || p.address != "10.0.0.1:7070" || string(p.ca) != "x" {
		t.Errorf("discover = %+v, %v", p, err)
	}
}

func TestTokenSourceSendsTheKubeconfigToken(t *testing.T) {
	if ts, err := newTokenSource(&rest.Config{}); err != nil || ts != nil {
		t.Fatalf("no token in the kubeconfig: %v, %v; want none", ts, err)
	}
	ts, err := newTokenSource(&rest.Config{BearerToken: "abc"})
	if err != nil {
		t.Fatal(err)
	}
	md, err := ts.GetRequestMetadata(context.Background())
	if err != nil || md["authorization"] != "Bearer abc" {
		t.Errorf("metadata %v, %v; want the bearer token", md, err)
	}
	if !ts.RequireTransportSecurity() {
		t.Error("a token must not cross a plaintext connection")
	}
}

func TestArgumentsAndOutputChecked(t *testing.T) {
	for _, args := range [][]string{{"describe", "group"}, {"get", "groups", "-o", "table"}, {"restart", "group", "a", "b"}} {
		var out, errOut bytes.Buffer
		cmd := NewCommand(streams(&out, &errOut))
		cmd.SetArgs(args)
		if err := cmd.Execute(); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

func streams(out, errOut *bytes.Buffer) genericiooptions.IOStreams {
	return genericiooptions.IOStreams{In: strings.NewReader(""), Out: out, ErrOut: errOut}
}
