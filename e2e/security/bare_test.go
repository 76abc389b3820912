// Package security runs the attacks of issue #13 against a real
// coordinator and a real group of agents, as three outsiders: a caller
// with no credentials, a member of another namespace's group, and a
// member of another group of the same namespace. Each attack must be
// refused with Unauthenticated or PermissionDenied (or, for oversized
// input, ResourceExhausted) and a message that says why; afterwards the
// victim group is still at its generation, Ready and answering, and
// nothing reached the attacker's listener.
package security

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/muster-dev/muster/e2e/e2etest"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

const root = "../.."

// proc is a started binary with its combined output.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(bin), e2etest.Tail(p.output(), 40))
		}
	})
	return p
}

func freePort(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// certs makes the CA, the coordinator's certificate and one member
// certificate per name (namespace/group/member@address) with the
// coordinator's own "certs" command, as a bare-host user does.
func certs(t *testing.T, coord, dir string, members ...string) {
	t.Helper()
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(coord, append([]string{"certs"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("coordinator certs %v: %v\n%s", args, err, out)
		}
	}
	run("ca", "--dir", dir)
	run("server", "--dir", dir, "--hosts", "127.0.0.1")
	run("operator", "--dir", dir)
	for _, m := range members {
		ref, addr, _ := strings.Cut(m, "@")
		p := strings.Split(ref, "/")
		run("member", "--dir", dir, "--namespace", p[0], "--group", p[1], "--member", p[2], "--hosts", addr)
	}
}

// dial connects to the coordinator verifying it with the CA, as the
// holder of cert (a name under dir without .crt), or with no client
// certificate when cert is "".
func dial(t *testing.T, addr, dir, cert string) musterv1.RendezvousClient {
	t.Helper()
	pool := x509.NewCertPool()
	b, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil || !pool.AppendCertsFromPEM(b) {
		t.Fatalf("read ca.crt: %v", err)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(filepath.Join(dir, cert+".crt"), filepath.Join(dir, cert+".key"))
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return musterv1.NewRendezvousClient(conn)
}

// waitReady waits until the group is Ready at generation 0 (as the
// operator sees it) and its endpoint answers 200.
func waitReady(t *testing.T, op musterv1.RendezvousClient, ref *musterv1.GroupRef, endpoint string, agents []*proc) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		g, err := op.GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: ref})
		if err == nil && g.GetReady() {
			resp, herr := http.Get(endpoint)
			if herr == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
		}
		for i, a := range agents {
			select {
			case <-a.done:
				t.Fatalf("agent %d exited:\n%s", i, a.output())
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s not Ready and answering within 90s (last %v, %v)", ref.GetName(), g, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestOutsidersCannotTakeOverABareHostGroup(t *testing.T) {
	bins := e2etest.MusterBins(t, root)
	coordBin, agentBin := filepath.Join(bins, "coordinator"), filepath.Join(bins, "agent")
	dir := t.TempDir()
	// The victim: group prod/model with three members on 127.0.0.2-4.
	// The outsiders: a member of another namespace's group, and one of
	// another group of the same namespace.
	certs(t, coordBin, dir,
		"prod/model/host-0@127.0.0.2", "prod/model/host-1@127.0.0.3", "prod/model/host-2@127.0.0.4",
		"other/model/host-1@127.0.0.99", "prod/batch/host-1@127.0.0.99")

	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(freePort(t, "127.0.0.1")))
	coord := start(t, coordBin, "--listen", addr, "--data-dir", t.TempDir(),
		"--etcd-listen-client", fmt.Sprintf("127.0.0.1:%d", freePort(t, "127.0.0.1")),
		"--etcd-listen-peer", fmt.Sprintf("127.0.0.1:%d", freePort(t, "127.0.0.1")),
		"--tls-cert", filepath.Join(dir, "server.crt"), "--tls-key", filepath.Join(dir, "server.key"),
		"--client-ca", filepath.Join(dir, "ca.crt"))
	op := dial(t, addr, dir, "operator")

	// The attacker listens where it would like the group's traffic to go.
	reached := listenTrap(t, "127.0.0.99")

	const runtimePort = 18080
	endpointPort := freePort(t, "127.0.0.2")
	var agents []*proc
	for i := 0; i < 3; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i+2)
		name := fmt.Sprintf("member-prod-model-host-%d", i)
		agents = append(agents, start(t, agentBin, "run", "--coordinator", addr,
			"--namespace", "prod", "--group", "model", "--size", "3", "--member-id", fmt.Sprintf("host-%d", i),
			"--address", ip, "--ordinal", fmt.Sprint(i), "--port", fmt.Sprint(runtimePort), "--endpoint-port", fmt.Sprint(endpointPort),
			"--ca", filepath.Join(dir, "ca.crt"), "--cert", filepath.Join(dir, name+".crt"), "--key", filepath.Join(dir, name+".key"),
			"--", "python3", "-m", "http.server", fmt.Sprint(runtimePort), "--bind", ip))
	}
	_ = coord
	victim := &musterv1.GroupRef{Namespace: "prod", Name: "model"}
	endpoint := fmt.Sprintf("http://127.0.0.3:%d/", endpointPort) // rank 1 proxies to the leader
	waitReady(t, op, victim, endpoint, agents)

	// A caller with no certificate, over TLS, and one in plaintext.
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	pool.AppendCertsFromPEM(caPEM)
	plainConn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plainConn.Close()
	callers := []caller{
		{"no credentials", dial(t, addr, dir, ""), codes.Unauthenticated},
		{"member of another namespace", dial(t, addr, dir, "member-other-model-host-1"), codes.PermissionDenied},
		{"member of another group", dial(t, addr, dir, "member-prod-batch-host-1"), codes.PermissionDenied},
	}
	runAttacks(t, callers, victim, []string{"host-0", "host-1", "host-2"}, "127.0.0.99", plainConn)

	victimUntouched(t, op, victim, "127.0.0.99")
	resp, err := http.Get(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("endpoint answered %d after the attacks", resp.StatusCode)
	}
	if n := reached.Load(); n > 0 {
		t.Fatalf("the attacker's listener got %d connections", n)
	}
}
