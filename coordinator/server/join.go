package server

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/hub"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/store"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/podapi/names"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// Join implements the rendezvous join; see the proto for its contract.
func (s *Server) Join(ctx context.Context, req *musterv1.JoinRequest) (*musterv1.JoinResponse, error) {
	resp, err := s.join(ctx, req)
	if err == nil && resp != nil {
		resp.GossipKey = s.GossipKey(req.GetGroup(), resp.GetGeneration())
	}
	return resp, err
}

// GossipKey is group ref's gossip key in generation gen: an HMAC of the
// coordinator's secret, so every replica derives the same key without
// storing one per group, and a member of an earlier generation (a pod
// since removed) cannot read the next generation's gossip. Nil without a
// secret (gossip in the clear).
func (s *Server) GossipKey(ref *musterv1.GroupRef, gen int64) []byte {
	if len(s.opts.GossipSecret) == 0 {
		return nil
	}
	k, err := groupKey(ref)
	if err != nil {
		return nil
	}
	m := hmac.New(sha256.New, s.opts.GossipSecret)
	fmt.Fprintf(m, "muster gossip key\x00%s\x00%s\x00%d", k.Namespace, k.Name, gen)
	return m.Sum(nil)
}

// checkJoin validates a join request and the caller's right to make it,
// before anything is read or written; it returns the group and the
// runtime the request names (the default filled in).
func (s *Server) checkJoin(caller *auth.Identity, req *musterv1.JoinRequest) (podapi.Key, string, error) {
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return k, "", invalid("join: %v", err)
	}
	id := req.GetMemberId()
	what := fmt.Sprintf("join group %q as %q", k.String(), id)
	if err := names.ValidateName("member_id", id, names.MaxMemberIDLen); err != nil {
		return k, "", invalid("join group %q: %v", k.String(), err)
	}
	if err := caller.ActAs(k.Namespace, k.Name, id); err != nil {
		return k, "", err
	}
	if err := names.ValidateSize(int(req.GetSize())); err != nil {
		return k, "", invalid("%s: %v", what, err)
	}
	if m := s.opts.MaxGroupSize; m > 0 && int(req.GetSize()) > m {
		return k, "", status.Errorf(codes.ResourceExhausted, "%s: size %d is over this coordinator's limit of %d members per group (--max-group-size)", what, req.GetSize(), m)
	}
	if err := names.ValidateAddress(req.GetAddress()); err != nil {
		return k, "", invalid("%s: %v", what, err)
	}
	if err := caller.MayAnnounce(req.GetAddress()); err != nil {
		return k, "", err
	}
	if req.Ordinal != nil && req.GetOrdinal() < 0 {
		return k, "", invalid("%s: ordinal %d is negative; ordinals count from 0", what, req.GetOrdinal())
	}
	if p := req.GetMasterPort(); p < 0 || p > 65535 {
		return k, "", invalid("%s: master_port %d is not a TCP port (0-65535)", what, p)
	}
	if p := req.GetGossipPort(); p < 0 || p > 65535 {
		return k, "", invalid("%s: gossip_port %d is not a port (0-65535)", what, p)
	}
	switch req.GetRankOrder() {
	case "", rendezvous.RankOrderOrdinal, rendezvous.RankOrderTopology:
	default:
		return k, "", invalid("%s: rank_order %q is not %q or %q", what, truncateName(req.GetRankOrder()), rendezvous.RankOrderOrdinal, rendezvous.RankOrderTopology)
	}
	if len(req.GetTopologyDomain()) > 253 {
		return k, "", invalid("%s: topology_domain is %d bytes; at most 253", what, len(req.GetTopologyDomain()))
	}
	runtime := req.GetRuntime()
	if runtime == "" {
		runtime = names.DefaultRuntime
	}
	if len(s.opts.Runtimes) > 0 && !slices.Contains(s.opts.Runtimes, runtime) {
		return k, "", invalid("%s: runtime %q is not a known preset; use one of %s", what, truncateName(runtime), strings.Join(s.opts.Runtimes, ", "))
	}
	return k, runtime, nil
}

