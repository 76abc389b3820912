package deploy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestChartWebhookCertificate: the certificate the chart makes (certs=helm)
// is one the coordinator can serve (the key matches) and the apiserver
// accepts when it calls the Service: signed by the caBundle the webhook
// configuration carries, for <service>.<namespace>.svc. (It serves the
// gRPC port too: TestChartCoordinatorTLS.)
func TestChartWebhookCertificate(t *testing.T) {
	objs := render(t, nil)
	secret := find(t, objs, "Secret", "muster-webhook-tls")
	data := func(key string) []byte {
		t.Helper()
		s, _, _ := unstructured.NestedString(secret.Object, "data", key)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) == 0 {
			t.Fatalf("Secret %s: data[%s] is not base64 PEM: %v", secret.GetName(), key, err)
		}
		return b
	}
	pair, err := tls.X509KeyPair(data("tls.crt"), data("tls.key"))
	if err != nil {
		t.Fatalf("the coordinator could not load the chart's certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}

	webhooks, _, _ := unstructured.NestedSlice(find(t, objs, "MutatingWebhookConfiguration", "muster").Object, "webhooks")
	caBundle, _, _ := unstructured.NestedString(webhooks[0].(map[string]any), "clientConfig", "caBundle")
	ca, err := base64.StdEncoding.DecodeString(caBundle)
	if err != nil {
		t.Fatalf("caBundle: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("caBundle holds no PEM certificate")
	}
	if string(ca) != string(data("ca.crt")) {
		t.Error("the Secret's ca.crt is not the webhook configuration's caBundle")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName:   "muster-coordinator.muster.svc",
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		t.Errorf("the apiserver would refuse the webhook's certificate when calling the Service: %v", err)
	}
}

// TestChartCoordinatorTLS: with every value set the coordinator serves
// gRPC with TLS (the chart's listen address is not loopback, and without
// TLS the coordinator refuses to start), from files its pod mounts, with a
// certificate made for the host agents dial (the --advertise host) and a
// CA for agents (--agent-ca) from a mounted file. helm: the certificate
// itself verifies; certgen: the Job asks for that host; secret: the host
// is the Secret's owner's to put in (values.yaml says so), and the
// agents' CA is the caBundle.
func TestChartCoordinatorTLS(t *testing.T) {
	for _, v := range chartValues {
		t.Run(v.name, func(t *testing.T) {
			objs := render(t, v.values)
			dep := find(t, objs, "Deployment", "muster-coordinator")
			flags := map[string]string{}
			for _, a := range containerArgs(t, dep) {
				name, value, _ := strings.Cut(a, "=")
				flags[name] = value
			}
			if flags["--insecure"] != "" {
				t.Fatal("the chart passes --insecure")
			}
			spec := podSpec(t, dep)
			volumes := map[string]corev1.Volume{}
			for _, vol := range spec.Volumes {
				volumes[vol.Name] = vol
			}
			// mounted returns the volume a container path is in, and the
			// path inside it.
			mounted := func(flag string) (corev1.Volume, string) {
				t.Helper()
				path := flags[flag]
				if path == "" {
					t.Fatalf("the chart's coordinator has no %s", flag)
				}
				for _, m := range spec.Containers[0].VolumeMounts {
					if rest, ok := strings.CutPrefix(path, m.MountPath+"/"); ok {
						return volumes[m.Name], rest
					}
				}
				t.Fatalf("%s=%s is in none of the coordinator's mounts", flag, path)
				return corev1.Volume{}, ""
			}
			for _, flag := range []string{"--tls-cert", "--tls-key", "--agent-ca"} {
				vol, file := mounted(flag)
				switch {
				case vol.Secret != nil && vol.Secret.Items != nil:
					if !slices.ContainsFunc(vol.Secret.Items, func(it corev1.KeyToPath) bool { return it.Path == file }) {
						t.Errorf("%s: Secret volume %s puts no key at %s", flag, vol.Name, file)
					}
				case vol.Secret != nil:
					if !slices.Contains([]string{"tls.crt", "tls.key", "ca.crt"}, file) {
						t.Errorf("%s: %s is not a key of a kubernetes.io/tls Secret", flag, file)
					}
				case vol.ConfigMap != nil:
					cm := find(t, objs, "ConfigMap", vol.ConfigMap.Name)
					if _, ok, _ := unstructured.NestedString(cm.Object, "data", file); !ok {
						t.Errorf("%s: ConfigMap %s has no %s", flag, cm.GetName(), file)
					}
				default:
					t.Errorf("%s: volume %s is neither a Secret nor a ConfigMap", flag, vol.Name)
				}
			}
			host, _, err := net.SplitHostPort(flags["--advertise"])
			if err != nil {
				t.Fatalf("--advertise %q: %v", flags["--advertise"], err)
			}
			switch certs := v.values["webhook"]; {
			case certs == nil: // helm
				secret := find(t, objs, "Secret", "muster-webhook-tls")
				leaf := secretPair(t, secret)
				if _, err := leaf.leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: leaf.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
					t.Errorf("agents dial %s: the coordinator's certificate does not verify for it with the CA they get: %v", host, err)
				}
			case certs.(map[string]any)["certs"] == "certgen":
				job := find(t, objs, "Job", "muster-webhook-certgen")
				initContainers, _, _ := unstructured.NestedSlice(job.Object, "spec", "template", "spec", "initContainers")
				args, _, _ := unstructured.NestedStringSlice(initContainers[0].(map[string]any), "args")
				if !slices.Contains(args, "--secret-name=muster-webhook-tls") || !slices.ContainsFunc(args, func(a string) bool {
					hosts, ok := strings.CutPrefix(a, "--host=")
					return ok && slices.Contains(strings.Split(hosts, ","), host)
				}) {
					t.Errorf("certgen's certificate for the coordinator (%v) does not name %s, where agents dial", args, host)
				}
			case certs.(map[string]any)["certs"] == "secret":
				vol, file := mounted("--agent-ca")
				if vol.ConfigMap == nil {
					t.Fatalf("--agent-ca is not from the chart's ConfigMap")
				}
				got, _, _ := unstructured.NestedString(find(t, objs, "ConfigMap", vol.ConfigMap.Name).Object, "data", file)
				want, _ := base64.StdEncoding.DecodeString(certs.(map[string]any)["caBundle"].(string))
				if got != string(want) {
					t.Errorf("agents get CA %q, want the caBundle %q", got, want)
				}
			}
		})
	}
}
