// Package server is the gRPC glue of the rendezvous service: it validates
// requests, turns them into store writes through the group's hub, and turns
// the hub's view into each member's event stream.
package server

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/singleflight"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/hub"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/store"
	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// Options tune the service; zero fields take the defaults of DefaultOptions.
type Options struct {
	// MemberTTL is how long a member outlives its agent's last contact.
	MemberTTL time.Duration
	// MaxRestarts is the restart budget of a new group.
	MaxRestarts int
	// ProgressInterval is how often a waiting member hears the barrier's count.
	ProgressInterval time.Duration
	// Runtimes are the runtime presets a group may name; empty takes any.
	Runtimes []string
	// MaxGroupSize caps the members of one group; 0 is podapi.MaxSize.
	MaxGroupSize int
	// MaxGroupsPerNamespace caps the groups one namespace may hold
	// (terminal ones included, until they are reaped); 0 is no cap.
	MaxGroupsPerNamespace int
	// GossipSecret, when set, derives each group's gossip key per
	// generation (GossipKey); every replica must share it.
	GossipSecret []byte
	// Readers decides what Kubernetes users (not pods) may read; nil
	// lets no such user read anything.
	Readers Readers
}

// Readers answers whether a Kubernetes user may verb (get, list) groups in
// a namespace ("" = all); auth.Kube does, with a SubjectAccessReview.
type Readers interface {
	MayRead(ctx context.Context, u *auth.User, verb, namespace string) error
}

// DefaultOptions are the defaults for one machine or a LAN.
func DefaultOptions() Options {
	return Options{MemberTTL: 5 * time.Second, MaxRestarts: 10, ProgressInterval: time.Second, MaxGroupsPerNamespace: 1000, MaxGroupSize: 8192}
}

// Server implements musterv1.RendezvousServer.
type Server struct {
	musterv1.UnimplementedRendezvousServer
	store *store.Store
	hubs  *hub.Registry
	opts  Options
	log   *slog.Logger

	// When gossip declares a peer dead, every other member reports it:
	// one check serves all concurrent reports of that peer (lostChecks),
	// and a peer just found alive is not dialled again for a moment
	// (aliveAt), so a flapping peer in a large group costs a few checks,
	// not members x flaps etcd reads and dials.
	lostChecks singleflight.Group
	aliveMu    sync.Mutex
	aliveAt    map[string]time.Time // group/member -> when its agent last answered a check
	// reportedBy records, per group/member@generation, which members
	// reported it lost and when the first did (see answers).
	reportedBy   map[string]*lostReports
	reportsSwept time.Time
}

// reportsKept is how long who reported a member lost is remembered.
const reportsKept = 30 * time.Second

type lostReports struct {
	first time.Time
	by    map[string]bool
}

// aliveFor is how long a peer whose agent answered a check is believed
// alive without another dial.
const aliveFor = time.Second

// New returns a Server over s and its hubs.
func New(s *store.Store, hubs *hub.Registry, opts Options, log *slog.Logger) *Server {
	d := DefaultOptions()
	if opts.MemberTTL <= 0 {
		opts.MemberTTL = d.MemberTTL
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = d.ProgressInterval
	}
	return &Server{store: s, hubs: hubs, opts: opts, log: log, aliveAt: map[string]time.Time{}, reportedBy: map[string]*lostReports{}}
}

var _ musterv1.RendezvousServer = (*Server)(nil)

func groupKey(ref *musterv1.GroupRef) (podapi.Key, error) {
	if ref == nil {
		return podapi.Key{}, errors.New("group is missing: give the group's name")
	}
	k := podapi.Key{Namespace: ref.GetNamespace(), Name: ref.GetName()}
	if k.Namespace == "" {
		k.Namespace = "default"
	}
	if err := podapi.ValidateName("group.namespace", k.Namespace, podapi.MaxGroupNameLen); err != nil {
		return k, err
	}
	if err := podapi.ValidateName("group.name", k.Name, podapi.MaxGroupNameLen); err != nil {
		return k, err
	}
	return k, nil
}

func invalid(format string, a ...any) error {
	return status.Errorf(codes.InvalidArgument, format, a...)
}

