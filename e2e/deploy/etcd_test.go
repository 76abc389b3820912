package deploy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/muster-dev/muster/coordinator/testcoord"
)

// etcdFlags are the --name=value flags of the chart's etcd container.
func etcdFlags(t *testing.T, sts *unstructured.Unstructured) map[string]string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(sts.Object, "spec", "template", "spec", "containers")
	if len(containers) == 0 {
		t.Fatalf("%s has no containers", sts.GetName())
	}
	cmd, _, err := unstructured.NestedStringSlice(containers[0].(map[string]any), "command")
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]string{}
	for _, a := range cmd {
		if name, value, ok := strings.Cut(a, "="); ok {
			flags[strings.TrimPrefix(name, "--")] = value
		} else if strings.HasPrefix(a, "--") {
			flags[strings.TrimPrefix(a, "--")] = "true"
		}
	}
	return flags
}

// startChartEtcd runs one etcd member (embedded, on loopback) with the
// TLS of the chart's etcd StatefulSet: its certificate, key, trusted CA
// and client-cert-auth flags, with the chart's Secret's files for their
// mount. It checks that the member refuses a client without a
// certificate, and returns its client URL, https://localhost:PORT (the
// member's certificate names localhost, for etcdctl in the pod).
func startChartEtcd(t *testing.T, objs []*unstructured.Unstructured) string {
	t.Helper()
	sts := find(t, objs, "StatefulSet", "muster-etcd")
	flags := etcdFlags(t, sts)
	mounts := materializeMounts(t, objs, sts)
	if !strings.HasPrefix(flags["listen-client-urls"], "https://") || !strings.HasPrefix(flags["listen-peer-urls"], "https://") {
		t.Fatalf("the chart's etcd listens on %s (clients) and %s (peers): want https for both", flags["listen-client-urls"], flags["listen-peer-urls"])
	}
	tlsInfo := func(prefix string) transport.TLSInfo {
		return transport.TLSInfo{
			CertFile:       inMounts(mounts, flags[prefix+"cert-file"]),
			KeyFile:        inMounts(mounts, flags[prefix+"key-file"]),
			TrustedCAFile:  inMounts(mounts, flags[prefix+"trusted-ca-file"]),
			ClientCertAuth: flags[prefix+"client-cert-auth"] == "true",
		}
	}
	client, peer := tlsInfo(""), tlsInfo("peer-")
	if !client.ClientCertAuth || !peer.ClientCertAuth {
		t.Fatalf("the chart's etcd: client-cert-auth=%q, peer-client-cert-auth=%q: want both true (webhook.certs=helm)", flags["client-cert-auth"], flags["peer-client-cert-auth"])
	}
	_, cport, _ := net.SplitHostPort(testcoord.FreeAddr(t))
	_, pport, _ := net.SplitHostPort(testcoord.FreeAddr(t))
	cfg := embed.NewConfig()
	cfg.Name = "etcd-0"
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	listenC, advC := url.URL{Scheme: "https", Host: "127.0.0.1:" + cport}, url.URL{Scheme: "https", Host: "localhost:" + cport}
	listenP, advP := url.URL{Scheme: "https", Host: "127.0.0.1:" + pport}, url.URL{Scheme: "https", Host: "localhost:" + pport}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{listenC}, []url.URL{advC}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{listenP}, []url.URL{advP}
	cfg.InitialCluster = cfg.Name + "=" + advP.String()
	cfg.ClientTLSInfo, cfg.PeerTLSInfo = client, peer
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("etcd with the chart's TLS flags and Secret: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcd with the chart's TLS: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("etcd with the chart's TLS not ready after a minute")
	}
	// Without a client certificate, nothing: the handshake (or the first
	// read, with TLS 1.3) fails.
	ca, err := os.ReadFile(client.TrustedCAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", listenC.Host, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err == nil {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("the chart's etcd took a client without a certificate (%v): want client-cert-auth", err)
	}
	return advC.String()
}

// TestChartEtcdCertificates: with webhook.certs=helm the chart makes etcd
// a CA of its own, a member certificate that serves clients and peers and
// is a peer's client certificate (etcd's peers dial each other at the
// names in --initial-cluster, the coordinator at the endpoints in its
// ConfigMap), and a client certificate for the coordinator with no names
// (etcd checks the names of a client certificate that has some against
// the caller's address).
func TestChartEtcdCertificates(t *testing.T) {
	objs := render(t, nil)
	member := secretPair(t, find(t, objs, "Secret", "muster-etcd-tls"))
	client := secretPair(t, find(t, objs, "Secret", "muster-etcd-client-tls"))
	if !member.roots.Equal(client.roots) {
		t.Error("the members' and the coordinator's etcd Secrets carry different CAs")
	}
	var names []string
	for _, ep := range strings.Split(find(t, objs, "ConfigMap", "muster-etcd-endpoints").Object["data"].(map[string]any)["endpoints"].(string), ",") {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" {
			t.Fatalf("etcd endpoint %q: want https (%v)", ep, err)
		}
		names = append(names, u.Hostname())
	}
	for _, m := range strings.Split(etcdFlags(t, find(t, objs, "StatefulSet", "muster-etcd"))["initial-cluster"], ",") {
		_, peerURL, _ := strings.Cut(m, "=")
		u, err := url.Parse(peerURL)
		if err != nil || u.Scheme != "https" {
			t.Fatalf("etcd peer %q: want https (%v)", m, err)
		}
		names = append(names, u.Hostname())
	}
	for _, name := range append(names, "localhost") {
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := member.leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: member.roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("etcd's member certificate for %s (usage %v): %v", name, usage, err)
			}
		}
	}
	if _, err := client.leaf.Verify(x509.VerifyOptions{Roots: member.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the coordinator's etcd client certificate: %v", err)
	}
	if len(client.leaf.DNSNames)+len(client.leaf.IPAddresses) > 0 {
		t.Errorf("the coordinator's etcd client certificate names %v %v: etcd would refuse it from any other address", client.leaf.DNSNames, client.leaf.IPAddresses)
	}
}

type pair struct {
	leaf  *x509.Certificate
	roots *x509.CertPool
}

// secretPair reads a kubernetes.io/tls Secret with ca.crt: its key must
// match its certificate.
func secretPair(t *testing.T, s *unstructured.Unstructured) pair {
	t.Helper()
	data := map[string][]byte{}
	raw, _, _ := unstructured.NestedStringMap(s.Object, "data")
	for _, k := range []string{"ca.crt", "tls.crt", "tls.key"} {
		b, err := base64.StdEncoding.DecodeString(raw[k])
		if err != nil || len(b) == 0 {
			t.Fatalf("Secret %s: data[%s] is not base64 PEM: %v", s.GetName(), k, err)
		}
		data[k] = b
	}
	kp, err := tls.X509KeyPair(data["tls.crt"], data["tls.key"])
	if err != nil {
		t.Fatalf("Secret %s: %v", s.GetName(), err)
	}
	leaf, err := x509.ParseCertificate(kp.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(data["ca.crt"]) {
		t.Fatalf("Secret %s: ca.crt holds no PEM certificate", s.GetName())
	}
	return pair{leaf: leaf, roots: roots}
}
