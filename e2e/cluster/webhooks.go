package cluster

import (
	"fmt"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
)

// FreePort picks a free port on 127.0.0.1 for a component a test starts
// beside the cluster (a controller's webhook server); see freePorts for
// the race this leaves.
func FreePort() (int, error) {
	ports, err := freePorts(1)
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
