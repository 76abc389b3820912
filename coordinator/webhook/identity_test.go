package webhook

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/muster-dev/muster/podapi"
)

// agentContainer is the container the webhook wraps: the one
// muster.dev/container names, else the first; -1 when there is none.
func agentContainer(pod *corev1.Pod) int {
	if name, ok := pod.Annotations[podapi.AnnotationContainer]; ok {
		return slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == name })
	}
	if len(pod.Spec.Containers) == 0 {
		return -1
	}
	return 0
}

// wantIdentityEnv is, written out apart from inject, what the agent's
// container of pod must say about who it is, whatever the pod said.
func wantIdentityEnv(cfg Config, pod *corev1.Pod) []corev1.EnvVar {
	ref := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}}
	}
	env := []corev1.EnvVar{
		{Name: "MUSTER_TOKEN_FILE", Value: "/var/run/secrets/muster.dev/token"},
		ref("MUSTER_NAMESPACE", "metadata.namespace"),
		ref("MUSTER_MEMBER_ID", "metadata.name"),
		ref("MUSTER_ADDRESS", "status.podIP"),
		ref("MUSTER_NODE_NAME", "spec.nodeName"),
	}
	if len(cfg.CoordinatorCA) > 0 {
		env = append(env, corev1.EnvVar{Name: "MUSTER_COORDINATOR_CA", Value: string(cfg.CoordinatorCA)})
	}
	if strings.TrimSpace(pod.Annotations[podapi.AnnotationRankOrder]) == podapi.RankOrderTopology {
		env = append(env, ref("MUSTER_TOPOLOGY_DOMAIN", "metadata.annotations['muster.dev/topology-domain']"))
	}
	return env
}

// checkIdentity checks that the agent's container of an injected pod has
// the identity env of wantIdentityEnv, each once, and the token mounted
// from the webhook's projected volume.
func checkIdentity(t *testing.T, cfg Config, pod *corev1.Pod) {
	t.Helper()
	i := agentContainer(pod)
	if i < 0 {
		t.Fatalf("injected pod without the agent's container: %+v", pod.Spec.Containers)
	}
	c := pod.Spec.Containers[i]
	for _, want := range wantIdentityEnv(cfg, pod) {
		var got []corev1.EnvVar
		for _, e := range c.Env {
			if e.Name == want.Name {
				got = append(got, e)
			}
		}
		if len(got) != 1 || !equality.Semantic.DeepEqual(got[0], want) {
			t.Errorf("container %s: env %s is %s, want it once: %s", c.Name, want.Name, mustJSON(t, got), mustJSON(t, want))
		}
	}

	seconds := int64(cfg.TokenExpiration / time.Second)
	wantSource := corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
		Audience: cfg.TokenAudience, ExpirationSeconds: &seconds, Path: "token",
	}}
	var vols []corev1.Volume
	for _, v := range pod.Spec.Volumes {
		if v.Name == "muster-token" {
			vols = append(vols, v)
		}
	}
	if len(vols) != 1 || vols[0].Projected == nil || len(vols[0].Projected.Sources) != 1 || !equality.Semantic.DeepEqual(vols[0].Projected.Sources[0], wantSource) {
		t.Errorf("volumes named muster-token: %s; want one, projected, with the one source %s", mustJSON(t, vols), mustJSON(t, wantSource))
	}
	var mounts []corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if p := filepath.Clean(m.MountPath); p == "/var/run/secrets/muster.dev" || strings.HasPrefix(p, "/var/run/secrets/muster.dev/") {
			mounts = append(mounts, m)
		}
	}
	if len(mounts) != 1 || mounts[0].Name != "muster-token" || mounts[0].MountPath != "/var/run/secrets/muster.dev" {
		t.Errorf("container %s: mounts at or under /var/run/secrets/muster.dev: %+v; want muster-token there alone", c.Name, mounts)
	}
}

