package server

import (
	"context"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/podapi/names"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// GetGroup returns one group's state.
func (s *Server) GetGroup(ctx context.Context, req *musterv1.GetGroupRequest) (*musterv1.Group, error) {
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return nil, invalid("get group: %v", err)
	}
	if err := s.mayRead(ctx, k); err != nil {
		return nil, err
	}
	v, err := s.store.Load(ctx, k)
	if err != nil {
		return nil, internal(err)
	}
	if v.State == nil {
		return nil, status.Errorf(codes.NotFound, "group %q does not exist", k.String())
	}
	return toProto(v), nil
}

// Page sizes of ListGroups: a page is a bounded amount of memory however
// many groups there are.
const (
	defaultPageSize = 100
	maxPageSize     = 500
)

// ListGroups returns a page of the groups of a namespace, or of all
// namespaces, that the caller may read: a member sees its own group only.
func (s *Server) ListGroups(ctx context.Context, req *musterv1.ListGroupsRequest) (*musterv1.ListGroupsResponse, error) {
	ns := req.GetNamespace()
	if ns != "" {
		if err := names.ValidateName("namespace", ns, names.MaxGroupNameLen); err != nil {
			return nil, invalid("list groups: %v", err)
		}
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalid("list groups: page_size %d is negative", size)
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	after := req.GetPageToken()
	if after != "" {
		ans, aname, ok := strings.Cut(after, "/")
		if !ok || names.ValidateName("page_token", ans, names.MaxGroupNameLen) != nil || names.ValidateName("page_token", aname, names.MaxGroupNameLen) != nil || (ns != "" && ans != ns) {
			return nil, invalid("list groups: page_token %q is not one this coordinator gave out; pass the previous response's next_page_token", truncateName(after))
		}
	}
	id := auth.FromContext(ctx)
	switch {
	case id.Unrestricted():
	case id.Member != "":
		if ns != id.Namespace {
			what := "all namespaces"
			if ns != "" {
				what = "namespace " + strconv.Quote(ns)
			}
			return nil, status.Errorf(codes.PermissionDenied, "list groups of %s: %s may read only its own group, %s: %v", what, id.Name, id.GroupName(), auth.ErrNotAllowed)
		}
		out := &musterv1.ListGroupsResponse{}
		if id.Group == "" || after != "" {
			return out, nil
		}
		v, err := s.store.Load(ctx, podapi.Key{Namespace: id.Namespace, Name: id.Group})
		if err != nil {
			return nil, internal(err)
		}
		if v.State != nil {
			out.Groups = append(out.Groups, toProto(v))
		}
		return out, nil
	case id.User != nil && s.opts.Access != nil:
		if err := s.opts.Access.May(ctx, id.User, auth.Attributes{Verb: "list", Namespace: ns}); err != nil {
			return nil, err
		}
	default:
		return nil, status.Errorf(codes.PermissionDenied, "list groups: %s may read no groups: %v", id.Name, auth.ErrNotAllowed)
	}
	keys, next, err := s.store.ListKeysPage(ctx, ns, after, size)
	if err != nil {
		return nil, internal(err)
	}
	out := &musterv1.ListGroupsResponse{NextPageToken: next}
	for _, k := range keys {
		v, err := s.store.Load(ctx, k)
		if err != nil {
			return nil, internal(err)
		}
		if v.State != nil {
			out.Groups = append(out.Groups, toProto(v))
		}
	}
	return out, nil
}

// mayRead checks that the caller may read group k: its own group for a
// member, what RBAC allows for a Kubernetes user.
func (s *Server) mayRead(ctx context.Context, k podapi.Key) error {
	id := auth.FromContext(ctx)
	switch {
	case id.Unrestricted():
		return nil
	case id.Member != "":
		if id.Namespace == k.Namespace && id.Group == k.Name {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "read group %q: %s may read only its own group, %s: %v", k.String(), id.Name, id.GroupName(), auth.ErrNotAllowed)
	case id.User != nil && s.opts.Access != nil:
		return s.opts.Access.May(ctx, id.User, auth.Attributes{Verb: "get", Namespace: k.Namespace, Name: k.Name})
	}
	return status.Errorf(codes.PermissionDenied, "read group %q: %s may read no groups: %v", k.String(), id.Name, auth.ErrNotAllowed)
}

func toProto(v *rendezvous.View) *musterv1.Group {
	st := v.State
	g := &musterv1.Group{
		Ref:  &musterv1.GroupRef{Namespace: v.Key.Namespace, Name: v.Key.Name},
		Size: int32(st.Size), Runtime: st.Runtime, Generation: st.Generation,
		Phase: phaseProto(st.Phase), Ready: v.Ready(), Restarts: int32(st.Restarts),
		LeaderAddress: st.LeaderAddress, MasterPort: int32(st.MasterPort),
		FirstError: st.FirstError, FailedMember: st.FailedMember,
		RankOrder: rankOrderName(st.RankOrder), CreatedMs: st.CreatedMs,
		Current: generationProto(rendezvous.Generation{Generation: st.Generation, StartedMs: st.StartedMs, JoinedMs: st.JoinedMs,
			ReleasedMs: st.ReleasedMs, ReadyMs: st.ReadyMs}),
	}
	for _, h := range st.History {
		g.History = append(g.History, generationProto(h))
	}
	if st.Phase == rendezvous.Failed && len(st.History) > 0 && st.History[len(st.History)-1].Generation == st.Generation {
		// A failed group's last generation is in its history with the
		// reason it ended.
		g.Current = g.History[len(g.History)-1]
	}
	if st.Phase != rendezvous.Failed {
		g.FirstError, g.FailedMember = st.LastError, st.LastErrorMember
	}
	seen := map[string]bool{}
	add := func(id string, m rendezvous.Member, live bool) {
		seen[id] = true
		rank := int32(-1)
		if r, ok := st.Ranks[id]; ok {
			rank = int32(r)
		}
		pm := &musterv1.Member{Id: id, Rank: rank, Live: live}
		if live {
			pm.Address, pm.Ordinal, pm.Generation = m.Address, m.Ordinal, m.Generation
			pm.State, pm.ExitCode, pm.Reason = stateProto(m.State), int32(m.ExitCode), m.Reason
			pm.GossipPort, pm.TopologyDomain = int32(m.GossipPort), m.Domain
		}
		g.Members = append(g.Members, pm)
	}
	for _, id := range st.Assignment {
		m, ok := v.Members[id]
		add(id, m, ok)
	}
	for id, m := range v.Members {
		if !seen[id] {
			add(id, m, true)
		}
	}
	return g
}

func phaseProto(p rendezvous.Phase) musterv1.Phase {
	switch p {
	case rendezvous.Waiting:
		return musterv1.Phase_PHASE_WAITING
	case rendezvous.Running:
		return musterv1.Phase_PHASE_RUNNING
	case rendezvous.Completed:
		return musterv1.Phase_PHASE_COMPLETED
	case rendezvous.Failed:
		return musterv1.Phase_PHASE_FAILED
	}
	return musterv1.Phase_PHASE_UNSPECIFIED
}

func stateProto(s rendezvous.RuntimeState) musterv1.RuntimeState {
	switch s {
	case rendezvous.StateLaunching:
		return musterv1.RuntimeState_RUNTIME_STATE_LAUNCHING
	case rendezvous.StateReady:
		return musterv1.RuntimeState_RUNTIME_STATE_READY
	case rendezvous.StateExited:
		return musterv1.RuntimeState_RUNTIME_STATE_EXITED
	}
	return musterv1.RuntimeState_RUNTIME_STATE_UNSPECIFIED
}
