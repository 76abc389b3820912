package auth_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/muster-dev/muster/coordinator/auth"
)

// Tokens the fake apiserver knows.
const (
	tokPod        = "tok-pod"         // bound to pod ns1/g-0, uid-0
	tokPodOldUID  = "tok-pod-old"     // bound to an earlier pod ns1/g-0
	tokPodGone    = "tok-pod-gone"    // bound to a pod that does not exist
	tokNoGroup    = "tok-nogroup"     // bound to pod ns1/loner (no group label)
	tokUnboundSA  = "tok-unbound-sa"  // a service account's token not bound to a pod
	tokAlice      = "tok-alice"       // a person
	tokWrongAud   = "tok-wrong-aud"   // refused by the apiserver
	tokReviewDown = "tok-review-down" // the review itself fails
	tokNoIP       = "tok-no-ip"       // bound to pod ns1/g-1, whose IP is not in its status yet
	// Tokens the apiserver accepts for its own audience only (nil
	// Audiences in the review), refused for muster's: kubectl's.
	tokKubectl   = "tok-kubectl"    // a person's
	tokPodAPI    = "tok-pod-api"    // the default token of pod ns1/g-0 (bound to it, for the apiserver)
	tokAPIReview = "tok-api-review" // refused for muster; its review for the apiserver's audience fails
)

// fakeKube is a fake apiserver answering TokenReviews and
// SubjectAccessReviews, counting them.
type fakeKube struct {
	cs *fake.Clientset

	mu      sync.Mutex
	reviews map[string]int // token -> TokenReviews
	sars    []authzv1.SubjectAccessReviewSpec
	// allowed says what SubjectAccessReviews allow.
	allowed func(authzv1.SubjectAccessReviewSpec) bool
	// reviewErr, while set, fails TokenReviews (the apiserver is down).
	reviewErr error
	// audiences records the audiences of every TokenReview, by token.
	audiences map[string][][]string
}

func podBound(ns, name, uid string) authnv1.UserInfo {
	return authnv1.UserInfo{
		Username: "system:serviceaccount:" + ns + ":default",
		UID:      "sa-uid",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		Extra: map[string]authnv1.ExtraValue{
			"authentication.kubernetes.io/pod-name": {name},
			"authentication.kubernetes.io/pod-uid":  {uid},
		},
	}
}

func newFakeKube(t *testing.T) *fakeKube {
	t.Helper()
	pods := []runtime.Object{
		&v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "g-0", UID: types.UID("uid-0"), Labels: map[string]string{"muster.dev/group": "llama"}},
			Status:     v1.PodStatus{PodIP: "10.0.0.5", PodIPs: []v1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}}},
		},
		&v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "g-1", UID: types.UID("uid-1"), Labels: map[string]string{"muster.dev/group": "llama"}},
		},
		&v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "loner", UID: types.UID("uid-l")},
			Status:     v1.PodStatus{PodIP: "10.0.0.9"},
		},
	}
	users := map[string]authnv1.UserInfo{
		tokPod:       podBound("ns1", "g-0", "uid-0"),
		tokPodOldUID: podBound("ns1", "g-0", "uid-old"),
		tokPodGone:   podBound("ns1", "g-7", "uid-7"),
		tokNoGroup:   podBound("ns1", "loner", "uid-l"),
		tokNoIP:      podBound("ns1", "g-1", "uid-1"),
		tokUnboundSA: {Username: "system:serviceaccount:ns1:builder", UID: "sa-b"},
		tokAlice: {Username: "alice", UID: "alice-uid", Groups: []string{"devs", "system:authenticated"},
			Extra: map[string]authnv1.ExtraValue{"scopes": {"read"}}},
	}
	// What the apiserver says of tokens for its own audience.
	apiUsers := map[string]authnv1.UserInfo{
		tokKubectl: {Username: "bob", UID: "bob-uid", Groups: []string{"ops", "system:authenticated"}},
		tokPodAPI:  podBound("ns1", "g-0", "uid-0"),
	}
	f := &fakeKube{cs: fake.NewClientset(pods...), reviews: map[string]int{}, audiences: map[string][][]string{}}
	f.cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		f.mu.Lock()
		defer f.mu.Unlock()
		f.reviews[tr.Spec.Token]++
		f.audiences[tr.Spec.Token] = append(f.audiences[tr.Spec.Token], tr.Spec.Audiences)
		if f.reviewErr != nil {
			return true, nil, f.reviewErr
		}
		switch {
		case len(tr.Spec.Audiences) == 0 && tr.Spec.Token == tokAPIReview:
			return true, nil, errors.New("etcdserver: request timed out")
		case len(tr.Spec.Audiences) == 0:
			// The apiserver's own audience.
			if u, ok := apiUsers[tr.Spec.Token]; ok {
				tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: u, Audiences: []string{"https://kubernetes.default.svc"}}
			} else {
				tr.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}
			}
			return true, tr, nil
		case !slices.Equal(tr.Spec.Audiences, []string{auth.DefaultAudience}):
			return true, nil, fmt.Errorf("TokenReview audiences %v, want [%s] or none", tr.Spec.Audiences, auth.DefaultAudience)
		}
		if u, ok := users[tr.Spec.Token]; ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: u, Audiences: tr.Spec.Audiences}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, token audiences [\"api\"] is invalid for the target audiences [\"muster\"]]"}
		}
		return true, tr, nil
	})
	f.cs.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sar := a.(k8stesting.CreateAction).GetObject().(*authzv1.SubjectAccessReview).DeepCopy()
		f.mu.Lock()
		defer f.mu.Unlock()
		f.sars = append(f.sars, sar.Spec)
		sar.Status.Allowed = f.allowed != nil && f.allowed(sar.Spec)
		if !sar.Status.Allowed {
			sar.Status.Reason = "no RBAC policy matched"
		}
		return true, sar, nil
	})
	return f
}