// TestIdentityEnv: a pod cannot tell its agent who it is, nor which token
// or CA to use; the downward API and the webhook's configuration do.
func TestIdentityEnv(t *testing.T) {
	lit := func(name, value string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: value} }
	spoofed := []corev1.EnvVar{
		lit("MUSTER_NAMESPACE", "kube-system"),
		lit("MUSTER_MEMBER_ID", "victim"),
		lit("MUSTER_ADDRESS", "10.0.0.66"),
		lit("MUSTER_NODE_NAME", "other-node"),
		lit("MUSTER_TOKEN_FILE", "/tmp/stolen-token"),
		lit("MUSTER_COORDINATOR_CA", "-----BEGIN CERTIFICATE-----\nevil\n-----END CERTIFICATE-----\n"),
	}
	envNames := func(c corev1.Container) []string {
		var names []string
		for _, e := range c.Env {
			names = append(names, e.Name)
		}
		return names
	}
	tests := []struct {
		name   string
		cfg    func(*Config) // nil: testConfig()
		change func(*corev1.Pod)
		check  func(*testing.T, *corev1.Pod) // beyond checkIdentity
	}{
		{
			name:   "literal values",
			change: func(p *corev1.Pod) { p.Spec.Containers[0].Env = slices.Clone(spoofed) },
			check: func(t *testing.T, p *corev1.Pod) {
				// In place, in the pod's order; the rest appended.
				if got := envNames(p.Spec.Containers[0])[:len(spoofed)]; !slices.Equal(got, []string{
					"MUSTER_NAMESPACE", "MUSTER_MEMBER_ID", "MUSTER_ADDRESS", "MUSTER_NODE_NAME", "MUSTER_TOKEN_FILE", "MUSTER_COORDINATOR_CA",
				}) {
					t.Errorf("env starts %q: want the pod's names in place", got)
				}
			},
		},
		{
			name: "values from elsewhere",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = []corev1.EnvVar{
					{Name: "MUSTER_MEMBER_ID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['victim']"}}},
					{Name: "MUSTER_ADDRESS", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "ip"}}},
				}
			},
		},
		{
			name: "twice, and referred to",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = []corev1.EnvVar{
					lit("MUSTER_MEMBER_ID", "victim"),
					lit("WHO", "$(MUSTER_MEMBER_ID)"),
					lit("MUSTER_MEMBER_ID", "victim-2"),
					lit("MUSTER_COORDINATOR", "coordinator.mine:7070"),
				}
			},
			check: func(t *testing.T, p *corev1.Pod) {
				env := p.Spec.Containers[0].Env
				// The first in place, so WHO still expands to the pod's name;
				// the second gone, or the kubelet would take it.
				if got := envNames(p.Spec.Containers[0])[:3]; !slices.Equal(got, []string{"MUSTER_MEMBER_ID", "WHO", "MUSTER_COORDINATOR"}) {
					t.Errorf("env starts %q", got)
				}
				if env[2].Value != "coordinator.mine:7070" {
					t.Errorf("MUSTER_COORDINATOR = %q: the pod's own coordinator address is kept", env[2].Value)
				}
			},
		},
		{
			name: "envFrom with a MUSTER_ prefix",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{Prefix: "MUSTER_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "identity"}}}}
			},
			check: func(t *testing.T, p *corev1.Pod) {
				// env overrides envFrom in the kubelet: the env entries are enough.
				if len(p.Spec.Containers[0].EnvFrom) != 1 {
					t.Errorf("envFrom %+v: want the pod's kept", p.Spec.Containers[0].EnvFrom)
				}
			},
		},
		{
			name: "topology domain",
			change: func(p *corev1.Pod) {
				p.Annotations[podapi.AnnotationRankOrder] = podapi.RankOrderTopology
				p.Annotations[podapi.AnnotationRankTopologyKey] = "topology.muster.dev/rack"
				p.Spec.Containers[0].Env = []corev1.EnvVar{lit("MUSTER_TOPOLOGY_DOMAIN", "rack-of-the-leader")}
			},
		},
		{
			name: "a topology domain the webhook does not set is the pod's",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = []corev1.EnvVar{lit("MUSTER_TOPOLOGY_DOMAIN", "r1")}
			},
			check: func(t *testing.T, p *corev1.Pod) {
				if e := p.Spec.Containers[0].Env[0]; e != lit("MUSTER_TOPOLOGY_DOMAIN", "r1") {
					t.Errorf("env[0] = %+v, want the pod's MUSTER_TOPOLOGY_DOMAIN", e)
				}
			},
		},
		{
			name:   "no CA configured: the pod's is left",
			cfg:    func(c *Config) { c.CoordinatorCA = nil },
			change: func(p *corev1.Pod) { p.Spec.Containers[0].Env = []corev1.EnvVar{lit("MUSTER_COORDINATOR_CA", "mine")} },
			check: func(t *testing.T, p *corev1.Pod) {
				if e := p.Spec.Containers[0].Env[0]; e != lit("MUSTER_COORDINATOR_CA", "mine") {
					t.Errorf("env[0] = %+v, want the pod's MUSTER_COORDINATOR_CA", e)
				}
			},
		},
		{
			name: "in the chosen container only",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = slices.Clone(spoofed)
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "model", Image: "i", Command: []string{"serve"}, Env: slices.Clone(spoofed)})
				p.Annotations[podapi.AnnotationContainer] = "model"
			},
			check: func(t *testing.T, p *corev1.Pod) {
				// The sidecar runs no agent: what it says is its business.
				if got := p.Spec.Containers[0]; !slices.Equal(got.Env, spoofed) || len(got.VolumeMounts) > 0 {
					t.Errorf("sidecar env %+v, mounts %+v: want the pod's as they were", got.Env, got.VolumeMounts)
				}
			},
		},
		{
			name: "automountServiceAccountToken false",
			change: func(p *corev1.Pod) {
				p.Spec.AutomountServiceAccountToken = new(false)
				p.Spec.Containers[0].Env = slices.Clone(spoofed)
			},
			check: func(t *testing.T, p *corev1.Pod) {
				if a := p.Spec.AutomountServiceAccountToken; a == nil || *a {
					t.Errorf("automountServiceAccountToken %v: want the pod's false kept", a)
				}
			},
		},
		{
			name: "audience and lifetime from the configuration",
			cfg: func(c *Config) {
				c.TokenAudience = "https://muster.example.com"
				c.TokenExpiration = time.Hour
			},
			change: func(p *corev1.Pod) {},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			h := testHandler(cfg)
			pod := validPod()
			tc.change(pod)
			raw := mustJSON(t, pod)
			resp := h.admit(t.Context(), createRequest(raw))
			if !resp.Allowed {
				t.Fatalf("denied: %s", resp.Result.Message)
			}
			patched := applyPatch(t, raw, resp)
			var got corev1.Pod
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			checkIdentity(t, cfg, &got)
			if tc.check != nil {
				tc.check(t, &got)
			}
			if again := h.admit(t.Context(), createRequest(patched)); !again.Allowed || len(again.Patch) > 0 {
				t.Errorf("second pass: allowed %v, patch %s; want allowed and no patch", again.Allowed, again.Patch)
			}
		})
	}
}

