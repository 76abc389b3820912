package cli

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/muster-dev/muster/coordinator/auth"
)

// certs runs "coordinator certs args..." and returns its exit code and
// output.
func certs(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = certsMain(args, &o, &e)
	return code, o.String(), e.String()
}

// mustCerts runs certs and fails unless it exits 0.
func mustCerts(t *testing.T, args ...string) {
	t.Helper()
	if code, out, errOut := certs(t, args...); code != 0 {
		t.Fatalf("coordinator certs %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s is not PEM", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c
}

func caPool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	p.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	return p
}

func verify(t *testing.T, dir, file string, usage x509.ExtKeyUsage) error {
	t.Helper()
	_, err := readCert(t, file).Verify(x509.VerifyOptions{Roots: caPool(t, dir), KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestCertsMakesABareHostPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs") // made by certs ca
	mustCerts(t, "ca", "--dir", dir)
	mustCerts(t, "server", "--dir", dir, "--hosts", "10.0.0.1, coord.example")
	mustCerts(t, "member", "--dir", dir, "--namespace", "team", "--group", "llama", "--member", "host-0", "--hosts", "10.0.0.2,host-0.example")
	mustCerts(t, "operator", "--dir", dir)

	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("--dir %s: %v, mode %v; want a 0700 directory", dir, err, st.Mode())
	}
	for _, key := range []string{"ca.key", "server.key", "member-team-llama-host-0.key", "operator.key"} {
		st, err := os.Stat(filepath.Join(dir, key))
		if err != nil {
			t.Errorf("%s: %v", key, err)
			continue
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", key, st.Mode().Perm())
		}
	}
	for _, pair := range [][2]string{{"server.crt", "server.key"}, {"member-team-llama-host-0.crt", "member-team-llama-host-0.key"}, {"operator.crt", "operator.key"}} {
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, pair[0]), filepath.Join(dir, pair[1])); err != nil {
			t.Errorf("%s and %s are not a key pair: %v", pair[0], pair[1], err)
		}
	}

	t.Run("member", func(t *testing.T) {
		file := filepath.Join(dir, "member-team-llama-host-0.crt")
		if err := verify(t, dir, file, x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("member certificate does not verify against ca.crt for client auth: %v", err)
		}
		if err := verify(t, dir, file, x509.ExtKeyUsageServerAuth); err == nil {
			t.Error("member certificate verifies for server auth: a member could pose as the coordinator")
		}
		c := readCert(t, file)
		var uris []string
		for _, u := range c.URIs {
			uris = append(uris, u.String())
		}
		if !slices.Equal(uris, []string{"muster://member/team/llama/host-0"}) {
			t.Errorf("URI SANs %q, want [muster://member/team/llama/host-0]", uris)
		}
		if len(c.IPAddresses) != 1 || c.IPAddresses[0].String() != "10.0.0.2" || !slices.Equal(c.DNSNames, []string{"host-0.example"}) {
			t.Errorf("IP SANs %v, DNS SANs %q; want 10.0.0.2 and host-0.example", c.IPAddresses, c.DNSNames)
		}
		// What the coordinator makes of it.
		id, err := auth.CertIdentity(c)
		if err != nil {
			t.Fatalf("CertIdentity: %v", err)
		}
		if id.Namespace != "team" || id.Group != "llama" || id.Member != "host-0" || !slices.Equal(id.Addresses, []string{"10.0.0.2", "host-0.example"}) {
			t.Errorf("identity %+v, want member host-0 of team/llama announcing 10.0.0.2 and host-0.example", id)
		}
	})
	t.Run("server", func(t *testing.T) {
		file := filepath.Join(dir, "server.crt")
		if err := verify(t, dir, file, x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("server certificate does not verify for server auth: %v", err)
		}
		c := readCert(t, file)
		for _, h := range []string{"10.0.0.1", "coord.example"} {
			if err := c.VerifyHostname(h); err != nil {
				t.Errorf("server certificate does not name %s: %v", h, err)
			}
		}
		if len(c.URIs) != 0 {
			t.Errorf("server certificate carries URIs %v: it would be a muster identity", c.URIs)
		}
	})
	t.Run("operator", func(t *testing.T) {
		file := filepath.Join(dir, "operator.crt")
		if err := verify(t, dir, file, x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("operator certificate does not verify for client auth: %v", err)
		}
		id, err := auth.CertIdentity(readCert(t, file))
		if err != nil || !id.Operator {
			t.Errorf("operator certificate's identity = %+v, %v; want an operator", id, err)
		}
	})
	t.Run("ca twice refuses to overwrite", func(t *testing.T) {
		before, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		code, _, stderr := certs(t, "ca", "--dir", dir)
		if code == 0 || !strings.Contains(stderr, "ca.key exists") {
			t.Errorf("second certs ca: exit %d, stderr %q; want a failure saying ca.key exists", code, stderr)
		}
		after, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
		if err != nil || !bytes.Equal(before, after) {
			t.Errorf("ca.crt changed by a refused certs ca (%v)", err)
		}
		if err := verify(t, dir, filepath.Join(dir, "member-team-llama-host-0.crt"), x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("the member certificate no longer verifies: %v", err)
		}
	})
}

func TestCertsRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	mustCerts(t, "ca", "--dir", dir)
	member := func(extra ...string) []string {
		return append([]string{"member", "--dir", dir, "--group", "g", "--member", "m", "--hosts", "10.0.0.2"}, extra...)
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string // in stderr
	}{
		{name: "shell in --hosts", args: member("--hosts", "$(id)"), wantCode: 1, want: []string{"--hosts", "$(id)"}},
		{name: "space in --hosts", args: member("--hosts", "10.0.0.2,a b"), wantCode: 1, want: []string{"--hosts"}},
		{name: "empty --hosts", args: member("--hosts", " , "), wantCode: 1, want: []string{"--hosts is empty"}},
		{name: "server without --hosts", args: []string{"server", "--dir", dir}, wantCode: 1, want: []string{"--hosts is empty"}},
		{name: "member without --group", args: member("--group", ""), wantCode: 1, want: []string{"--group is empty"}},
		{name: "bad --member", args: member("--member", "../m"), wantCode: 1, want: []string{"--member", "not a valid name"}},
		{name: "bad --namespace", args: member("--namespace", "a/b"), wantCode: 1, want: []string{"--namespace", "not a valid name"}},
		{name: "zero --validity", args: member("--validity", "0s"), wantCode: 1, want: []string{"--validity 0s"}},
		{name: "negative --validity", args: []string{"operator", "--dir", dir, "--validity", "-1h"}, wantCode: 1, want: []string{"--validity -1h0m0s"}},
		{name: "unknown kind", args: []string{"bogus", "--dir", dir}, wantCode: 2, want: []string{`unknown kind "bogus"`, "ca, server, member or operator"}},
		{name: "unknown flag", args: []string{"member", "--dir", dir, "--nope"}, wantCode: 2, want: []string{"-nope"}},
		{name: "no kind", args: nil, wantCode: 2, want: []string{"Usage: coordinator certs"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := certs(t, tc.args...)
			if code != tc.wantCode {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.wantCode, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not name %q", stderr, w)
				}
			}
			if stdout != "" {
				t.Errorf("a refused command wrote %q to stdout", stdout)
			}
		})
	}
	// Nothing but the CA was written.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"ca.crt", "ca.key"}) {
		t.Errorf("--dir holds %q after refused commands, want only ca.crt and ca.key", names)
	}
}

func TestCertsNeedsTheCAFirst(t *testing.T) {
	for _, kind := range []string{"server", "member", "operator"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			code, _, stderr := certs(t, kind, "--dir", dir, "--group", "g", "--member", "m", "--hosts", "10.0.0.2")
			if code != 1 || !strings.Contains(stderr, "coordinator certs ca --dir "+dir) {
				t.Errorf("exit %d, stderr %q; want 1 and the command that makes the CA", code, stderr)
			}
		})
	}
}

func TestCertsUnknownKindTouchesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	code, _, stderr := certs(t, "sever", "--dir", dir, "--hosts", "10.0.0.1")
	if code != 2 || !strings.Contains(stderr, `unknown kind "sever"`) {
		t.Errorf("exit %d, stderr %q; want 2 naming the unknown kind (not the missing CA)", code, stderr)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("--dir %s was made for an unknown kind (stat: %v)", dir, err)
	}
}

func TestCertsHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"member", "--help"}} {
		code, _, stderr := certs(t, args...)
		if code != 0 || !strings.Contains(stderr, "Usage: coordinator certs") {
			t.Errorf("certs %v: exit %d, stderr %q; want 0 and the usage", args, code, stderr)
		}
	}
}
