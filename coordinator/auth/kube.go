package auth

import (
	"github.com/muster-dev/muster/podapi"

	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The apiserver names the pod a bound service-account token was issued
// for in the TokenReview's user extra.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// DefaultAudience is the audience of the tokens the webhook projects into
// muster pods: a token made for muster is good for nothing else, and a
// token made for the apiserver is refused here.
const DefaultAudience = "muster"

// Resource is what a SubjectAccessReview asks about when a Kubernetes user
// (not a pod) reads groups: verbs get, list and watch on groups.muster.dev.
const (
	ResourceGroup = podapi.RBACGroup
	Resource      = podapi.RBACResource
)

// Kube identifies callers by a Kubernetes token: the apiserver reviews it
// (TokenReview, audience Audience), and a pod-bound service-account token
// becomes that pod's identity: its namespace, its name as the member, its
// group from its labels, its IPs as the addresses it may announce.
// Reviews are cached for CacheTTL by the token's hash, so a member's calls
// cost one apiserver round trip every CacheTTL, not one each.
type Kube struct {
	Client   kubernetes.Interface
	Audience string
	CacheTTL time.Duration

	flight singleflight.Group
	mu     sync.Mutex
	cache  map[[32]byte]cached
	sars   map[string]cachedSAR
}

type cached struct {
	id      *Identity
	err     error
	expires time.Time
}

type cachedSAR struct {
	err     error
	expires time.Time
}

// NewKube returns a Kube authenticator with the default audience and a
// 10s cache: a deleted pod's token stops working within 10s.
func NewKube(c kubernetes.Interface, audience string) *Kube {
	if audience == "" {
		audience = DefaultAudience
	}
	return &Kube{Client: c, Audience: audience, CacheTTL: 10 * time.Second, cache: map[[32]byte]cached{}, sars: map[string]cachedSAR{}}
}

// bearer returns the call's bearer token, or "".
func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
	}
	return ""
}

// maxTokenLen bounds what is sent to the apiserver: service-account JWTs
// are about 1 KB.
const maxTokenLen = 16 << 10

// Identify reviews token and returns whom it names.
func (k *Kube) Identify(ctx context.Context, token string) (*Identity, error) {
	if len(token) > maxTokenLen {
		return nil, status.Errorf(codes.Unauthenticated, "bearer token is %d bytes; at most %d", len(token), maxTokenLen)
	}
	h := sha256.Sum256([]byte(token))
	now := time.Now()
	k.mu.Lock()
	c, ok := k.cache[h]
	if len(k.cache) > 10000 {
		for key, v := range k.cache {
			if now.After(v.expires) {
				delete(k.cache, key)
			}
		}
	}
	k.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.id, c.err
	}
	// An agent's first calls (join, watch, reports, gossip's reads) come
	// together: one review serves them all.
	v, err, _ := k.flight.Do(string(h[:]), func() (any, error) { return k.review(context.WithoutCancel(ctx), token) })
	id, _ := v.(*Identity)
	if st, ok := status.FromError(err); err != nil && ok && st.Code() == codes.Unavailable {
		return nil, err // not cached: the apiserver may answer next time
	}
	k.mu.Lock()
	k.cache[h] = cached{id: id, err: err, expires: now.Add(k.CacheTTL)}
	k.mu.Unlock()
	return id, err
}

func (k *Kube) review(ctx context.Context, token string) (*Identity, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr, err := k.tokenReview(rctx, token, []string{k.Audience})
	if err != nil {
		return nil, err
	}
	if !tr.Status.Authenticated {
		// A person's kubectl credentials (kubectl muster): a token for the
		// apiserver's own audience names a user, never a member, who may
		// do what RBAC allows, as on the apiserver itself.
		api, err := k.tokenReview(rctx, token, nil)
		if err != nil {
			return nil, err // Unavailable: not cached, asked again next time
		}
		if api.Status.Authenticated {
			return userIdentity(api.Status.User), nil
		}
		msg := tr.Status.Error
		if msg == "" {
			msg = "the apiserver did not accept it"
		}
		return nil, status.Errorf(codes.Unauthenticated, "bearer token refused for audience %q (and for the apiserver's own): %s", k.Audience, msg)
	}
	u := tr.Status.User
	podName, podUID := first(u.Extra[extraPodName]), first(u.Extra[extraPodUID])
	ns, isSA := serviceAccountNamespace(u.Username)
	if !isSA || podName == "" {
		// A person or a controller with a token for muster's audience:
		// what RBAC allows (see May), as no member.
		return userIdentity(u), nil
	}
	pod, err := k.Client.CoreV1().Pods(ns).Get(rctx, podName, metav1.GetOptions{})
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "token of pod %s/%s: read the pod: %v", ns, podName, err)
	}
	if string(pod.UID) != podUID {
		return nil, status.Errorf(codes.Unauthenticated, "token of pod %s/%s was issued for uid %s; the pod is now uid %s (deleted and made again)", ns, podName, podUID, pod.UID)
	}
	id := &Identity{Name: fmt.Sprintf("pod %s/%s", ns, podName), Namespace: ns, Member: podName}
	if key, ok := podapi.Of(pod); ok {
		id.Group = key.Name
	}
	for _, ip := range pod.Status.PodIPs {
		id.Addresses = append(id.Addresses, ip.IP)
	}
	if len(id.Addresses) == 0 && pod.Status.PodIP != "" {
		id.Addresses = []string{pod.Status.PodIP}
	}
	if len(id.Addresses) == 0 {
		// The container may start (and its agent call) before the kubelet's
		// status update with the pod's IP reaches the apiserver: a moment
		// to retry (Unavailable is not cached), not a refusal.
		return nil, status.Errorf(codes.Unavailable, "pod %s/%s has no IP in its status yet; retry", ns, podName)
	}
	return id, nil
}