// internal maps store errors; a cancelled or timed-out client stays so.
func internal(err error) error {
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

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
	if err := podapi.ValidateName("member_id", id, podapi.MaxMemberIDLen); err != nil {
		return k, "", invalid("join group %q: %v", k.String(), err)
	}
	if err := caller.ActAs(k.Namespace, k.Name, id); err != nil {
		return k, "", err
	}
	if err := podapi.ValidateSize(int(req.GetSize())); err != nil {
		return k, "", invalid("%s: %v", what, err)
	}
	if m := s.opts.MaxGroupSize; m > 0 && int(req.GetSize()) > m {
		return k, "", status.Errorf(codes.ResourceExhausted, "%s: size %d is over this coordinator's limit of %d members per group (--max-group-size)", what, req.GetSize(), m)
	}
	if err := podapi.ValidateAddress(req.GetAddress()); err != nil {
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
		runtime = podapi.DefaultRuntime
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
	return ns
}

// sameBut reports whether two states are the same but for when their
// generation began.
func sameBut(a, b rendezvous.State) bool {
	a.StartedMs, b.StartedMs = 0, 0
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
			p.resp = &musterv1.JoinResponse{Generation: target, Joined: int32(len(v.Joined(st.Generation))), Size: int32(st.Size)}
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
	p.joined = len(v.Joined(st.Generation))
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

// ReportStatus records a member's runtime state for its generation.
func (s *Server) ReportStatus(ctx context.Context, req *musterv1.ReportStatusRequest) (*musterv1.ReportStatusResponse, error) {
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return nil, invalid("report status: %v", err)
	}
	id := req.GetMemberId()
	if err := podapi.ValidateName("member_id", id, podapi.MaxMemberIDLen); err != nil {
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
	if err := podapi.ValidateName("member_id", id, podapi.MaxMemberIDLen); err != nil {
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

// peerProbeTimeouts bound the coordinator's own checks of a peer that
// gossip declared dead (see answers).
var peerProbeTimeouts = []time.Duration{300 * time.Millisecond, time.Second}

// streamHold is how long a connection to the gossip port of a member whose
// stream just closed must stay open for its agent to count as alive.
const streamHold = 200 * time.Millisecond

// answers dials addr (a peer's gossip port) and returns nil when something
// answered, else why not. A refused connection proves the agent gone at
// once. A dial that times out proves less: a coordinator starved of CPU
// times out on live peers too. It is believed when another member has
// reported the same peer (corroborated: a host cut off is lost to all its
// peers at once, while a busy reporter's suspicion is its own), and is
// otherwise tried once more, longer.
//
// With hold, a connection that is accepted must also stay open that long:
// an agent being killed has its sockets closed one after another, and its
// gossip port may still take a connection just after its stream closed;
// the kernel then resets that connection.
func answers(addr string, corroborated func() bool, hold time.Duration) error {
	var err error
	for i, t := range peerProbeTimeouts {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, t); err == nil {
			defer c.Close()
			if hold <= 0 {
				return nil
			}
			c.SetReadDeadline(time.Now().Add(hold))
			if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("connected, then %w: the agent is exiting", err)
			}
			return nil
		}
		if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			return err // refused, unreachable: nobody there
		}
		if i == 0 && corroborated() {
			return fmt.Errorf("%w; reported lost by more than one member", err)
		}
	}
	return err
}

// noteReport records that reporter reported member id (group/member) of
// generation gen lost, and returns whether more than one member has.
func (s *Server) noteReport(id, reporter string, gen int64) func() bool {
	key := fmt.Sprintf("%s@%d", id, gen)
	now := time.Now()
	s.aliveMu.Lock()
	defer s.aliveMu.Unlock()
	// Old records go in a sweep every reportsKept, not on every report:
	// reports come in bursts, when gossip errs the most.
	if now.Sub(s.reportsSwept) > reportsKept {
		s.reportsSwept = now
		for k, r := range s.reportedBy {
			if now.Sub(r.first) > reportsKept {
				delete(s.reportedBy, k)
			}
		}
	}
	r := s.reportedBy[key]
	if r == nil {
		r = &lostReports{first: now, by: map[string]bool{}}
		s.reportedBy[key] = r
	}
	r.by[reporter] = true
	return func() bool {
		s.aliveMu.Lock()
		defer s.aliveMu.Unlock()
		return len(r.by) > 1
	}
}

// ReportPeerLost acts on a peer that a member's gossip declared dead. It
// confirms first, so that a false suspicion restarts nothing: the lost
// peer's agent must no longer accept connections on its gossip port. Then
// it removes the member (revoking its lease), and the group restarts
// exactly as when the lease runs out, only sooner.
func (s *Server) ReportPeerLost(ctx context.Context, req *musterv1.ReportPeerLostRequest) (*musterv1.ReportPeerLostResponse, error) {
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return nil, invalid("report lost peer: %v", err)
	}
	for _, f := range []struct{ name, v string }{{"member_id", req.GetMemberId()}, {"lost_member_id", req.GetLostMemberId()}} {
		if err := podapi.ValidateName(f.name, f.v, podapi.MaxMemberIDLen); err != nil {
			return nil, invalid("report lost peer in group %q: %v", k.String(), err)
		}
	}
	if err := auth.FromContext(ctx).ActAs(k.Namespace, k.Name, req.GetMemberId()); err != nil {
		return nil, err
	}
	// Only a member of the group may report one of its peers: a caller
	// that left, or never joined, learns nothing and restarts nothing.
	// Asked of the group's live view, not etcd: when gossip errs, every
	// member may report every peer at once, and N x N reads would starve
	// the coordinator of the very status reports that end the episode.
	h, err := s.hubs.Acquire(ctx, k)
	if err != nil {
		return nil, internal(err)
	}
	isMember := h.Observe(req.GetMemberId()).IsMember
	h.Release()
	if !isMember {
		return nil, status.Errorf(codes.PermissionDenied, "report lost peer in group %q: %q is not a member of the group; only members report their peers", k.String(), req.GetMemberId())
	}
	return s.confirmLost(ctx, k, req.GetLostMemberId(), req.GetMemberId(), req.GetGeneration(), false)
}

