package webhook

import (
	"context"
	"fmt"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/muster-dev/muster/podapi"
)

// WebhookName names the webhook inside its MutatingWebhookConfiguration.
const WebhookName = "inject.muster.dev"

// injectCondition sends the webhook only pods that ask for the agent.
// Annotations cannot be selected on (objectSelector matches labels), so
// this CEL condition is the filter. The has() and `in` guards matter: a
// missing map key is an evaluation error, which failurePolicy Fail would
// turn into a rejected pod.
const injectCondition = `has(object.metadata.annotations) && '` + podapi.AnnotationInject + `' in object.metadata.annotations && object.metadata.annotations['` + podapi.AnnotationInject + `'] == 'true'`

// Register creates, or updates, the MutatingWebhookConfiguration name that
// sends the creation of pods annotated muster.dev/inject: "true" to url
// (e.g. https://127.0.0.1:8443/mutate), served with a certificate signed
// by caBundle (PEM).
func Register(ctx context.Context, cs kubernetes.Interface, name, url string, caBundle []byte) error {
	want := configuration(name, url, caBundle)
	client := cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := client.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = client.Create(ctx, want, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		cur.Webhooks = want.Webhooks
		_, err = client.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("register MutatingWebhookConfiguration %q for %s: %w", name, url, err)
	}
	return nil
}

func configuration(name, url string, caBundle []byte) *admissionregistrationv1.MutatingWebhookConfiguration {
	// Fail rather than Ignore: with Ignore, pods created while the
	// coordinator is down would start without their agent and never join
	// their group, silently. The match condition keeps the cost of Fail to
	// the annotated pods: all other pods never reach the webhook, so an
	// outage cannot block the rest of the cluster (kube-system included).
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	// IfNeeded: a webhook that runs after this one and adds a container or
	// env gets the pod passed through here again; inject is idempotent.
	reinvoke := admissionregistrationv1.IfNeededReinvocationPolicy
	timeout := int32(10)
	scope := admissionregistrationv1.NamespacedScope
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         WebhookName,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caBundle},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups:   []string{""},
					APIVersions: []string{"v1"},
					Resources:   []string{"pods"},
					Scope:       &scope,
				},
			}},
			MatchConditions: []admissionregistrationv1.MatchCondition{{
				Name:       "inject-annotated",
				Expression: injectCondition,
			}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
			ReinvocationPolicy:      &reinvoke,
		}},
	}
}
