package server

import (
	"net"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/podapi/names"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// FuzzCheckJoin feeds arbitrary join requests, from an anonymous caller
// and from a member, to the validation every Join passes first. Whatever
// the input: no panic; a refusal is InvalidArgument or PermissionDenied
// with a bounded message (an attacker's 1 MiB string is not echoed); an
// accepted request names valid names, an address that is an IP or an RFC
// 1123 name (never shell syntax), a size in range and a known runtime; a
// member is accepted only as itself, at its own address.
func FuzzCheckJoin(f *testing.F) {
	f.Add("prod", "model", "host-0", "127.0.0.2", int32(3), int64(0), true, int32(0), int32(0), "", "", "vllm")
	f.Add("prod", "model", "host-0", "$(id>x)", int32(3), int64(0), false, int32(29500), int32(7946), "topology", "rack-1", "env")
	f.Add("", "model", "host-1", "127.0.0.99", int32(-1), int64(-1), true, int32(70000), int32(-5), "random", "x", "")
	f.Add("prod", "model", "host-0", "a.b-c.example", int32(65536), int64(7), true, int32(1), int32(1), "ordinal", "", "torchrun")
	f.Add("Prod", "mo del", "../x", "::1", int32(1), int64(0), false, int32(0), int32(0), "", "", "nope")
	s := New(nil, nil, Options{Runtimes: []string{"env", "torchrun", "vllm"}, MaxGroupSize: 1024}, nil)
	member := &auth.Identity{Name: "test member", Namespace: "prod", Group: "model", Member: "host-0", Addresses: []string{"127.0.0.2"}}
	f.Fuzz(func(t *testing.T, ns, name, id, addr string, size int32, ord int64, hasOrd bool, mport, gport int32, rankOrder, domain, runtime string) {
		req := &musterv1.JoinRequest{Group: &musterv1.GroupRef{Namespace: ns, Name: name}, MemberId: id, Address: addr, Size: size,
			MasterPort: mport, GossipPort: gport, RankOrder: rankOrder, TopologyDomain: domain, Runtime: runtime}
		if hasOrd {
			req.Ordinal = &ord
		}
		for _, caller := range []*auth.Identity{{Name: "anonymous", Anonymous: true}, member} {
			k, rt, err := s.checkJoin(caller, req)
			if err != nil {
				st, ok := status.FromError(err)
				if !ok || (st.Code() != codes.InvalidArgument && st.Code() != codes.PermissionDenied && st.Code() != codes.ResourceExhausted) {
					t.Fatalf("refusal %v is not InvalidArgument, PermissionDenied or ResourceExhausted", err)
				}
				if len(st.Message()) > 2048 {
					t.Fatalf("refusal message is %d bytes: untrusted input echoed", len(st.Message()))
				}
				continue
			}
			for _, n := range []struct{ field, v string }{{"namespace", k.Namespace}, {"name", k.Name}, {"member", id}} {
				if err := names.ValidateName(n.field, n.v, names.MaxMemberIDLen); err != nil {
					t.Fatalf("accepted an invalid %s: %v", n.field, err)
				}
			}
			if net.ParseIP(addr) == nil {
				for _, r := range addr {
					if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
						t.Fatalf("accepted address %q with %q", addr, r)
					}
				}
			}
			if size < 1 || size > 1024 || !slices.Contains(s.opts.Runtimes, rt) || mport < 0 || mport > 65535 || gport < 0 || gport > 65535 || (hasOrd && ord < 0) {
				t.Fatalf("accepted size %d runtime %q ports %d/%d ordinal %d", size, rt, mport, gport, ord)
			}
			if caller == member && (k.Namespace != "prod" || k.Name != "model" || id != "host-0" || addr != "127.0.0.2") {
				t.Fatalf("member host-0 of prod/model at 127.0.0.2 accepted as %q of %s at %q", id, k, addr)
			}
		}
	})
}
