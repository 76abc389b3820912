package procnode_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/procnode"
	"github.com/muster-dev/muster/test/clustertest"
)

// testInit: init containers run in order, each to completion, appending to
// a file in an emptyDir given by its container path; the main container
// reads it, and a failing init container under restartPolicy Never fails
// the pod.
func testInit(t *testing.T, c *cluster.Cluster) {
	ns := clustertest.Namespace(t, c)
	// The file's container path reaches the init containers as an argument
	// and the main container as an env value: both are translated.
	pod := shPod("init", `cat "$ORDER"; pwd; sleep 300`)
	pod.Spec.Volumes = []corev1.Volume{{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	mount := []corev1.VolumeMount{{Name: "work", MountPath: "/work"}}
	for i := range 3 {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{
			Name: fmt.Sprintf("init-%d", i), Image: "registry.invalid/shell", VolumeMounts: mount,
			// The sleep in the first makes a wrong order visible.
			Command: []string{"sh", "-c", fmt.Sprintf(`sleep 0.%d; echo init-%d >> "$1"`, 3-i, i), "sh", "$(DIR)/order"},
			Env:     []corev1.EnvVar{{Name: "DIR", Value: "/work"}},
		})
	}
	pod.Spec.Containers[0].VolumeMounts = mount
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "ORDER", Value: "/work/order"}}
	pod.Spec.Containers[0].WorkingDir = "/work/sub"
	create(t, c, ns, pod)
	got := waitPod(t, c, ns, pod.Name, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	if condition(got, corev1.PodInitialized) != corev1.ConditionTrue {
		t.Errorf("Initialized not True: %s", describe(got))
	}
	for _, s := range got.Status.InitContainerStatuses {
		if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 || s.State.Terminated.Reason != "Completed" {
			t.Errorf("init container %s: %+v", s.Name, s.State)
		}
	}
	logs := podLogs(t, c, ns, pod.Name, "main", 4)
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	if len(lines) != 4 || strings.Join(lines[:3], ",") != "init-0,init-1,init-2" || !strings.HasSuffix(lines[3], "/volumes/work/sub") {
		t.Errorf("main container printed %q, want the three init containers in order, then a working dir in the emptyDir", logs)
	}

	failing := shPod("init-fails", "echo should not run")
	failing.Spec.RestartPolicy = corev1.RestartPolicyNever
	failing.Spec.InitContainers = []corev1.Container{{Name: "fail", Image: "x", Command: []string{"sh", "-c", "exit 3"}}}
	create(t, c, ns, failing)
	got = waitPod(t, c, ns, failing.Name, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if s := got.Status.InitContainerStatuses[0].State.Terminated; s == nil || s.ExitCode != 3 {
		t.Errorf("failed init container: %s", describe(got))
	}
	if s := got.Status.ContainerStatuses[0]; s.State.Waiting == nil {
		t.Errorf("main container ran after a failed init container: %s", describe(got))
	}
}

// testReadiness: an HTTP readiness probe on the pod's IP turns the
// container ready; a readiness gate then holds Ready at False until the
// test sets its condition, and Ready follows the condition both ways.
func testReadiness(t *testing.T, c *cluster.Cluster) {
	ns := clustertest.Namespace(t, c)
	cs := c.Clientset()
	const gate = "muster.dev/group-ready"
	// The server starts after a delay, so the probe fails first.
	pod := shPod("web", `sleep 2; exec python3 -m http.server --bind "$POD_IP" 8080`)
	ctr := &pod.Spec.Containers[0]
	ctr.Env = []corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}}
	ctr.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	ctr.ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}},
		PeriodSeconds: 1, FailureThreshold: 1,
	}
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: gate}}
	create(t, c, ns, pod)

	got := waitPod(t, c, ns, pod.Name, "ContainersReady", func(p *corev1.Pod) bool {
		return condition(p, corev1.ContainersReady) == corev1.ConditionTrue
	})
	if podReady(got) {
		t.Fatalf("Ready before the readiness gate is set: %s", describe(got))
	}
	// The probe did fail at first: the server was not up for 2s.
	if got.Status.ContainerStatuses[0].State.Running == nil {
		t.Fatalf("not running: %s", describe(got))
	}

	setGate := func(status corev1.ConditionStatus) {
		t.Helper()
		patch, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": []map[string]any{{
			"type": gate, "status": status, "lastTransitionTime": metav1.Now().UTC().Format(time.RFC3339),
		}}}})
		if _, err := cs.CoreV1().Pods(ns).Patch(t.Context(), pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
			t.Fatalf("patch %s=%s: %v", gate, status, err)
		}
	}
	setGate(corev1.ConditionTrue)
	got = waitPod(t, c, ns, pod.Name, "Ready after the gate", podReady)
	if condition(got, gate) != corev1.ConditionTrue {
		t.Errorf("gate condition lost: %s", describe(got))
	}
	setGate(corev1.ConditionFalse)
	got = waitPod(t, c, ns, pod.Name, "unready after the gate went False", func(p *corev1.Pod) bool {
		return condition(p, corev1.PodReady) == corev1.ConditionFalse
	})
	if condition(got, gate) != corev1.ConditionFalse || condition(got, corev1.ContainersReady) != corev1.ConditionTrue {
		t.Errorf("after gate False: %s", describe(got))
	}
	setGate(corev1.ConditionTrue)
	waitPod(t, c, ns, pod.Name, "Ready again", podReady)
}

