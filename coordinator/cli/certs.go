package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/pki"
	"github.com/muster-dev/muster/podapi/names"
)

const certsUsage = `Usage: coordinator certs KIND [flags]

Makes the certificates a bare-host coordinator and its agents authenticate
with (Kubernetes installs use pods' service-account tokens instead):

  coordinator certs ca       --dir D                      CA: D/ca.crt, D/ca.key
  coordinator certs server   --dir D --hosts 10.0.0.1,coord.example
                                                          the coordinator's TLS: D/server.crt, D/server.key
  coordinator certs member   --dir D --group G --member M --hosts 10.0.0.2 [--namespace N]
                                                          one member: D/member-N-G-M.crt/.key
  coordinator certs operator --dir D                      an operator (reads and acts on every group)

A member certificate carries the URI muster://member/N/G/M: its holder may
act only as member M of group N/G, and announce only the certificate's
--hosts as its address. Serve with
  coordinator --tls-cert D/server.crt --tls-key D/server.key --client-ca D/ca.crt
and run each agent with
  agent run --ca D/ca.crt --cert D/member-....crt --key D/member-....key ...

Flags:
`

// certsMain runs "coordinator certs".
func certsMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, certsUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			return 0
		}
		return 2
	}
	kind := args[0]
	switch kind {
	case "ca", "server", "member", "operator":
	default:
		// Before anything is made or read: a typo is not a missing CA.
		fmt.Fprintf(stderr, "coordinator certs: unknown kind %q: want ca, server, member or operator\n", kind)
		return 2
	}
	fs := flag.NewFlagSet("coordinator certs "+kind, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, certsUsage); fs.PrintDefaults() }
	dir := fs.String("dir", "muster-certs", "directory of the CA and the certificates")
	hosts := fs.String("hosts", "", "comma-separated IP addresses and DNS names the certificate names (server: where agents dial; member: the addresses it may announce)")
	ns := fs.String("namespace", "default", "member: the group's namespace")
	grp := fs.String("group", "", "member: the group")
	member := fs.String("member", "", "member: the member id (agent --member-id)")
	validity := fs.Duration("validity", 365*24*time.Hour, "how long the certificate is valid")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "coordinator certs %s: %s\n", kind, fmt.Sprintf(format, a...))
		return 1
	}
	if *validity <= 0 {
		return fail("--validity %s: want a positive duration (a certificate valid for no time is expired when made)", *validity)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return fail("--dir: %v", err)
	}
	caCrt, caKey := filepath.Join(*dir, "ca.crt"), filepath.Join(*dir, "ca.key")
	if kind == "ca" {
		if _, err := os.Stat(caKey); err == nil {
			return fail("%s exists: a new CA would orphan every certificate it signed; remove it first to start over", caKey)
		}
		ca, keyPEM, err := pki.NewCA("muster-ca", *validity)
		if err != nil {
			return fail("%v", err)
		}
		if err := pki.WriteFiles(caCrt, ca.PEM, caKey, keyPEM); err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(stdout, "wrote %s and %s\n", caCrt, caKey)
		return 0
	}
	ca, err := pki.LoadCA(caCrt, caKey)
	if err != nil {
		return fail("load the CA (make it with coordinator certs ca --dir %s): %v", *dir, err)
	}
	var hostList []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			if err := names.ValidateAddress(h); err != nil {
				return fail("--hosts: %v", err)
			}
			hostList = append(hostList, h)
		}
	}
	var leaf pki.Leaf
	var name string
	switch kind {
	case "server":
		if len(hostList) == 0 {
			return fail("--hosts is empty: name the addresses agents dial the coordinator at")
		}
		leaf, name = pki.Leaf{CommonName: "muster-coordinator", Hosts: hostList, Server: true}, "server"
	case "member":
		for _, f := range []struct{ flag, v string }{{"--namespace", *ns}, {"--group", *grp}, {"--member", *member}} {
			max := names.MaxGroupNameLen
			if f.flag == "--member" {
				max = names.MaxMemberIDLen
			}
			if err := names.ValidateName(f.flag, f.v, max); err != nil {
				return fail("%v", err)
			}
		}
		if len(hostList) == 0 {
			return fail("--hosts is empty: name the address(es) the member announces (agent --address)")
		}
		leaf = pki.Leaf{CommonName: *member, Hosts: hostList, URIs: []string{auth.MemberURI(*ns, *grp, *member)}, Client: true}
		name = fmt.Sprintf("member-%s-%s-%s", *ns, *grp, *member)
	case "operator":
		leaf, name = pki.Leaf{CommonName: "muster-operator", URIs: []string{auth.OperatorURI}, Client: true}, "operator"
	}
	leaf.Validity = *validity
	certPEM, keyPEM, err := ca.Issue(leaf)
	if err != nil {
		return fail("%v", err)
	}
	crt, key := filepath.Join(*dir, name+".crt"), filepath.Join(*dir, name+".key")
	if err := pki.WriteFiles(crt, certPEM, key, keyPEM); err != nil {
		return fail("%v", err)
	}
	fmt.Fprintf(stdout, "wrote %s and %s\n", crt, key)
	return 0
}
