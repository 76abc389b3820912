package procnode

// Projected volumes, and the service-account tokens in them.
//
// Why: a projected serviceAccountToken is how a pod proves who it is. Its
// token is bound to the Pod object (a TokenReview of it names the pod in
// user.extra authentication.kubernetes.io/pod-name and pod-uid, and it stops
// being valid once the pod is gone) and has the audience the pod asks for.
// muster's agent sends such a token (audience "muster") to the coordinator,
// which reviews it; so pods of process nodes need real ones, not the empty
// directory every unknown volume type gets.
//
// As the kubelet does, the node requests each token with the TokenRequest
// API, bound to the pod, writes it before any container starts and
// replaces it while the pod lives: once 80% of its lifetime has passed, or
// after 24 hours if that comes first. A new token is written to a temporary
// file in the same directory and renamed over the old one, so a reader
// finds the old token or the new one, never a part of either. One goroutine
// per pod keeps its tokens fresh; the pod runtime owns it, and it ends with
// the pod's context (deletion, or the node stopping), before the pod's
// directory goes.
//
// configMap, secret and downwardAPI sources of a projected volume are
// written once, like the volumes of those types; clusterTrustBundle and
// podCertificate sources are left out.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// tokenMode is the mode of token files: only this host's user (every
	// pod's processes run as it) may read them.
	tokenMode os.FileMode = 0o600
	// maxTokenAge is the kubelet's: a token is replaced after a day even
	// if it is valid for longer.
	maxTokenAge = 24 * time.Hour
	// tokenRequestTimeout bounds one TokenRequest.
	tokenRequestTimeout = 30 * time.Second
)

// projectedToken is a token file of a pod's projected volume.
type projectedToken struct {
	src       corev1.ServiceAccountTokenProjection
	path      string    // the file on the host; set by makeVolumes
	refreshAt time.Time // when to replace it
}

// projectedFiles is the content of a projected volume: each source as the
// volume of its type would have it (the projected volume's defaultMode
// applying to them), and service-account tokens freshly requested.
func (pr *podRuntime) projectedFiles(ctx context.Context, pod *corev1.Pod, v *corev1.ProjectedVolumeSource) (map[string]volumeFile, error) {
	files := map[string]volumeFile{}
	for _, s := range v.Sources {
		var part map[string]volumeFile
		var err error
		switch {
		case s.ServiceAccountToken != nil:
			tok := &projectedToken{src: *s.ServiceAccountToken}
			var data []byte
			if data, tok.refreshAt, err = pr.requestToken(ctx, pod, &tok.src); err != nil {
				return nil, err
			}
			part = map[string]volumeFile{tok.src.Path: {data: data, mode: tokenMode, token: tok}}
		case s.ConfigMap != nil:
			part, err = pr.volumeFiles(ctx, pod, &corev1.Volume{VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: s.ConfigMap.LocalObjectReference, Items: s.ConfigMap.Items,
				DefaultMode: v.DefaultMode, Optional: s.ConfigMap.Optional,
			}}})
		case s.Secret != nil:
			part, err = pr.volumeFiles(ctx, pod, &corev1.Volume{VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: s.Secret.Name, Items: s.Secret.Items,
				DefaultMode: v.DefaultMode, Optional: s.Secret.Optional,
			}}})
		case s.DownwardAPI != nil:
			part, err = pr.volumeFiles(ctx, pod, &corev1.Volume{VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
				Items: s.DownwardAPI.Items, DefaultMode: v.DefaultMode,
			}}})
		}
		if err != nil {
			return nil, err
		}
		for name, f := range part {
			files[name] = f
		}
	}
	return files, nil
}

// requestToken asks the API for a token of the pod's service account with
// src's audience and lifetime, bound to the pod, as the kubelet does. It
// returns the token and when to replace it.
func (pr *podRuntime) requestToken(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection) ([]byte, time.Time, error) {
	var audiences []string
	if src.Audience != "" {
		audiences = []string{src.Audience}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	ctx, cancel := context.WithTimeout(ctx, tokenRequestTimeout)
	defer cancel()
	issued := time.Now()
	tr, err := pr.p.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         audiences,
			ExpirationSeconds: src.ExpirationSeconds,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("serviceAccountToken %s: request a token of service account %s: %w", src.Path, sa, err)
	}
	return []byte(tr.Status.Token), refreshTime(issued, tr.Status.ExpirationTimestamp.Time), nil
}

// refreshTime is when a token issued at issued and expiring at exp is
// replaced: once 80% of its lifetime has passed, or after maxTokenAge.
func refreshTime(issued, exp time.Time) time.Time {
	return issued.Add(min(exp.Sub(issued)*8/10, maxTokenAge))
}

// refreshTokens replaces each token when due until ctx ends (the pod's
// termination or the node's stop). A failed request is retried with the
// node's container back-off; the token in the file stays valid meanwhile
// (for a fifth of its lifetime at least).
func (pr *podRuntime) refreshTokens(ctx context.Context, pod *corev1.Pod, tokens []*projectedToken) {
	backoff := pr.p.cfg.BackoffInitial
	for {
		next := tokens[0]
		for _, t := range tokens[1:] {
			if t.refreshAt.Before(next.refreshAt) {
				next = t
			}
		}
		if !sleepCtx(ctx, time.Until(next.refreshAt)) {
			return
		}
		data, refreshAt, err := pr.requestToken(ctx, pod, &next.src)
		if err == nil {
			err = writeFileAtomic(next.path, data, tokenMode)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			pr.log.Warn("refresh service-account token", "file", next.path, "err", err, "retry-in", backoff)
			next.refreshAt = time.Now().Add(backoff)
			backoff = min(2*backoff, pr.p.cfg.BackoffMax)
			continue
		}
		backoff = pr.p.cfg.BackoffInitial
		next.refreshAt = refreshAt
		pr.log.Info("service-account token refreshed", "file", next.path, "next", refreshAt.Format(time.RFC3339))
	}
}

// writeFileAtomic replaces path with a file of data and mode: written
// under a temporary name in the same directory, then renamed over it.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