func (f *fakeKube) reviewsOf(token string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reviews[token]
}

func (f *fakeKube) sarCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sars)
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestKubeIdentify(t *testing.T) {
	tests := []struct {
		name  string
		token string
		want  *auth.Identity // nil: an error is wanted
		// wantErr are substrings of the Unauthenticated message.
		wantErr []string
	}{
		{
			name: "pod-bound token becomes the pod", token: tokPod,
			want: &auth.Identity{Name: "pod ns1/g-0", Namespace: "ns1", Group: "llama", Member: "g-0", Addresses: []string{"10.0.0.5", "fd00::5"}},
		},
		{
			// Only podIP set (no podIPs): still its address; no label: no group.
			name: "pod without a group", token: tokNoGroup,
			want: &auth.Identity{Name: "pod ns1/loner", Namespace: "ns1", Member: "loner", Addresses: []string{"10.0.0.9"}},
		},
		{
			name: "pod deleted and made again", token: tokPodOldUID,
			wantErr: []string{"ns1/g-0", "uid-old", "uid-0", "deleted and made again"},
		},
		{
			name: "pod gone", token: tokPodGone,
			wantErr: []string{"ns1/g-7", "read the pod", "not found"},
		},
		{
			name: "refused by the apiserver", token: tokWrongAud,
			wantErr: []string{`audience "muster"`, "and for the apiserver's own", "invalid bearer token"},
		},
		{
			name: "kubectl's token for the apiserver's audience is a user", token: tokKubectl,
			want: &auth.Identity{Name: "user bob", User: &auth.User{}},
		},
		{
			// A pod's default token is no member credential: only the
			// projected token for muster's audience makes a member.
			name: "a pod's token for the apiserver's audience is a user, never the member", token: tokPodAPI,
			want: &auth.Identity{Name: "user system:serviceaccount:ns1:default", User: &auth.User{}},
		},
		{
			name: "service account not bound to a pod is a user", token: tokUnboundSA,
			want: &auth.Identity{Name: "user system:serviceaccount:ns1:builder", User: &auth.User{}},
		},
		{
			name: "person", token: tokAlice,
			want: &auth.Identity{Name: "user alice", User: &auth.User{}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKube(t)
			k := auth.NewKube(f.cs, "")
			id, err := k.Identify(testCtx(t), tc.token)
			if tc.want == nil {
				if status.Code(err) != codes.Unauthenticated || id != nil {
					t.Fatalf("Identify = %+v, %v; want Unauthenticated", id, err)
				}
				for _, w := range tc.wantErr {
					if msg := status.Convert(err).Message(); !strings.Contains(msg, w) {
						t.Errorf("message %q does not name %q", msg, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Identify: %v", err)
			}
			checkIdentity(t, id, tc.want)
		})
	}
}

func TestKubeUserKeepsWhatTheApiserverSaid(t *testing.T) {
	f := newFakeKube(t)
	k := auth.NewKube(f.cs, "")
	id, err := k.Identify(testCtx(t), tokAlice)
	if err != nil {
		t.Fatalf("Identify(alice): %v", err)
	}
	u := id.User
	if u == nil || u.Name != "alice" || u.UID != "alice-uid" || !slices.Equal(u.Groups, []string{"devs", "system:authenticated"}) ||
		!slices.Equal(u.Extra["scopes"], []string{"read"}) {
		t.Fatalf("User = %+v, want alice with her uid, groups and extra", u)
	}
	if id.Member != "" || id.Operator || id.Anonymous {
		t.Errorf("a person's identity %+v has member or operator rights", id)
	}
	if err := id.ActAs("ns1", "llama", "g-0"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("alice ActAs a member = %v, want PermissionDenied", err)
	}
}

func TestKubeCachesReviews(t *testing.T) {
	t.Run("within CacheTTL one review", func(t *testing.T) {
		f := newFakeKube(t)
		k := auth.NewKube(f.cs, "")
		k.CacheTTL = time.Hour
		for i := range 3 {
			id, err := k.Identify(testCtx(t), tokPod)
			if err != nil || id.Member != "g-0" {
				t.Fatalf("Identify #%d = %+v, %v; want pod g-0", i+1, id, err)
			}
		}
		if n := f.reviewsOf(tokPod); n != 1 {
			t.Errorf("3 calls with one token within CacheTTL made %d TokenReviews, want 1", n)
		}
		// Refusals are cached too: a stranger's retries do not reach the
		// apiserver each time.
		for range 3 {
			if _, err := k.Identify(testCtx(t), tokWrongAud); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("Identify(refused token) = %v, want Unauthenticated", err)
			}
		}
		// (one review for muster's audience, one for the apiserver's: a
		// person's kubectl token)
		if n := f.reviewsOf(tokWrongAud); n != 2 {
			t.Errorf("3 calls with a refused token made %d TokenReviews, want 2 (one per audience)", n)
		}
		// Another token is reviewed on its own.
		if _, err := k.Identify(testCtx(t), tokNoGroup); err != nil {
			t.Fatalf("Identify(other token): %v", err)
		}
		if n := f.reviewsOf(tokNoGroup); n != 1 {
			t.Errorf("a second token made %d TokenReviews, want 1", n)
		}
	})
	t.Run("expired entries are reviewed again", func(t *testing.T) {
		f := newFakeKube(t)
		k := auth.NewKube(f.cs, "")
		k.CacheTTL = 0 // every entry has expired by the next call
		for range 2 {
			if _, err := k.Identify(testCtx(t), tokPod); err != nil {
				t.Fatalf("Identify: %v", err)
			}
		}
		if n := f.reviewsOf(tokPod); n != 2 {
			t.Errorf("2 calls past CacheTTL made %d TokenReviews, want 2", n)
		}
	})
	t.Run("a failed review is not cached", func(t *testing.T) {
		f := newFakeKube(t)
		k := auth.NewKube(f.cs, "")
		k.CacheTTL = time.Hour
		f.mu.Lock()
		f.reviewErr = errors.New("connection refused")
		f.mu.Unlock()
		_, err := k.Identify(testCtx(t), tokPod)
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("Identify with the apiserver down = %v, want Unavailable naming the cause", err)
		}
		f.mu.Lock()
		f.reviewErr = nil
		f.mu.Unlock()
		id, err := k.Identify(testCtx(t), tokPod)
		if err != nil || id.Member != "g-0" {
			t.Fatalf("Identify once the apiserver is back = %+v, %v; want pod g-0 (the outage must not be cached)", id, err)
		}
		if n := f.reviewsOf(tokPod); n != 2 {
			t.Errorf("TokenReviews = %d, want 2 (one failed, one answered)", n)
		}
	})
}

func TestKubeMayRead(t *testing.T) {
	alice := &auth.User{Name: "alice", UID: "alice-uid", Groups: []string{"devs"}, Extra: map[string][]string{"scopes": {"read"}}}
	tests := []struct {
		name, verb, ns string
		// denied lists what the PermissionDenied message names; nil: allowed.
		denied []string
	}{
		{name: "get in her namespace", verb: "get", ns: "team-a"},
		{name: "list in her namespace", verb: "list", ns: "team-a"},
		{name: "list in another namespace", verb: "list", ns: "team-b", denied: []string{"alice", "list", "groups.muster.dev", "in namespace team-b", "RBAC"}},
		{name: "watch everywhere", verb: "watch", ns: "", denied: []string{"alice", "watch", "groups.muster.dev", "in all namespaces"}},
	}
	f := newFakeKube(t)
	f.allowed = func(s authzv1.SubjectAccessReviewSpec) bool {
		ra := s.ResourceAttributes
		return s.User == "alice" && ra != nil && ra.Namespace == "team-a" && ra.Group == auth.ResourceGroup && ra.Resource == auth.Resource
	}
	k := auth.NewKube(f.cs, "")
	k.CacheTTL = time.Hour
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.sarCount()
			for range 2 {
				err := k.MayRead(testCtx(t), alice, tc.verb, tc.ns)
				if tc.denied == nil {
					if err != nil {
						t.Fatalf("MayRead(%s, %q) = %v, want allowed", tc.verb, tc.ns, err)
					}
					continue
				}
				checkDenied(t, "MayRead", err, tc.denied...)
			}
			if n := f.sarCount() - before; n != 1 {
				t.Errorf("2 identical MayRead calls made %d SubjectAccessReviews, want 1 (cached)", n)
			}
			f.mu.Lock()
			got := f.sars[len(f.sars)-1]
			f.mu.Unlock()
			ra := got.ResourceAttributes
			if got.User != "alice" || got.UID != "alice-uid" || !slices.Equal(got.Groups, alice.Groups) || !slices.Equal(got.Extra["scopes"], []string{"read"}) ||
				ra == nil || ra.Verb != tc.verb || ra.Namespace != tc.ns || ra.Group != "muster.dev" || ra.Resource != "groups" {
				t.Errorf("SubjectAccessReview spec = %+v (resource %+v), want alice's identity asking %s groups.muster.dev in %q", got, ra, tc.verb, tc.ns)
			}
		})
	}
}