func (s *Server) join(ctx context.Context, req *musterv1.JoinRequest) (*musterv1.JoinResponse, error) {
	k, runtime, err := s.checkJoin(auth.FromContext(ctx), req)
	if err != nil {
		return nil, err
	}
	h, err := s.hubs.Acquire(ctx, k)
	if err != nil {
		return nil, internal(err)
	}
	defer h.Release()
	j := &joining{s: s, h: h, k: k, id: req.GetMemberId(), req: req, runtime: runtime}
	j.what = fmt.Sprintf("join group %q as %q", k.String(), j.id)

	// Each pass reads the hub's view, decides one write and makes it with a
	// compare-and-swap; a lost race waits for the hub to catch up and reads
	// again. A handful of passes settles any real contention.
	for attempt := 0; attempt < 20; attempt++ {
		p := j.plan()
		var rev int64
		switch {
		case p.err != nil:
			return nil, p.err
		case p.create != nil:
			if err := j.create(ctx, *p.create); err != nil {
				return nil, err
			}
			continue
		case p.reset != nil:
			rev, err = j.reset(ctx, p)
		case p.restart != nil:
			rev, err = j.restart(ctx, p)
		case p.put != nil:
			var resp *musterv1.JoinResponse
			if resp, rev, err = j.put(ctx, p); resp != nil || err != nil {
				return resp, err
			}
		default:
			return p.resp, nil
		}
		if err != nil {
			return nil, internal(fmt.Errorf("%s: %w", j.what, err))
		}
		if err := h.WaitRev(ctx, rev); err != nil {
			return nil, internal(err)
		}
	}
	return nil, status.Errorf(codes.Aborted, "%s: too much contention on the group; retry", j.what)
}

// joining is one Join call: the writes its plan may make.
type joining struct {
	s       *Server
	h       *hub.Hub
	k       podapi.Key
	id      string
	req     *musterv1.JoinRequest
	runtime string
	what    string // for errors: join group "ns/g" as "id"
}

// create makes the group. Concurrent first joins through this replica
// create it once; the others wait and find it. Only the one that creates
// counts the namespace's groups (N members arriving at once would
// otherwise scan it N times).
func (j *joining) create(ctx context.Context, st rendezvous.State) error {
	err := j.h.CreateOnce(ctx, func() (int64, error) {
		if err := j.s.checkGroupCap(ctx, j.k); err != nil {
			return 0, err
		}
		_, rev, err := j.s.store.CreateState(ctx, j.k, st)
		return rev, err
	})
	switch {
	case err == nil:
		return nil
	case status.Code(err) == codes.ResourceExhausted:
		return err
	}
	return internal(fmt.Errorf("%s: %w", j.what, err))
}

// reset starts the group afresh; the revision to wait for is returned.
func (j *joining) reset(ctx context.Context, p joinPlan) (int64, error) {
	ok, err := j.s.store.ResetState(ctx, j.k, p.stateRev, *p.reset, p.resetEmpty)
	switch {
	case err == nil && ok && p.resetEmpty:
		j.s.log.Info("group had no members attached; starting it afresh at generation 0", "group", j.k.String(), "member", j.id, "size", p.reset.Size)
	case err == nil && ok:
		j.s.log.Info("group was terminal with no live members; starting it afresh", "group", j.k.String(), "member", j.id)
	}
	return p.viewRev + 1, err
}

// restart moves the group to its next generation.
func (j *joining) restart(ctx context.Context, p joinPlan) (int64, error) {
	ok, err := j.s.store.SwapState(ctx, j.k, p.stateRev, p.restart.Next)
	if ok {
		j.s.log.Info(p.restart.Reason, "group", j.k.String(), "generation", p.restart.Next.Generation)
	}
	return p.viewRev + 1, err
}

// put writes the member's record on its lease (a new one for a new
// member). It answers once this replica's view has the record; resp and
// err are nil when the write lost a race and the caller should plan again
// (after waiting for rev).
func (j *joining) put(ctx context.Context, p joinPlan) (resp *musterv1.JoinResponse, rev int64, err error) {
	lease := clientv3.LeaseID(p.put.Lease)
	if lease == 0 {
		if lease, err = j.s.store.GrantLease(ctx, int64((j.s.opts.MemberTTL+time.Second-1)/time.Second)); err != nil {
			return nil, 0, internal(fmt.Errorf("%s: %w", j.what, err))
		}
	}
	ok, rev, err := j.s.store.PutMember(ctx, j.k, *p.put, lease, p.memberRev)
	if errors.Is(err, store.ErrLeaseGone) {
		// The old lease expired between the read and the write: the
		// record is gone too, so the next pass writes a new one.
		return nil, rev, nil
	}
	if err != nil {
		return nil, rev, internal(fmt.Errorf("%s: %w", j.what, err))
	}
	if !ok {
		return nil, rev, nil
	}
	// Answer once this replica's view has the new member, so a join that
	// follows this one (the next pod, a member beyond the size) is
	// planned with it: otherwise a stale view let a third member into a
	// full group of two.
	if err := j.h.WaitRev(ctx, rev); err != nil {
		return nil, rev, internal(err)
	}
	return &musterv1.JoinResponse{Generation: p.put.Generation, Joined: int32(p.joined + 1), Size: int32(p.size)}, rev, nil
}

