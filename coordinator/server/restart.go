package server

import (
	"context"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// maxRestartReason bounds an operator's reason: it is stored in the
// group's state and history.
const maxRestartReason = 256

// RestartGroup restarts a group in place for an operator: the current
// generation ends (its runtimes are stopped by their agents) and the
// next begins at once, with the same members and ranks.
func (s *Server) RestartGroup(ctx context.Context, req *musterv1.RestartGroupRequest) (*musterv1.Group, error) {
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return nil, invalid("restart group: %v", err)
	}
	reason := strings.TrimSpace(req.GetReason())
	if len(reason) > maxRestartReason || !utf8.ValidString(reason) || strings.ContainsAny(reason, "\x00\r\n") {
		return nil, invalid("restart group %q: reason must be one line of UTF-8 text of at most %d bytes (got %d bytes)", k.String(), maxRestartReason, len(reason))
	}
	id := auth.FromContext(ctx)
	if err := s.mayRestart(ctx, id, k); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		v, err := s.store.Load(ctx, k)
		if err != nil {
			return nil, internal(err)
		}
		if v.State == nil {
			return nil, status.Errorf(codes.NotFound, "restart group %q: it does not exist", k.String())
		}
		if v.State.Phase.Terminal() {
			return nil, status.Errorf(codes.FailedPrecondition, "restart group %q: it is %s; a finished group starts afresh when its pods are made again (delete them)", k.String(), strings.ToLower(string(v.State.Phase)))
		}
		d := rendezvous.OperatorRestart(v.State, time.Now(), id.Name, reason)
		ok, err := s.store.SwapState(ctx, k, v.StateRev, d.Next)
		if err != nil {
			return nil, internal(err)
		}
		if ok {
			s.log.Info(d.Reason, "group", k.String(), "generation", d.Next.Generation, "by", id.Name)
			v.State = &d.Next
			return toProto(v), nil
		}
		if attempt == 10 {
			return nil, status.Errorf(codes.Aborted, "restart group %q: its state changed under every one of %d tries; try again", k.String(), attempt+1)
		}
	}
}

// mayRestart checks that the caller may restart group k: an operator, or a
// Kubernetes user RBAC allows; never a member, which reports failures
// instead.
func (s *Server) mayRestart(ctx context.Context, id *auth.Identity, k podapi.Key) error {
	switch {
	case id.Unrestricted():
		return nil
	case id.User != nil && s.opts.Access != nil:
		return s.opts.Access.May(ctx, id.User, auth.Attributes{Verb: "create", Namespace: k.Namespace, Name: k.Name, Subresource: "restart"})
	}
	return status.Errorf(codes.PermissionDenied, "restart group %q: %s may restart no group (operators may: RBAC verb create on %s/restart of API group %s, or an operator certificate): %v",
		k.String(), id.Name, auth.Resource, auth.ResourceGroup, auth.ErrNotAllowed)
}

// generationProto is one generation's record.
func generationProto(g rendezvous.Generation) *musterv1.GenerationRecord {
	return &musterv1.GenerationRecord{Generation: g.Generation, StartedMs: g.StartedMs, JoinedMs: g.JoinedMs, ReleasedMs: g.ReleasedMs,
		ReadyMs: g.ReadyMs, EndedMs: g.EndedMs, EndReason: g.Reason, EndMember: g.Member}
}
