// Package server is the gRPC glue of the rendezvous service: it validates
// requests, turns them into store writes through the group's hub, and turns
// the hub's view into each member's event stream.
package server

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/hub"
	"github.com/muster-dev/muster/coordinator/store"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/podapi/names"
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
	// MaxGroupSize caps the members of one group; 0 is names.MaxSize.
	MaxGroupSize int
	// MaxGroupsPerNamespace caps the groups one namespace may hold
	// (terminal ones included, until they are reaped); 0 is no cap.
	MaxGroupsPerNamespace int
	// GossipSecret, when set, derives each group's gossip key per
	// generation (GossipKey); every replica must share it.
	GossipSecret []byte
	// Access decides what Kubernetes users (not pods) may do to groups
	// (read, restart); nil lets no such user do anything.
	Access Access
}

// Access answers whether a Kubernetes user may do what attrs say to
// groups; auth.Kube does, with a SubjectAccessReview.
type Access interface {
	May(ctx context.Context, u *auth.User, attrs auth.Attributes) error
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
	if err := names.ValidateName("group.namespace", k.Namespace, names.MaxGroupNameLen); err != nil {
		return k, err
	}
	if err := names.ValidateName("group.name", k.Name, names.MaxGroupNameLen); err != nil {
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