// checkGroupCap refuses a new group in a namespace that holds
// MaxGroupsPerNamespace already: one namespace's workloads (or one
// compromised pod) cannot fill etcd for everyone.
func (s *Server) checkGroupCap(ctx context.Context, k podapi.Key) error {
	if s.opts.MaxGroupsPerNamespace <= 0 {
		return nil
	}
	n, err := s.store.CountGroups(ctx, k.Namespace)
	if err != nil {
		return internal(err)
	}
	if n >= s.opts.MaxGroupsPerNamespace {
		return status.Errorf(codes.ResourceExhausted, "create group %q: namespace %q holds %d groups, the limit (--max-groups-per-namespace); delete finished workloads or raise the limit", k.String(), k.Namespace, n)
	}
	return nil
}

// truncateName shortens an untrusted value for an error message.
func truncateName(v string) string {
	if len(v) > 64 {
		return v[:64] + "..."
	}
	return v
}

type joinPlan struct {
	err    error
	resp   *musterv1.JoinResponse
	create *rendezvous.State
	reset  *rendezvous.State
	// resetEmpty: reset only while the group has no member records.
	resetEmpty bool
	restart    *rendezvous.Decision
	put        *rendezvous.Member
	memberRev  int64 // for put: -1 = must not exist, else its mod revision
	stateRev   int64
	viewRev    int64
	joined     int
	size       int
}

// plan reads the hub's view and decides the one write this pass makes.
func (j *joining) plan() joinPlan {
	var p joinPlan
	j.h.Read(func(v *rendezvous.View) { p = j.planView(v) })
	return p
}

func (j *joining) planView(v *rendezvous.View) joinPlan {
	p := joinPlan{viewRev: v.Rev, stateRev: v.StateRev}
	st := v.State
	if st == nil {
		ns := j.newState(int(j.req.GetSize()))
		p.create = &ns
		return p
	}
	p.size = st.Size
	if j.req.GetGeneration() < 0 && len(v.Members) == 0 {
		// Nobody is attached: the first pod of a workload made again
		// under the same name (or of one whose pods all went). It
		// starts a new group, at generation 0 with its own size and
		// runtime, not the old one's generation and restart count
		// (unless the group is that fresh already: just made).
		if fresh := j.newState(int(j.req.GetSize())); !sameBut(*st, fresh) {
			p.reset, p.resetEmpty = &fresh, true
			return p
		}
	}
	if p.err = j.agrees(st); p.err != nil {
		return p
	}
	rec, known := v.Members[j.id]
	gen := j.req.GetGeneration()
	switch {
	case st.Phase.Terminal():
		j.planTerminal(&p, v, rec, known)
		return p
	case gen < 0 && st.Phase == rendezvous.Running && st.RankOf(j.id) >= 0:
		d := rendezvous.Restart(st, time.Now(), j.id, fmt.Sprintf("member %s restarted (its agent joined afresh)", j.id))
		p.restart = &d
		return p
	case !known && len(v.Members) >= st.Size:
		p.err = j.full(v, st)
		return p
	}
	j.planPut(&p, v, rec, known)
	return p
}

// newState is the state of a group this member creates or starts afresh.
func (j *joining) newState(size int) rendezvous.State {
	ns := rendezvous.NewState(size, j.runtime, j.s.opts.MaxRestarts)
	ns.RankOrder = rankOrder(j.req)
	ns.StartedMs = time.Now().UnixMilli()
	ns.CreatedMs = ns.StartedMs
	return ns
}

// sameBut reports whether two states are the same but for when their
// generation began.
func sameBut(a, b rendezvous.State) bool {
	a.StartedMs, b.StartedMs = 0, 0
	a.CreatedMs, b.CreatedMs = 0, 0
	return reflect.DeepEqual(a, b)
}

