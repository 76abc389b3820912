package coordinator

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/muster-dev/muster/podapi"
)

// publish writes ConfigMap muster-coordinator (the address agents dial, the
// CA that verifies it) in --publish-namespace, creating or updating it; a
// failure to write it does not stop the coordinator.
func TestPublish(t *testing.T) {
	const ca = "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n"
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	stale := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "muster", Name: PublishConfigMap, Labels: map[string]string{"stale": "yes"}},
		Data: map[string]string{podapi.CoordinatorAddressKey: "old:1", podapi.CoordinatorCAKey: "old", "other": "x"}}
	wantLabels := map[string]string{"app.kubernetes.io/name": "muster", "app.kubernetes.io/component": "coordinator"}
	tests := []struct {
		name      string
		namespace string
		advertise string
		objs      []runtime.Object
		// react, when set, is prepended to the fake's reactors.
		verb  string
		react func(n int) error
		// want is the ConfigMap's data; nil: no ConfigMap.
		want map[string]string
	}{
		{
			name: "created with the first advertised address", namespace: "muster", advertise: "muster-coordinator.muster.svc:7070,10.0.0.1:7070",
			want: map[string]string{podapi.CoordinatorAddressKey: "muster-coordinator.muster.svc:7070", podapi.CoordinatorCAKey: ca},
		},
		{
			name: "without --advertise the listening address", namespace: "muster",
			want: map[string]string{podapi.CoordinatorAddressKey: lis.Addr().String(), podapi.CoordinatorCAKey: ca},
		},
		{
			name: "an old one is replaced", namespace: "muster", advertise: "c.muster.svc:7070", objs: []runtime.Object{stale},
			want: map[string]string{podapi.CoordinatorAddressKey: "c.muster.svc:7070", podapi.CoordinatorCAKey: ca},
		},
		{
			name: "a conflicting update is retried", namespace: "muster", advertise: "c.muster.svc:7070", objs: []runtime.Object{stale},
			verb: "update",
			react: func(n int) error {
				if n == 1 {
					return apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, PublishConfigMap, nil)
				}
				return nil
			},
			want: map[string]string{podapi.CoordinatorAddressKey: "c.muster.svc:7070", podapi.CoordinatorCAKey: ca},
		},
		{
			name: "created by another replica meanwhile", namespace: "muster", advertise: "c.muster.svc:7070",
			verb: "create",
			react: func(n int) error {
				if n == 1 {
					return apierrors.NewAlreadyExists(schema.GroupResource{Resource: "configmaps"}, PublishConfigMap)
				}
				return nil
			},
			want: map[string]string{podapi.CoordinatorAddressKey: "c.muster.svc:7070", podapi.CoordinatorCAKey: ca},
		},
		{
			name: "not allowed: logged, not fatal", namespace: "muster", advertise: "c.muster.svc:7070",
			verb: "create",
			react: func(int) error {
				return apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, PublishConfigMap, nil)
			},
		},
		{name: "no --publish-namespace", advertise: "c.muster.svc:7070"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(tc.objs...)
			var calls atomic.Int32
			if tc.react != nil {
				cs.PrependReactor(tc.verb, "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
					if err := tc.react(int(calls.Add(1))); err != nil {
						return true, nil, err
					}
					return false, nil, nil // the fake's own tracker
				})
			}
			c := &Coordinator{cfg: Config{PublishNamespace: tc.namespace, Advertise: tc.advertise}, kube: cs, agentCA: []byte(ca), lis: lis}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.publish(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
				t.Fatalf("publish = %v, want nil (never fatal)", err)
			}
			list, err := cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if len(list.Items) != len(tc.objs) {
					t.Fatalf("ConfigMaps %v, want none written", list.Items)
				}
				return
			}
			if len(list.Items) != 1 {
				t.Fatalf("%d ConfigMaps, want 1", len(list.Items))
			}
			cm := list.Items[0]
			if cm.Namespace != tc.namespace || cm.Name != "muster-coordinator" {
				t.Errorf("ConfigMap %s/%s, want %s/muster-coordinator", cm.Namespace, cm.Name, tc.namespace)
			}
			if !maps.Equal(cm.Data, tc.want) {
				t.Errorf("data %v, want %v", cm.Data, tc.want)
			}
			if !maps.Equal(cm.Labels, wantLabels) {
				t.Errorf("labels %v, want %v", cm.Labels, wantLabels)
			}
			if tc.react != nil && calls.Load() < 2 {
				t.Errorf("%s tried %d times, want a retry", tc.verb, calls.Load())
			}
		})
	}
}

// Without Kubernetes there is nowhere to publish.
func TestPublishWithoutKubernetes(t *testing.T) {
	c := &Coordinator{cfg: Config{PublishNamespace: "muster", Advertise: "c:7070"}}
	if err := c.publish(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("publish = %v", err)
	}
}

// The published ConfigMap is kept true: made again when deleted, set back
// when edited, and not written at all while it is right.
func TestPublishKeepsItTrue(t *testing.T) {
	old := republish
	republish = 20 * time.Millisecond
	defer func() { republish = old }()
	cs := fake.NewClientset()
	var writes atomic.Int32
	for _, verb := range []string{"create", "update"} {
		cs.PrependReactor(verb, "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
			writes.Add(1)
			return false, nil, nil
		})
	}
	c := &Coordinator{cfg: Config{PublishNamespace: "muster", Advertise: "c.muster.svc:7070"}, kube: cs, agentCA: []byte("ca")}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.publish(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	cms := cs.CoreV1().ConfigMaps("muster")
	waitFor := func(what string, ok func(*corev1.ConfigMap) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			cm, err := cms.Get(ctx, PublishConfigMap, metav1.GetOptions{})
			if err == nil && ok(cm) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s (last %v, %v)", what, cm, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	right := func(cm *corev1.ConfigMap) bool { return cm.Data[podapi.CoordinatorAddressKey] == "c.muster.svc:7070" }
	waitFor("published", right)
	// Right for many periods: no write.
	before := writes.Load()
	time.Sleep(10 * republish)
	if n := writes.Load() - before; n != 0 {
		t.Errorf("%d writes of a ConfigMap that was right, want 0", n)
	}
	if err := cms.Delete(ctx, PublishConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("made again after its deletion", right)
	cm, _ := cms.Get(ctx, PublishConfigMap, metav1.GetOptions{})
	cm.Data[podapi.CoordinatorAddressKey] = "evil:1"
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("set back after an edit", right)
}