// testRestart: OnFailure restarts a failing container (restart count and
// last state); Never leaves it terminated with its exit code; a liveness
// probe that fails restarts the container.
func testRestart(t *testing.T, c *cluster.Cluster) {
	ns := clustertest.Namespace(t, c)
	onFailure := shPod("on-failure", "echo run; exit 7")
	onFailure.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
	create(t, c, ns, onFailure)
	got := waitPod(t, c, ns, onFailure.Name, "restarted twice", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 2
	})
	st := got.Status.ContainerStatuses[0]
	if last := st.LastTerminationState.Terminated; last == nil || last.ExitCode != 7 || last.Reason != "Error" {
		t.Errorf("last termination: %s", describe(got))
	}
	if got.Status.Phase != corev1.PodRunning {
		t.Errorf("phase %s while restarting, want Running", got.Status.Phase)
	}
	prev, err := c.Clientset().CoreV1().Pods(ns).GetLogs(onFailure.Name, &corev1.PodLogOptions{Previous: true}).DoRaw(t.Context())
	if err != nil || string(prev) != "run\n" {
		t.Errorf("previous logs %q, %v", prev, err)
	}

	never := shPod("never", "exit 5")
	never.Spec.RestartPolicy = corev1.RestartPolicyNever
	create(t, c, ns, never)
	got = waitPod(t, c, ns, never.Name, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	st = got.Status.ContainerStatuses[0]
	if st.State.Terminated == nil || st.State.Terminated.ExitCode != 5 || st.RestartCount != 0 {
		t.Errorf("never: %s", describe(got))
	}

	done := shPod("succeeds", "exit 0")
	done.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
	create(t, c, ns, done)
	waitPod(t, c, ns, done.Name, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })

	live := shPod("liveness", "touch alive; sleep 1; rm alive; sleep 300")
	live.Spec.Containers[0].LivenessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-e", "alive"}}},
		PeriodSeconds: 1, FailureThreshold: 2,
	}
	live.Spec.TerminationGracePeriodSeconds = ptr(int64(1))
	create(t, c, ns, live)
	got = waitPod(t, c, ns, live.Name, "restarted by its liveness probe", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
	})
	if last := got.Status.ContainerStatuses[0].LastTerminationState.Terminated; last == nil || !strings.Contains(last.Message, "liveness") {
		t.Errorf("liveness restart: %s", describe(got))
	}
}