// TestTokenVolumeStored: the token volume as the apiserver stores it, with
// defaults filled in, is the webhook's own, not a pod's volume of that name.
func TestTokenVolumeStored(t *testing.T) {
	cfg := testConfig()
	h := testHandler(cfg)
	raw := mustJSON(t, validPod())
	resp := h.admit(t.Context(), createRequest(raw))
	if !resp.Allowed {
		t.Fatalf("denied: %s", resp.Result.Message)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(applyPatch(t, raw, resp), &pod); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == TokenVolumeName })
	if i < 0 {
		t.Fatalf("no volume %s in %+v", TokenVolumeName, pod.Spec.Volumes)
	}
	pod.Spec.Volumes[i].Projected.DefaultMode = new(int32(0o644)) // SetDefaults_ProjectedVolumeSource
	if again := h.admit(t.Context(), createRequest(mustJSON(t, &pod))); !again.Allowed || len(again.Patch) > 0 {
		t.Errorf("stored pod: allowed %v (%v), patch %s; want allowed and no patch", again.Allowed, again.Result, again.Patch)
	}
}

// FuzzAdmit feeds the webhook pods: it must never panic, and either deny
// with a reason or return a patch that applies (with the apiserver's
// patch library) and gives the agent the identity of wantIdentityEnv; the
// patched pod must then need no further patch. The seeds are the golden
// inputs and outputs; go test runs them, and
//
//	go test ./coordinator/webhook -run '^$' -fuzz FuzzAdmit -fuzztime 10s
//
// searches further.
func FuzzAdmit(f *testing.F) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(inputs) == 0 {
		f.Fatalf("testdata: %d pods (%v)", len(inputs), err)
	}
	for _, in := range inputs {
		f.Add(podJSON(f, in))
		golden, err := os.ReadFile(strings.TrimSuffix(in, ".yaml") + ".golden.json")
		if err != nil {
			f.Fatal(err)
		}
		var out struct{ Pod json.RawMessage }
		if err := json.Unmarshal(golden, &out); err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(out.Pod))
	}
	f.Add(mustJSON(f, validPod()))
	f.Add([]byte(`{"metadata":{"annotations":{"muster.dev/inject":"true"}}}`))
	f.Add([]byte(`{"metadata":{"annotations":{"muster.dev/inject":"true"}},"spec":{"containers":null}}`))
	f.Add([]byte(`not json`))

	cfg := testConfig()
	h := testHandler(cfg)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var pod corev1.Pod
		if err := json.Unmarshal(raw, &pod); err != nil {
			if resp := h.admit(t.Context(), createRequest(raw)); resp.Allowed {
				t.Fatalf("a pod that does not decode (%v) was allowed", err)
			}
			return
		}
		// The apiserver sends the pod as it encodes it: the patch's paths
		// are written for that JSON, not for any JSON that decodes to it.
		raw = mustJSON(t, &pod)
		resp := h.admit(t.Context(), createRequest(raw))
		switch {
		case !resp.Allowed:
			if resp.Result == nil || resp.Result.Message == "" || resp.Patch != nil {
				t.Fatalf("denied with status %+v and patch %s: want a reason and no patch", resp.Result, resp.Patch)
			}
			return
		case pod.Annotations[podapi.AnnotationInject] != "true":
			if resp.Patch != nil {
				t.Fatalf("pod without %s got a patch: %s", podapi.AnnotationInject, resp.Patch)
			}
			return
		}
		patched := raw // injected already
		if len(resp.Patch) > 0 {
			p, err := jsonpatch.DecodePatch(resp.Patch)
			if err != nil {
				t.Fatalf("decode patch %s: %v", resp.Patch, err)
			}
			if patched, err = p.Apply(raw); err != nil {
				t.Fatalf("apply patch %s to %s: %v", resp.Patch, raw, err)
			}
		}
		var got corev1.Pod
		if err := json.Unmarshal(patched, &got); err != nil {
			t.Fatalf("patched pod %s: %v", patched, err)
		}
		checkIdentity(t, cfg, &got)
		if again := h.admit(t.Context(), createRequest(patched)); !again.Allowed || len(again.Patch) > 0 {
			t.Fatalf("second pass over %s: allowed %v (%v), patch %s; want allowed and no patch", patched, again.Allowed, again.Result, again.Patch)
		}
	})
}