// agrees checks that the member asks for the group's size, runtime and
// rank order.
func (j *joining) agrees(st *rendezvous.State) error {
	req := j.req
	switch ro := rankOrder(req); {
	case int(req.GetSize()) != st.Size:
		return invalid("%s: size %d disagrees with group size %d; every member must pass the same size", j.what, req.GetSize(), st.Size)
	case j.runtime != st.Runtime:
		return invalid("%s: runtime %q disagrees with the group's runtime %q; every member must use the same runtime", j.what, j.runtime, st.Runtime)
	case ro != st.RankOrder && !st.Phase.Terminal():
		return invalid("%s: rank order %q disagrees with the group's %q; every member must use the same", j.what, rankOrderName(ro), rankOrderName(st.RankOrder))
	}
	return nil
}

// planTerminal plans a join to a Completed or Failed group: a member
// catching up is told the end; a new one starts the group afresh once no
// other member is attached.
func (j *joining) planTerminal(p *joinPlan, v *rendezvous.View, rec rendezvous.Member, known bool) {
	st := v.State
	if j.req.GetGeneration() >= 0 && known {
		// A member catching up after the end: its stream reports it.
		p.resp = &musterv1.JoinResponse{Generation: rec.Generation, Size: int32(st.Size)}
		return
	}
	var others []string
	for mid := range v.Members {
		if mid != j.id {
			others = append(others, mid)
		}
	}
	if len(others) > 0 {
		p.err = status.Errorf(codes.FailedPrecondition, "%s: group is %s and %d members (%s) are still attached; wait for them to exit or use another group name", j.what, strings.ToLower(string(st.Phase)), len(others), strings.Join(limit(others, 5), ", "))
		return
	}
	ns := j.newState(st.Size)
	p.reset = &ns
}

// full is the error for a new member of a group whose every place is
// taken.
func (j *joining) full(v *rendezvous.View, st *rendezvous.State) error {
	var ids []string
	for mid := range v.Members {
		ids = append(ids, mid)
	}
	full := status.Newf(codes.ResourceExhausted, "%s: group is full: %d of %d members are attached (%s) and %q is not one of them; check --size, or the member ids", j.what, len(v.Members), st.Size, strings.Join(limit(ids, 5), ", "), j.id)
	if d, err := full.WithDetails(&errdetails.ErrorInfo{Domain: musterv1.ErrorDomain, Reason: musterv1.ReasonGroupFull}); err == nil {
		full = d
	}
	return full.Err()
}

// planPut plans the member's record for the generation it joins; a
// member whose record already says all of it is answered at once.
func (j *joining) planPut(p *joinPlan, v *rendezvous.View, rec rendezvous.Member, known bool) {
	st, req, gen := v.State, j.req, j.req.GetGeneration()
	target := st.Generation
	if gen >= 0 && gen < st.Generation {
		// The member has not stopped its old runtime yet: keep it out
		// of the new barrier; its stream tells it to restart.
		target = gen
	}
	m := rendezvous.Member{
		ID: j.id, Address: req.GetAddress(), Ordinal: req.Ordinal,
		MasterPort: int(req.GetMasterPort()), GossipPort: int(req.GetGossipPort()), Generation: target,
		Domain: req.GetTopologyDomain(), JoinedMs: time.Now().UnixMilli(),
	}
	p.memberRev = -1
	if known {
		if rec.Generation == target && rec.Address == m.Address && rec.MasterPort == m.MasterPort && rec.GossipPort == m.GossipPort && rec.Domain == m.Domain {
			p.resp = &musterv1.JoinResponse{Generation: target, Joined: int32(v.JoinedCount(st.Generation)), Size: int32(st.Size)}
			return
		}
		if rec.Generation == target {
			m.State, m.ExitCode, m.Reason = rec.State, rec.ExitCode, rec.Reason
			if rec.JoinedMs != 0 {
				m.JoinedMs = rec.JoinedMs // joined this generation before
			}
		}
		m.Lease = rec.Lease
		p.memberRev = rec.ModRev
	}
	p.put = &m
	p.joined = v.JoinedCount(st.Generation)
	if known && rec.Generation == st.Generation {
		p.joined--
	}
}

func limit(ids []string, n int) []string {
	if len(ids) > n {
		return append(ids[:n:n], fmt.Sprintf("and %d more", len(ids)-n))
	}
	return ids
}

// rankOrder is the request's rank order as the group state keeps it:
// "" for ordinal, the default.
func rankOrder(req *musterv1.JoinRequest) string {
	if ro := req.GetRankOrder(); ro == rendezvous.RankOrderTopology {
		return ro
	}
	return ""
}

func rankOrderName(ro string) string {
	if ro == "" {
		return rendezvous.RankOrderOrdinal
	}
	return ro
}
