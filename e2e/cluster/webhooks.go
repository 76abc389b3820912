package cluster

import (
	"bytes"
	"context"
	"fmt"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/internal/freeport"
)

// FreePort picks a free port on 127.0.0.1 for a component a test starts
// beside the cluster (a controller's webhook server); see freeport.Pick for
// why it lies below the ephemeral range.
func FreePort() (int, error) {
	ports, err := freeport.Pick(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// WebhookToURL points a webhook that names a Service (as a project's
// release manifests do) at base + that Service's path: the controllers the
// tests run listen on loopback, outside the cluster, with a certificate
// from the cluster CA (IssueServingCert), so caBundle is that CA.
func WebhookToURL(cc *admissionregistrationv1.WebhookClientConfig, base string, caBundle []byte) error {
	if cc.Service == nil || cc.Service.Path == nil {
		return fmt.Errorf("no service path in its clientConfig")
	}
	url := base + *cc.Service.Path
	*cc = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caBundle}
	return nil
}

// RegisterWebhooks creates the webhook configurations among manifests (a
// project's release YAML, documents separated by ---), each webhook's
// Service turned into a URL on base with caBundle (WebhookToURL). edit, if
// not nil, changes each configuration first (a name prefix, the project's
// patches); it gets a *MutatingWebhookConfiguration or a
// *ValidatingWebhookConfiguration. Configurations that exist are left.
func RegisterWebhooks(ctx context.Context, cs kubernetes.Interface, manifests []byte, base string, caBundle []byte, edit func(any) error) error {
	if edit == nil {
		edit = func(any) error { return nil }
	}
	for _, doc := range bytes.Split(manifests, []byte("\n---")) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return fmt.Errorf("webhook manifests: %w", err)
		}
		var name string
		var configs []*admissionregistrationv1.WebhookClientConfig
		var create func() error
		switch meta.Kind {
		case "":
			continue
		case "MutatingWebhookConfiguration":
			var m admissionregistrationv1.MutatingWebhookConfiguration
			if err := yaml.UnmarshalStrict(doc, &m); err != nil {
				return fmt.Errorf("mutating webhooks: %w", err)
			}
			if err := edit(&m); err != nil {
				return err
			}
			for i := range m.Webhooks {
				configs = append(configs, &m.Webhooks[i].ClientConfig)
			}
			name = m.Name
			create = func() error {
				_, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &m, metav1.CreateOptions{})
				return err
			}
		case "ValidatingWebhookConfiguration":
			var v admissionregistrationv1.ValidatingWebhookConfiguration
			if err := yaml.UnmarshalStrict(doc, &v); err != nil {
				return fmt.Errorf("validating webhooks: %w", err)
			}
			if err := edit(&v); err != nil {
				return err
			}
			for i := range v.Webhooks {
				configs = append(configs, &v.Webhooks[i].ClientConfig)
			}
			name = v.Name
			create = func() error {
				_, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, &v, metav1.CreateOptions{})
				return err
			}
		default:
			return fmt.Errorf("webhook manifests: unexpected kind %q", meta.Kind)
		}
		for _, cc := range configs {
			if err := WebhookToURL(cc, base, caBundle); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("register %s: %w", name, err)
		}
	}
	return nil
}