// confirmLost runs checkLost for member lost of generation gen, once for
// every concurrent report of it, and not again for a moment when its
// agent just answered. fresh evidence (its stream just closed) is checked
// on its own: an answer from before it is no answer now.
func (s *Server) confirmLost(ctx context.Context, k podapi.Key, lost, reporter string, gen int64, fresh bool) (*musterv1.ReportPeerLostResponse, error) {
	id := k.String() + "/" + lost
	s.aliveMu.Lock()
	at, recent := s.aliveAt[id]
	s.aliveMu.Unlock()
	if recent && time.Since(at) < aliveFor && !fresh {
		return &musterv1.ReportPeerLostResponse{Reason: fmt.Sprintf("peer's agent answered %s ago", time.Since(at).Round(time.Millisecond))}, nil
	}
	corroborated := s.noteReport(id, reporter, gen)
	flight, hold := fmt.Sprintf("%s@%d", id, gen), time.Duration(0)
	if fresh {
		flight, hold = flight+" "+reporter, streamHold
	}
	v, err, _ := s.lostChecks.Do(flight, func() (any, error) {
		return s.checkLost(context.WithoutCancel(ctx), k, lost, reporter, gen, corroborated, hold)
	})
	if err != nil {
		return nil, err
	}
	return v.(*musterv1.ReportPeerLostResponse), nil
}

// checkLost confirms a gossip report that member lost is dead: its record
// still names a gossip port and nothing answers there. Confirmed, its
// record is removed (the group restarts); otherwise it is left to its
// lease.
func (s *Server) checkLost(ctx context.Context, k podapi.Key, lost, reporter string, gen int64, corroborated func() bool, hold time.Duration) (*musterv1.ReportPeerLostResponse, error) {
	m, ok, err := s.store.GetMember(ctx, k, lost)
	if err != nil {
		return nil, internal(err)
	}
	if !ok {
		return &musterv1.ReportPeerLostResponse{Confirmed: true, Reason: "already gone"}, nil
	}
	if m.Generation < gen {
		// The peer is between generations (stopping its runtime); its
		// gossip may be restarting. Leave it to its lease.
		return &musterv1.ReportPeerLostResponse{Reason: "peer is in an older generation"}, nil
	}
	if m.GossipPort == 0 {
		return &musterv1.ReportPeerLostResponse{Reason: "peer does not gossip; its lease decides"}, nil
	}
	addr := net.JoinHostPort(m.Address, strconv.Itoa(m.GossipPort))
	dialErr := answers(addr, corroborated, hold)
	if dialErr == nil {
		s.aliveMu.Lock()
		now := time.Now()
		s.aliveAt[k.String()+"/"+lost] = now
		for id, at := range s.aliveAt {
			if now.Sub(at) > aliveFor {
				delete(s.aliveAt, id)
			}
		}
		s.aliveMu.Unlock()
		s.log.Info("gossip suspicion not confirmed: the peer's agent answers", "group", k.String(), "member", lost, "reporter", reporter)
		return &musterv1.ReportPeerLostResponse{Reason: "peer's agent answers"}, nil
	}
	if err := s.store.DeleteMember(ctx, k, m); err != nil {
		return nil, internal(err)
	}
	s.log.Warn("member lost: its agent is unreachable", "group", k.String(), "member", lost, "reported_by", reporter, "check", dialErr)
	return &musterv1.ReportPeerLostResponse{Confirmed: true, Reason: "peer's agent is unreachable"}, nil
}

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
		if err := podapi.ValidateName("namespace", ns, podapi.MaxGroupNameLen); err != nil {
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
		if !ok || podapi.ValidateName("page_token", ans, podapi.MaxGroupNameLen) != nil || podapi.ValidateName("page_token", aname, podapi.MaxGroupNameLen) != nil || (ns != "" && ans != ns) {
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
	case id.User != nil && s.opts.Readers != nil:
		if err := s.opts.Readers.MayRead(ctx, id.User, "list", ns); err != nil {
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
	case id.User != nil && s.opts.Readers != nil:
		return s.opts.Readers.MayRead(ctx, id.User, "get", k.Namespace)
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
		RankOrder: rankOrderName(st.RankOrder),
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
