package server

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/podapi/names"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// ReportStatus records a member's runtime state for its generation.
func (s *Server) ReportStatus(ctx context.Context, req *musterv1.ReportStatusRequest) (*musterv1.ReportStatusResponse, error) {
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return nil, invalid("report status: %v", err)
	}
	id := req.GetMemberId()
	if err := names.ValidateName("member_id", id, names.MaxMemberIDLen); err != nil {
		return nil, invalid("report status to group %q: %v", k.String(), err)
	}
	what := fmt.Sprintf("report status of %q in group %q", id, k.String())
	if err := auth.FromContext(ctx).ActAs(k.Namespace, k.Name, id); err != nil {
		return nil, err
	}
	var state rendezvous.RuntimeState
	switch req.GetState() {
	case musterv1.RuntimeState_RUNTIME_STATE_LAUNCHING:
		state = rendezvous.StateLaunching
	case musterv1.RuntimeState_RUNTIME_STATE_READY:
		state = rendezvous.StateReady
	case musterv1.RuntimeState_RUNTIME_STATE_EXITED:
		state = rendezvous.StateExited
	default:
		return nil, invalid("%s: state %v is not one of launching, ready, exited", what, req.GetState())
	}
	h, err := s.hubs.Acquire(ctx, k)
	if err != nil {
		return nil, internal(err)
	}
	defer h.Release()
	for attempt := 0; attempt < 20; attempt++ {
		var (
			rec     rendezvous.Member
			known   bool
			cur     int64
			hasSt   bool
			viewRev int64
		)
		h.Read(func(v *rendezvous.View) {
			viewRev = v.Rev
			if v.State != nil {
				hasSt, cur = true, v.State.Generation
			}
			rec, known = v.Members[id]
		})
		if !hasSt {
			return nil, status.Errorf(codes.NotFound, "%s: no such group; join it first", what)
		}
		if req.GetGeneration() != cur || (known && rec.Generation != cur) {
			return &musterv1.ReportStatusResponse{Stale: true, CurrentGeneration: cur}, nil
		}
		if !known {
			return nil, status.Errorf(codes.NotFound, "%s: not a member (its lease expired or it left); join again", what)
		}
		if rec.State == rendezvous.StateExited && state != rendezvous.StateExited {
			// A runtime that exited does not become ready again within its
			// generation: a late report lost a race with the exit report.
			return &musterv1.ReportStatusResponse{Stale: true, CurrentGeneration: cur}, nil
		}
		m := rec
		m.State, m.ExitCode, m.Reason = state, int(req.GetExitCode()), truncateReason(req.GetReason())
		ok, _, err := s.store.PutMember(ctx, k, m, clientv3.LeaseID(rec.Lease), rec.ModRev)
		if err != nil {
			return nil, internal(fmt.Errorf("%s: %w", what, err))
		}
		if ok {
			return &musterv1.ReportStatusResponse{CurrentGeneration: cur}, nil
		}
		if err := h.WaitRev(ctx, viewRev+1); err != nil {
			return nil, internal(err)
		}
	}
	return nil, status.Errorf(codes.Aborted, "%s: too much contention; retry", what)
}

// truncateReason keeps stored reasons small; the tail of stderr is the
// useful part.
func truncateReason(s string) string {
	const max = 2048
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}

// Leave removes a member for good.
func (s *Server) Leave(ctx context.Context, req *musterv1.LeaveRequest) (*musterv1.LeaveResponse, error) {
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return nil, invalid("leave: %v", err)
	}
	id := req.GetMemberId()
	if err := names.ValidateName("member_id", id, names.MaxMemberIDLen); err != nil {
		return nil, invalid("leave group %q: %v", k.String(), err)
	}
	if err := auth.FromContext(ctx).ActAs(k.Namespace, k.Name, id); err != nil {
		return nil, err
	}
	m, ok, err := s.store.GetMember(ctx, k, id)
	if err != nil {
		return nil, internal(err)
	}
	if ok {
		if err := s.store.DeleteMember(ctx, k, m); err != nil {
			return nil, internal(err)
		}
		s.log.Info("member left", "group", k.String(), "member", id)
	}
	return &musterv1.LeaveResponse{}, nil
}
