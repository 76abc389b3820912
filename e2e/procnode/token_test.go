package procnode_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/procnode"
	"github.com/muster-dev/muster/test/clustertest"
)

// testToken: a projected volume as muster's webhook adds it (a
// serviceAccountToken of audience muster, here beside configMap and
// downwardAPI sources) holds a token the container reads through the path
// in its env; the apiserver's TokenReview (audience muster) accepts it and
// names the pod in user.extra; it is refused for another audience and once
// the pod is gone. The service-account admission plugin's own projected
// volume (kube-api-access-*) is filled too.
func testToken(t *testing.T, c *cluster.Cluster, nodes *procnode.Nodes) {
	ns := clustertest.Namespace(t, c)
	cs := c.Clientset()
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "conf"}, Data: map[string]string{"group": "llama"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := shPod("token", `cat "$MUSTER_TOKEN_FILE"; echo; cat "$DIR/group"; echo; cat "$DIR/name"; echo; sleep 300`)
	pod.Spec.Volumes = []corev1.Volume{{Name: "muster-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "muster", ExpirationSeconds: ptr(int64(600)), Path: "token"}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "conf"}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}},
		},
	}}}}
	ctr := &pod.Spec.Containers[0]
	ctr.VolumeMounts = []corev1.VolumeMount{{Name: "muster-token", MountPath: "/var/run/secrets/muster.dev", ReadOnly: true}}
	ctr.Env = []corev1.EnvVar{{Name: "MUSTER_TOKEN_FILE", Value: "/var/run/secrets/muster.dev/token"}, {Name: "DIR", Value: "/var/run/secrets/muster.dev"}}
	create(t, c, ns, pod)
	got := waitPod(t, c, ns, pod.Name, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })

	lines := strings.Split(podLogs(t, c, ns, pod.Name, "main", 3), "\n")
	token := lines[0]
	if len(lines) < 3 || lines[1] != "llama" || lines[2] != pod.Name {
		t.Errorf("container printed %q, want the token, the configMap's group and the pod name", lines)
	}
	dir := nodes.PodDir(ns, pod.Name)
	file := filepath.Join(dir, "volumes", "muster-token", "token")
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file %s: %v, %v; want mode 0600", file, fi, err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != token {
		t.Errorf("token file holds %q (%v), the container printed %q", b, err, token)
	}
	// The admission plugin's volume: token, CA and namespace, as a pod's
	// client-go in-cluster config expects them.
	if api, _ := filepath.Glob(filepath.Join(dir, "volumes", "kube-api-access-*")); len(api) != 1 {
		t.Errorf("kube-api-access volumes %v, want one", api)
	} else {
		for _, f := range []string{"token", "ca.crt", "namespace"} {
			if fi, err := os.Stat(filepath.Join(api[0], f)); err != nil || fi.Size() == 0 {
				t.Errorf("%s/%s: %v, %v", api[0], f, fi, err)
			}
		}
	}

	review := func(ctx context.Context, audience string) (*authenticationv1.TokenReviewStatus, error) {
		r, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		return &r.Status, nil
	}
	st, err := review(t.Context(), "muster")
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	if !st.Authenticated || !slices.Contains(st.Audiences, "muster") {
		t.Fatalf("TokenReview with audience muster: %+v", st)
	}
	if want := "system:serviceaccount:" + ns + ":default"; st.User.Username != want {
		t.Errorf("user %q, want %q", st.User.Username, want)
	}
	extra := st.User.Extra
	if n := extra["authentication.kubernetes.io/pod-name"]; len(n) != 1 || n[0] != pod.Name {
		t.Errorf("extra pod-name %v, want %s (extra: %v)", n, pod.Name, extra)
	}
	if u := extra["authentication.kubernetes.io/pod-uid"]; len(u) != 1 || u[0] != string(got.UID) {
		t.Errorf("extra pod-uid %v, want %s (extra: %v)", u, got.UID, extra)
	}
	t.Logf("TokenReview user %s, extra %v", st.User.Username, extra)
	if st, err := review(t.Context(), "other"); err != nil || st.Authenticated {
		t.Errorf("TokenReview with audience other: %+v, %v; want refused", st, err)
	}

	// The token is bound to the pod: once the pod is gone (its refresher
	// stopped, its dir removed), it is refused.
	if err := cs.CoreV1().Pods(ns).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod object gone", time.Minute, func(ctx context.Context) (bool, string) {
		_, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), "get: " + errString(err)
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("pod dir %s after the pod is gone: %v", dir, err)
	}
	// Not at once: the apiserver caches a successful authentication for 10s.
	waitFor(t, "token refused once the pod is gone", 30*time.Second, func(ctx context.Context) (bool, string) {
		st, err := review(ctx, "muster")
		if err != nil {
			return false, err.Error()
		}
		return !st.Authenticated, st.Error
	})
}

func errString(err error) string {
	if err == nil {
		return "found"
	}
	return err.Error()
}
