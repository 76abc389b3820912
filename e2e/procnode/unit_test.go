package procnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestImageRepository(t *testing.T) {
	for image, want := range map[string]string{
		"muster/agent":                       "muster/agent",
		"muster/agent:dev":                   "muster/agent",
		"docker.io/muster/agent:v1":          "muster/agent",
		"muster/agent@sha256:abc":            "muster/agent",
		"registry:5000/muster/agent:1":       "registry:5000/muster/agent",
		"registry:5000/muster/agent":         "registry:5000/muster/agent",
		"busybox":                            "busybox",
		"docker.io/library/busybox:1.36":     "busybox",
		"ghcr.io/muster-dev/muster/agent:v2": "ghcr.io/muster-dev/muster/agent",
	} {
		if got := imageRepository(image); got != want {
			t.Errorf("imageRepository(%q) = %q, want %q", image, got, want)
		}
	}
	p := &provider{providerConfig: providerConfig{cfg: Config{AgentImage: "muster/agent:latest"}}}
	if !p.isAgentImage("muster/agent:dev") || p.isAgentImage("muster/agent-extra:dev") || p.isAgentImage("other/agent") {
		t.Error("isAgentImage matches the wrong images")
	}
}

func TestTranslate(t *testing.T) {
	mt := mountTable{
		{"/muster/bin/sub", "/host/sub"}, // longest first, as mountTable sorts them
		{"/muster/bin", "/host/bin"},
		{"/data", "/host/data"},
	}
	for in, want := range map[string]string{
		"/muster/bin/agent":       "/host/bin/agent",
		"/muster/bin":             "/host/bin",
		"/muster/bin/sub/x":       "/host/sub/x",
		"/muster/binary":          "/muster/binary",
		"/data/":                  "/host/data/",
		"--out=/data/x":           "--out=/data/x",
		"relative/muster/bin/foo": "relative/muster/bin/foo",
		"":                        "",
	} {
		if got := mt.translate(in); got != want {
			t.Errorf("translate(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIPPool(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/24", "127.0.0.0/30", "0.0.0.0/0", "::1/128", "nonsense", "126.0.0.0/7"} {
		if _, err := newIPPool(bad, false); err == nil {
			t.Errorf("newIPPool(%q, false) accepted", bad)
		}
	}
	p, err := newIPPool("127.0.0.0/29", false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		a, err := p.allocate()
		if err != nil {
			break
		}
		got = append(got, a.String())
	}
	// Not the network address, not 127.0.0.1, not the last address.
	if want := "127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5 127.0.0.6"; strings.Join(got, " ") != want {
		t.Errorf("allocated %v, want %s", got, want)
	}
	p.release(netip.MustParseAddr("127.0.0.4"))
	if a, err := p.allocate(); err != nil || a.String() != "127.0.0.4" {
		t.Errorf("after release: %v, %v", a, err)
	}

	p, _ = newIPPool("127.10.0.0/16", false)
	a, _ := p.allocate()
	b, _ := p.allocate()
	p.release(a)
	c, _ := p.allocate()
	if a.String() != "127.10.0.1" || b.String() != "127.10.0.2" || c.String() != "127.10.0.3" {
		t.Errorf("allocated %s %s %s: want round robin from 127.10.0.1", a, b, c)
	}
}

func TestCopyCRILog(t *testing.T) {
	long := strings.Repeat("x", maxLogLine+10)
	in := "one\n\ntwo\n" + long + "\nlast-no-newline"
	var out bytes.Buffer
	var mu sync.Mutex
	copyCRILog(strings.NewReader(in), &out, &mu, "stderr")
	rec := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stderr ([FP]) (.*)$`)
	var tags, texts []string
	for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		m := rec.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("not a CRI log record: %q", l)
		}
		tags, texts = append(tags, m[1]), append(texts, m[2])
	}
	if want := "F F F P F P"; strings.Join(tags, " ") != want {
		t.Errorf("tags %v, want %s", tags, want)
	}
	if got := texts[3] + texts[4]; got != long {
		t.Errorf("long line split into %d+%d bytes, rejoined wrong", len(texts[3]), len(texts[4]))
	}
	if texts[0] != "one" || texts[1] != "" || texts[2] != "two" || texts[5] != "last-no-newline" {
		t.Errorf("texts %q", texts)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, ok := range []string{"", "localhost", "127.0.0.1", "127.10.3.4", "::1"} {
		if err := loopbackOnly(ok); err != nil {
			t.Errorf("loopbackOnly(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"10.0.0.1", "example.com", "192.168.1.1", "0.0.0.0"} {
		if err := loopbackOnly(bad); err == nil {
			t.Errorf("loopbackOnly(%q) allowed", bad)
		}
	}
}

func TestRefreshTime(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := refreshTime(t0, t0.Add(10*time.Minute)); !got.Equal(t0.Add(8 * time.Minute)) {
		t.Errorf("10-minute token refreshed at +%s, want +8m", got.Sub(t0))
	}
	if got := refreshTime(t0, t0.Add(365*24*time.Hour)); !got.Equal(t0.Add(24 * time.Hour)) {
		t.Errorf("1-year token refreshed at +%s, want +24h", got.Sub(t0))
	}
}

// TestTokenRefresh: a projected token is requested bound to the pod, written
// with mode 0600, replaced once 80% of its (here very short) lifetime has
// passed, retried after a failed request, and the refresher ends with its
// context.
func TestTokenRefresh(t *testing.T) {
	const lifetime = 300 * time.Millisecond
	var mu sync.Mutex
	var reqs []*authenticationv1.TokenRequest
	cs := fake.NewClientset()
	cs.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca := a.(k8stesting.CreateActionImpl)
		if ca.GetSubresource() != "token" || ca.GetNamespace() != "ns" || ca.Name != "runner" {
			return true, nil, fmt.Errorf("unexpected %s of %s/%s/%s %s", a.GetVerb(), ca.GetNamespace(), a.GetResource().Resource, ca.Name, ca.GetSubresource())
		}
		mu.Lock()
		defer mu.Unlock()
		reqs = append(reqs, ca.GetObject().(*authenticationv1.TokenRequest))
		if len(reqs) == 2 {
			return true, nil, errors.New("apiserver unavailable")
		}
		out := reqs[len(reqs)-1].DeepCopy()
		out.Status = authenticationv1.TokenRequestStatus{
			Token:               fmt.Sprintf("tok-%d", len(reqs)),
			ExpirationTimestamp: metav1.NewTime(time.Now().Add(lifetime)),
		}
		return true, out, nil
	})
	pr := &podRuntime{
		p: &provider{providerConfig: providerConfig{
			client: cs,
			cfg:    Config{BackoffInitial: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond},
			log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		}},
		dir: t.TempDir(),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "uid-1"},
		Spec: corev1.PodSpec{ServiceAccountName: "runner", Volumes: []corev1.Volume{{Name: "muster-token", VolumeSource: corev1.VolumeSource{
			Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: "muster", ExpirationSeconds: ptrTo(int64(600)), Path: "token",
			}}}},
		}}}},
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	vols, tokens, err := pr.makeVolumes(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(vols["muster-token"], "token")
	if len(tokens) != 1 || tokens[0].path != file {
		t.Fatalf("tokens %+v, want one at %s", tokens, file)
	}
	read := func() string { b, _ := os.ReadFile(file); return string(b) }
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != tokenMode || read() != "tok-1" {
		t.Fatalf("token file: %v, %v, %q", fi, err, read())
	}

	refreshCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pr.refreshTokens(refreshCtx, pod, tokens)
	}()
	// Request 2 fails; 3 and 4 replace the token, each after 80% of the
	// previous one's lifetime.
	for read() != "tok-4" {
		if !sleepCtx(ctx, 10*time.Millisecond) {
			t.Fatalf("token never refreshed to tok-4: file holds %q", read())
		}
	}
	stop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("refresher still running 5s after its context ended")
	}
	mu.Lock()
	defer mu.Unlock()
	for i, r := range reqs {
		ref := r.Spec.BoundObjectRef
		if len(r.Spec.Audiences) != 1 || r.Spec.Audiences[0] != "muster" || r.Spec.ExpirationSeconds == nil || *r.Spec.ExpirationSeconds != 600 ||
			ref == nil || ref.Kind != "Pod" || ref.APIVersion != "v1" || ref.Name != "p" || ref.UID != "uid-1" {
			t.Errorf("request %d: %+v", i+1, r.Spec)
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(file)); len(entries) != 1 {
		t.Errorf("volume dir holds %d entries, want the token alone (no temporary files left)", len(entries))
	}
}

func ptrTo[T any](v T) *T { return &v }