// testAgent: a container of the agent image runs the agent binary, with
// argv[0] mapped and the rest kept.
func testAgent(t *testing.T, c *cluster.Cluster) {
	ns := clustertest.Namespace(t, c)
	pod := shPod("agent", "")
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	pod.Spec.Containers[0].Image = "muster/agent:dev"
	pod.Spec.Containers[0].Command = []string{"/muster/agent", "--help"}
	create(t, c, ns, pod)
	got := waitPod(t, c, ns, pod.Name, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	if st := got.Status.ContainerStatuses[0].State.Terminated; st == nil || st.ExitCode != 0 {
		t.Errorf("agent: %s", describe(got))
	}
	if logs := podLogs(t, c, ns, pod.Name, "main", 1); !strings.Contains(logs, "agent run [flags]") {
		t.Errorf("agent --help printed %q", logs)
	}
}

// testDelete: deleting a pod ends its whole process tree (SIGTERM; a
// process that ignores it gets SIGKILL after the grace period) and the Pod
// object goes.
func testDelete(t *testing.T, c *cluster.Cluster, nodes *procnode.Nodes) {
	ns := clustertest.Namespace(t, c)
	cs := c.Clientset()
	pod := shPod("tree", `trap "" TERM; (trap "" TERM; sleep 300) & sh -c 'sleep 300' & sleep 300; wait`)
	pod.Spec.TerminationGracePeriodSeconds = ptr(int64(2))
	create(t, c, ns, pod)
	waitPod(t, c, ns, pod.Name, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	dir := nodes.PodDir(ns, pod.Name)
	var pids []int
	waitFor(t, "the pod's processes", 10*time.Second, func(context.Context) (bool, string) {
		pids = podProcesses(t, dir)
		return len(pids) >= 5, fmt.Sprint(pids)
	})
	began := time.Now()
	if err := cs.CoreV1().Pods(ns).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod object gone", time.Minute, func(ctx context.Context) (bool, string) {
		_, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	took := time.Since(began)
	for _, pid := range pids {
		if running(pid) {
			t.Errorf("pid %d of the deleted pod still running once the pod object is gone", pid)
		}
	}
	if left := podProcesses(t, dir); len(left) > 0 {
		t.Errorf("processes %v still in the pod's dir", left)
	}
	if took < 2*time.Second {
		t.Errorf("pod gone after %s: SIGTERM-ignoring processes should have had the 2s grace period", took)
	}
	t.Logf("pod with TERM-ignoring processes gone %s after delete (grace 2s)", took.Round(100*time.Millisecond))
}

// podLogs waits until the container's log has at least n lines.
func podLogs(t *testing.T, c *cluster.Cluster, ns, pod, container string, n int) string {
	t.Helper()
	var logs string
	waitFor(t, "logs of "+pod, 30*time.Second, func(ctx context.Context) (bool, string) {
		b, err := c.Clientset().CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
		if err != nil {
			return false, err.Error()
		}
		logs = string(b)
		return strings.Count(logs, "\n") >= n, logs
	})
	return logs
}

// testVolumes: configMap, secret and downwardAPI volumes hold their files,
// a secret reaches env through secretKeyRef, and a subPath mount maps to a
// directory inside its volume.
func testVolumes(t *testing.T, c *cluster.Cluster) {
	ns := clustertest.Namespace(t, c)
	cs := c.Clientset()
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "conf"}, Data: map[string]string{"a.txt": "from-configmap", "b.txt": "unused"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "creds"}, Data: map[string][]byte{"token": []byte("s3cret")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := shPod("volumes", `cat "$CONF/renamed.txt"; echo; cat "$SECRET/token"; echo; cat "$INFO/labels"; echo; echo "token=$TOKEN"; touch "$SUB/made"; ls "$DATA/sub"; sleep 300`)
	pod.Labels = map[string]string{"tier": "test"}
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "conf", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "conf"},
			Items:                []corev1.KeyToPath{{Key: "a.txt", Path: "renamed.txt"}},
		}}},
		{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds"}}},
		{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
			Items: []corev1.DownwardAPIVolumeFile{{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}},
		}}},
		{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	ctr := &pod.Spec.Containers[0]
	ctr.VolumeMounts = []corev1.VolumeMount{
		{Name: "conf", MountPath: "/etc/conf"},
		{Name: "secret", MountPath: "/etc/secret"},
		{Name: "info", MountPath: "/etc/info/"},
		{Name: "data", MountPath: "/data"},
		{Name: "data", MountPath: "/sub", SubPath: "sub"},
	}
	ctr.Env = []corev1.EnvVar{
		{Name: "CONF", Value: "/etc/conf"}, {Name: "SECRET", Value: "/etc/secret"}, {Name: "INFO", Value: "/etc/info"},
		{Name: "DATA", Value: "/data"}, {Name: "SUB", Value: "/sub"},
		{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "token"}}},
	}
	create(t, c, ns, pod)
	waitPod(t, c, ns, pod.Name, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	want := "from-configmap\ns3cret\ntier=\"test\"\ntoken=s3cret\nmade\n"
	if logs := podLogs(t, c, ns, pod.Name, "main", 5); logs != want {
		t.Errorf("volumes pod printed %q, want %q", logs, want)
	}
}