// A pod whose IP has not reached the apiserver yet (its container started
// first) is told to retry, and the answer is not cached: once the kubelet
// reports the IP, the next call succeeds.
func TestKubePodWithoutIPYetIsRetried(t *testing.T) {
	f := newFakeKube(t)
	k := auth.NewKube(f.cs, "")
	if _, err := k.Identify(context.Background(), tokNoIP); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no IP") {
		t.Fatalf("pod without an IP: %v, want Unavailable saying it has no IP yet", err)
	}
	p, err := f.cs.CoreV1().Pods("ns1").Get(context.Background(), "g-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.PodIPs = []v1.PodIP{{IP: "10.0.0.6"}}
	if _, err := f.cs.CoreV1().Pods("ns1").UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	id, err := k.Identify(context.Background(), tokNoIP)
	if err != nil || !slices.Equal(id.Addresses, []string{"10.0.0.6"}) {
		t.Fatalf("after the IP is reported: %+v, %v; want addresses [10.0.0.6]", id, err)
	}
}

// A token muster's audience refuses is reviewed for the apiserver's own
// (kubectl's credentials): accepted there, it is a user, never a member,
// even when it is bound to a pod; a token muster's audience accepts is
// reviewed once.
func TestKubeApiserverAudience(t *testing.T) {
	tests := []struct {
		name      string
		token     string
		wantUser  string // "": no user
		wantCode  codes.Code
		wantMsg   []string
		wantAsked [][]string // the audiences of the reviews, in order
	}{
		{name: "a pod's token for muster", token: tokPod, wantAsked: [][]string{{"muster"}}},
		{name: "a person's kubectl token", token: tokKubectl, wantUser: "bob", wantAsked: [][]string{{"muster"}, nil}},
		{name: "a pod's default token", token: tokPodAPI, wantUser: "system:serviceaccount:ns1:default", wantAsked: [][]string{{"muster"}, nil}},
		{
			name: "refused by both", token: tokWrongAud, wantCode: codes.Unauthenticated,
			wantMsg: []string{`audience "muster"`, "apiserver's own"}, wantAsked: [][]string{{"muster"}, nil},
		},
		{
			// The apiserver did not answer: say so, and ask again next time.
			name: "the second review fails", token: tokAPIReview, wantCode: codes.Unavailable,
			wantMsg: []string{"review the caller's token", "timed out"}, wantAsked: [][]string{{"muster"}, nil},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKube(t)
			k := auth.NewKube(f.cs, "")
			k.CacheTTL = time.Hour
			id, err := k.Identify(testCtx(t), tc.token)
			f.mu.Lock()
			asked := f.audiences[tc.token]
			f.mu.Unlock()
			if len(asked) != len(tc.wantAsked) {
				t.Fatalf("reviewed for audiences %q, want %q", asked, tc.wantAsked)
			}
			for i := range asked {
				if !slices.Equal(asked[i], tc.wantAsked[i]) {
					t.Fatalf("reviewed for audiences %q, want %q", asked, tc.wantAsked)
				}
			}
			if tc.wantCode != codes.OK {
				if status.Code(err) != tc.wantCode || id != nil {
					t.Fatalf("Identify = %+v, %v; want %v", id, err, tc.wantCode)
				}
				for _, w := range tc.wantMsg {
					if msg := status.Convert(err).Message(); !strings.Contains(msg, w) {
						t.Errorf("message %q does not name %q", msg, w)
					}
				}
				// A refusal is cached; an outage is not.
				_, _ = k.Identify(testCtx(t), tc.token)
				want := 2
				if tc.wantCode == codes.Unavailable {
					want = 4
				}
				if n := f.reviewsOf(tc.token); n != want {
					t.Errorf("two calls made %d TokenReviews, want %d", n, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Identify: %v", err)
			}
			if tc.wantUser == "" {
				if id.User != nil || id.Member == "" {
					t.Fatalf("identity %+v, want a member", id)
				}
				return
			}
			if id.User == nil || id.User.Name != tc.wantUser || id.Member != "" || id.Namespace != "" || id.Group != "" || len(id.Addresses) != 0 || id.Operator || id.Anonymous {
				t.Fatalf("identity %+v (user %+v), want user %s and nothing else", id, id.User, tc.wantUser)
			}
			if err := id.ActAs("ns1", "llama", "g-0"); status.Code(err) != codes.PermissionDenied {
				t.Errorf("ActAs(ns1/llama g-0) = %v, want PermissionDenied", err)
			}
		})
	}
}

// May asks about one group and a subresource: create on groups/restart is
// its own question, answered and cached apart from get.
func TestKubeMay(t *testing.T) {
	bob := &auth.User{Name: "bob", UID: "bob-uid", Groups: []string{"ops"}}
	tests := []struct {
		name string
		a    auth.Attributes
		// denied lists what the PermissionDenied message names; nil: allowed.
		denied []string
	}{
		{name: "restart llama", a: auth.Attributes{Verb: "create", Namespace: "team-a", Name: "llama", Subresource: "restart"}},
		{name: "get llama", a: auth.Attributes{Verb: "get", Namespace: "team-a", Name: "llama"}},
		{
			name: "restart another group", a: auth.Attributes{Verb: "create", Namespace: "team-a", Name: "mistral", Subresource: "restart"},
			denied: []string{"bob", "create", `groups/restart.muster.dev "mistral" in namespace team-a`, `verb create on resource "groups/restart" of API group "muster.dev"`},
		},
		{
			name: "restart in another namespace", a: auth.Attributes{Verb: "create", Namespace: "team-b", Name: "llama", Subresource: "restart"},
			denied: []string{"bob", "groups/restart", "in namespace team-b"},
		},
		{
			name: "create the group itself", a: auth.Attributes{Verb: "create", Namespace: "team-a", Name: "llama"},
			denied: []string{"bob", `groups.muster.dev "llama"`, `resource "groups" of`},
		},
	}
	f := newFakeKube(t)
	f.allowed = func(s authzv1.SubjectAccessReviewSpec) bool {
		ra := s.ResourceAttributes
		if s.User != "bob" || ra == nil || ra.Namespace != "team-a" || ra.Group != auth.ResourceGroup || ra.Resource != auth.Resource || ra.Name != "llama" {
			return false
		}
		return ra.Verb == "get" && ra.Subresource == "" || ra.Verb == "create" && ra.Subresource == "restart"
	}
	k := auth.NewKube(f.cs, "")
	k.CacheTTL = time.Hour
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.sarCount()
			for range 2 {
				err := k.May(testCtx(t), bob, tc.a)
				if tc.denied == nil {
					if err != nil {
						t.Fatalf("May(%v) = %v, want allowed", tc.a, err)
					}
					continue
				}
				checkDenied(t, "May", err, tc.denied...)
			}
			if n := f.sarCount() - before; n != 1 {
				t.Errorf("2 identical May calls made %d SubjectAccessReviews, want 1 (cached)", n)
			}
			f.mu.Lock()
			ra := f.sars[len(f.sars)-1].ResourceAttributes
			f.mu.Unlock()
			if ra == nil || ra.Verb != tc.a.Verb || ra.Namespace != tc.a.Namespace || ra.Name != tc.a.Name || ra.Subresource != tc.a.Subresource ||
				ra.Group != "muster.dev" || ra.Resource != "groups" {
				t.Errorf("SubjectAccessReview resource %+v, want %+v on groups.muster.dev", ra, tc.a)
			}
		})
	}
}