// tokenReview asks the apiserver who token names for audiences (nil: the
// apiserver's own).
func (k *Kube) tokenReview(ctx context.Context, token string, audiences []string) (*authnv1.TokenReview, error) {
	tr, err := k.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "review the caller's token with the apiserver: %v", err)
	}
	return tr, nil
}

// userIdentity is a Kubernetes user that is not acting as a member.
func userIdentity(u authnv1.UserInfo) *Identity {
	extra := map[string][]string{}
	for k, v := range u.Extra {
		extra[k] = v
	}
	return &Identity{Name: "user " + u.Username, User: &User{Name: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra}}
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// serviceAccountNamespace reads system:serviceaccount:NS:NAME.
func serviceAccountNamespace(user string) (string, bool) {
	parts := strings.Split(user, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" {
		return "", false
	}
	return parts[2], true
}

// Attributes is what a Kubernetes user asks to do to groups: a verb
// (get, list, watch; create on subresource restart) in a namespace ("" =
// all namespaces), on one group (Name) or all.
type Attributes struct {
	Verb, Namespace, Name, Subresource string
}

func (a Attributes) String() string {
	what := Resource
	if a.Subresource != "" {
		what += "/" + a.Subresource
	}
	where := "in namespace " + a.Namespace
	if a.Namespace == "" {
		where = "in all namespaces"
	}
	if a.Name != "" {
		return fmt.Sprintf("%s %s.%s %q %s", a.Verb, what, ResourceGroup, a.Name, where)
	}
	return fmt.Sprintf("%s %s.%s %s", a.Verb, what, ResourceGroup, where)
}

// MayRead asks whether user may verb (get, list, watch) groups in
// namespace ns ("" = all namespaces).
func (k *Kube) MayRead(ctx context.Context, u *User, verb, ns string) error {
	return k.May(ctx, u, Attributes{Verb: verb, Namespace: ns})
}

// May asks the apiserver (a SubjectAccessReview) whether user may do what
// a says to groups.muster.dev. Answers are cached like token reviews.
func (k *Kube) May(ctx context.Context, u *User, a Attributes) error {
	key := strings.Join([]string{u.Name, a.Verb, a.Namespace, a.Name, a.Subresource}, "\x00")
	now := time.Now()
	k.mu.Lock()
	c, ok := k.sars[key]
	if len(k.sars) > 10000 {
		for key, v := range k.sars {
			if now.After(v.expires) {
				delete(k.sars, key)
			}
		}
	}
	k.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.err
	}
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = v
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sar, err := k.Client.AuthorizationV1().SubjectAccessReviews().Create(rctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Name, UID: u.UID, Groups: u.Groups, Extra: extra,
			ResourceAttributes: &authzv1.ResourceAttributes{Namespace: a.Namespace, Verb: a.Verb, Group: ResourceGroup, Resource: Resource, Name: a.Name, Subresource: a.Subresource},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return status.Errorf(codes.Unavailable, "ask the apiserver whether %s may %s: %v", u.Name, a, err)
	}
	var res error
	if !sar.Status.Allowed {
		what := Resource
		if a.Subresource != "" {
			what += "/" + a.Subresource
		}
		res = status.Errorf(codes.PermissionDenied, "user %s may not %s (RBAC: grant verb %s on resource %q of API group %q): %v", u.Name, a, a.Verb, what, ResourceGroup, ErrNotAllowed)
	}
	k.mu.Lock()
	k.sars[key] = cachedSAR{err: res, expires: now.Add(k.CacheTTL)}
	k.mu.Unlock()
	return res
}
