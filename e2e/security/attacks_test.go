package security

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// caller is an outsider with its own connection and the refusal it
// should meet: Unauthenticated without credentials, PermissionDenied with
// another group's.
type caller struct {
	name string
	c    musterv1.RendezvousClient
	want codes.Code
}

// errNotLeaked is an attack answered without anything of the victim's.
var errNotLeaked = errors.New("answered without the victim's data")

// runAttacks makes every attack of issue #13 on group victim (whose
// members are ids) as each caller, and checks each is refused with the
// caller's code (or, where the input is refused before anyone is asked who
// they are, that attack's own code) and a message that says why. evil is
// the address the attacker wants the group's traffic at; plain is a
// plaintext connection to the coordinator's TLS port.
func runAttacks(t *testing.T, callers []caller, victim *musterv1.GroupRef, ids []string, evil string, plain *grpc.ClientConn) {
	t.Helper()
	ord0 := int64(0)
	big := strings.Repeat("x", 1<<20)
	size := int32(len(ids))
	attacks := []struct {
		name string
		do   func(c musterv1.RendezvousClient) error
		also codes.Code
	}{
		{"rejoin an existing member at the attacker's address", func(c musterv1.RendezvousClient) error {
			_, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: victim, MemberId: ids[0], Address: evil, Size: size, Generation: 0})
			return err
		}, codes.OK},
		{"report another member's exit", func(c musterv1.RendezvousClient) error {
			_, err := c.ReportStatus(context.Background(), &musterv1.ReportStatusRequest{Group: victim, MemberId: ids[1], State: musterv1.RuntimeState_RUNTIME_STATE_EXITED, ExitCode: 137, Reason: "made up"})
			return err
		}, codes.OK},
		{"leave as another member", func(c musterv1.RendezvousClient) error {
			for i := 0; i < 3; i++ {
				if _, err := c.Leave(context.Background(), &musterv1.LeaveRequest{Group: victim, MemberId: ids[len(ids)-1]}); err != nil {
					return err
				}
			}
			return nil
		}, codes.OK},
		{"join generation -1 with a stolen id", func(c musterv1.RendezvousClient) error {
			_, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: victim, MemberId: ids[1], Address: evil, Size: size, Generation: -1})
			return err
		}, codes.OK},
		{"join a new id with ordinal 0", func(c musterv1.RendezvousClient) error {
			_, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: victim, MemberId: "intruder", Address: evil, Ordinal: &ord0, Size: size})
			return err
		}, codes.OK},
		{"an address that is a shell command", func(c musterv1.RendezvousClient) error {
			_, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: victim, MemberId: ids[1], Address: "$(id>x)", Size: size})
			return err
		}, codes.InvalidArgument},
		{"list every namespace's groups", func(c musterv1.RendezvousClient) error {
			_, err := c.ListGroups(context.Background(), &musterv1.ListGroupsRequest{})
			return err
		}, codes.OK},
		{"list the victim's namespace", func(c musterv1.RendezvousClient) error {
			// A member of another group of the namespace may list it and
			// see its own group: refused, or answered without the victim.
			resp, err := c.ListGroups(context.Background(), &musterv1.ListGroupsRequest{Namespace: victim.GetNamespace()})
			if err != nil {
				return err
			}
			for _, g := range resp.GetGroups() {
				if g.GetRef().GetName() == victim.GetName() {
					return fmt.Errorf("the listing shows the victim group: %v", g)
				}
			}
			return errNotLeaked
		}, codes.OK},
		{"read the victim group", func(c musterv1.RendezvousClient) error {
			_, err := c.GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: victim})
			return err
		}, codes.OK},
		{"restart the victim group", func(c musterv1.RendezvousClient) error {
			_, err := c.RestartGroup(context.Background(), &musterv1.RestartGroupRequest{Group: victim, Reason: "taken over"})
			return err
		}, codes.OK},
		{"watch as a member", func(c musterv1.RendezvousClient) error {
			s, err := c.Watch(context.Background(), &musterv1.WatchRequest{Group: victim, MemberId: ids[0]})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.OK},
		{"report a peer lost (port scan)", func(c musterv1.RendezvousClient) error {
			_, err := c.ReportPeerLost(context.Background(), &musterv1.ReportPeerLostRequest{Group: victim, MemberId: ids[1], LostMemberId: ids[0]})
			return err
		}, codes.OK},
		{"1 MiB runtime string", func(c musterv1.RendezvousClient) error {
			_, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: &musterv1.GroupRef{Namespace: victim.GetNamespace(), Name: "huge"}, MemberId: ids[1], Address: evil, Size: size, Runtime: big})
			return err
		}, codes.ResourceExhausted},
		{"plaintext call to the TLS port", func(musterv1.RendezvousClient) error {
			_, err := musterv1.NewRendezvousClient(plain).GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: victim})
			return err
		}, codes.Unavailable},
	}
	for _, cl := range callers {
		for _, a := range attacks {
			t.Run(cl.name+"/"+a.name, func(t *testing.T) {
				err := a.do(cl.c)
				if errors.Is(err, errNotLeaked) {
					t.Log("answered without the victim's data")
					return
				}
				st := status.Convert(err)
				if err == nil || (st.Code() != cl.want && st.Code() != a.also) {
					t.Fatalf("got %v (%v), want %v", st.Code(), err, cl.want)
				}
				if st.Code() == cl.want && len(st.Message()) < 20 {
					t.Errorf("message %q does not say why", st.Message())
				}
				t.Logf("%s: %s", st.Code(), st.Message())
			})
		}
	}
}

// listenTrap listens where the attacker wants the group's traffic and
// counts the connections that arrive.
func listenTrap(t *testing.T, host string) *atomic.Int64 {
	t.Helper()
	var reached atomic.Int64
	trap, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { trap.Close() })
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			reached.Add(1)
			c.Close()
		}
	}()
	return &reached
}

// victimUntouched checks, as op, that the victim is still at generation
// 0, Ready, never restarted, and that no member has the attacker's address.
func victimUntouched(t *testing.T, op musterv1.RendezvousClient, victim *musterv1.GroupRef, evil string) {
	t.Helper()
	g, err := op.GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: victim})
	if err != nil {
		t.Fatal(err)
	}
	if g.GetGeneration() != 0 || !g.GetReady() || g.GetRestarts() != 0 {
		t.Fatalf("victim after the attacks: generation %d ready %v restarts %d, first error %q; want generation 0, Ready, no restart",
			g.GetGeneration(), g.GetReady(), g.GetRestarts(), g.GetFirstError())
	}
	for _, m := range g.GetMembers() {
		if m.GetAddress() == evil {
			t.Errorf("member %s has the attacker's address %s", m.GetId(), m.GetAddress())
		}
	}
}
