// Package rendezvous holds the rendezvous state machine of one group: what is
// stored for it, how ranks are assigned, and which transition comes next.
// It is plain Go so that tests can drive it without etcd.
package rendezvous

import (
	"time"

	"github.com/muster-dev/muster/podapi"
)

// Phase is where the current generation of a group is.
type Phase string

const (
	// Waiting: the barrier of the current generation has not released.
	Waiting Phase = "Waiting"
	// Running: released; runtimes are launching or serving.
	Running Phase = "Running"
	// Completed: every rank's runtime exited 0. Terminal.
	Completed Phase = "Completed"
	// Failed: the group stopped restarting. Terminal.
	Failed Phase = "Failed"
)

// Terminal reports whether no further transition happens from p.
func (p Phase) Terminal() bool { return p == Completed || p == Failed }

// RuntimeState is what a member's agent last reported about its runtime.
type RuntimeState string

const (
	StateJoined    RuntimeState = ""
	StateLaunching RuntimeState = "Launching"
	StateReady     RuntimeState = "Ready"
	StateExited    RuntimeState = "Exited"
)

// State is the group's record, one etcd key changed only by
// compare-and-swap, so every replica agrees on one history.
type State struct {
	Size    int    `json:"size"`
	Runtime string `json:"runtime"`
	// RankOrder is RankOrderTopology when members of one topology domain
	// get neighbouring ranks; "" (ordinal) otherwise.
	RankOrder   string `json:"rank_order,omitempty"`
	Generation  int64  `json:"generation"`
	Phase       Phase  `json:"phase"`
	Restarts    int    `json:"restarts"`
	MaxRestarts int    `json:"max_restarts"`
	// Ranks remembers every member's rank across generations so that a
	// member that comes back gets the same one.
	Ranks map[string]int `json:"ranks,omitempty"`
	// Assignment is the current generation's members in rank order; set
	// when the barrier releases.
	Assignment    []string `json:"assignment,omitempty"`
	LeaderAddress string   `json:"leader_address,omitempty"`
	// RestartAfterMs (Unix milliseconds) holds back the barrier of a
	// restarted generation: repeated failures back off.
	RestartAfterMs int64 `json:"restart_after_ms,omitempty"`
	MasterPort     int   `json:"master_port,omitempty"`
	// LastError is the cause of the latest restart; FirstError and
	// FailedMember the failure that ended the group.
	LastError       string `json:"last_error,omitempty"`
	LastErrorMember string `json:"last_error_member,omitempty"`
	FirstError      string `json:"first_error,omitempty"`
	FailedMember    string `json:"failed_member,omitempty"`
	// The current generation's way to ready, in Unix milliseconds (0: not
	// yet, or a state written by a coordinator that did not record it):
	// when it began (the group was created or started afresh, or
	// restarted), when its last member joined, when its barrier released,
	// and when every rank first reported ready. Each is written with the
	// transition it marks, so every replica reads the same moments.
	StartedMs  int64 `json:"started_ms,omitempty"`
	JoinedMs   int64 `json:"joined_ms,omitempty"`
	ReleasedMs int64 `json:"released_ms,omitempty"`
	ReadyMs    int64 `json:"ready_ms,omitempty"`
	// CreatedMs is when the group was created (Unix milliseconds).
	CreatedMs int64 `json:"created_ms,omitempty"`
	// History is the generations before the current one, oldest first,
	// at most MaxHistory of them, and the generation a Failed group ended
	// in.
	History []Generation `json:"history,omitempty"`
}

// MaxHistory bounds State.History: the state is one etcd value read on
// every change of the group.
const MaxHistory = 20

// Generation is one past generation: its way to ready (the State's
// *Ms fields when it ended) and why it ended.
type Generation struct {
	Generation int64  `json:"generation"`
	StartedMs  int64  `json:"started_ms,omitempty"`
	JoinedMs   int64  `json:"joined_ms,omitempty"`
	ReleasedMs int64  `json:"released_ms,omitempty"`
	ReadyMs    int64  `json:"ready_ms,omitempty"`
	EndedMs    int64  `json:"ended_ms,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Member     string `json:"member,omitempty"`
}

// ended appends the current generation to the history, ended at now by
// member's failure (or an operator's restart, member "") for reason.
func (s *State) ended(now time.Time, member, reason string) {
	s.History = append(s.History, Generation{
		Generation: s.Generation, StartedMs: s.StartedMs, JoinedMs: s.JoinedMs, ReleasedMs: s.ReleasedMs, ReadyMs: s.ReadyMs,
		EndedMs: now.UnixMilli(), Reason: reason, Member: member,
	})
	if n := len(s.History) - MaxHistory; n > 0 {
		s.History = append([]Generation(nil), s.History[n:]...)
	}
}

// NewState is the state of a group created by its first member.
func NewState(size int, runtime string, maxRestarts int) State {
	return State{Size: size, Runtime: runtime, Phase: Waiting, MaxRestarts: maxRestarts}
}

// RankOf returns the member's rank in the current assignment, or -1.
func (s *State) RankOf(id string) int {
	for r, m := range s.Assignment {
		if m == id {
			return r
		}
	}
	return -1
}

// Member is one member's record. Its etcd key is bound to a lease, so it
// disappears when the member's agent does.
type Member struct {
	ID         string `json:"id"`
	Address    string `json:"address"`
	Ordinal    *int64 `json:"ordinal,omitempty"`
	MasterPort int    `json:"master_port,omitempty"`
	GossipPort int    `json:"gossip_port,omitempty"`
	// Domain is the member's topology domain (rank order topology).
	Domain string `json:"domain,omitempty"`
	// Generation is the last generation the member joined.
	Generation int64        `json:"generation"`
	State      RuntimeState `json:"state,omitempty"`
	ExitCode   int          `json:"exit_code,omitempty"`
	Reason     string       `json:"reason,omitempty"`
	// JoinedMs is when the member joined Generation (Unix milliseconds).
	JoinedMs int64 `json:"joined_ms,omitempty"`

	// Filled from etcd metadata, not stored in the value.
	CreateRev int64 `json:"-"`
	ModRev    int64 `json:"-"`
	Lease     int64 `json:"-"`
}

// View is a consistent snapshot of one group as read from etcd.
type View struct {
	Key      podapi.Key
	State    *State
	StateRev int64 // mod revision of the state key, for compare-and-swap
	Members  map[string]Member
	Rev      int64 // etcd revision the view is current to

	// perGen counts Members by generation, so that a hub asking after
	// every event how many have joined costs O(1), not a pass over a
	// group of thousands. SetMember and DeleteMember build and keep it;
	// indexed is len(Members) when it was last right, so a view filled by
	// writing Members directly is counted the slow way (once SetMember or
	// DeleteMember is used, change Members only through them). Readers
	// never write it: views are read under a shared lock.
	perGen  map[int64]int
	indexed int
}

// SetMember adds or replaces member m's record.
func (v *View) SetMember(m Member) {
	if v.Members == nil {
		v.Members = map[string]Member{}
	}
	v.index()
	if old, had := v.Members[m.ID]; had {
		v.perGen[old.Generation]--
	} else {
		v.indexed++
	}
	v.Members[m.ID] = m
	v.perGen[m.Generation]++
}

// DeleteMember removes member id's record, if there is one.
func (v *View) DeleteMember(id string) {
	v.index()
	if old, had := v.Members[id]; had {
		delete(v.Members, id)
		v.perGen[old.Generation]--
		v.indexed--
	}
}

// index (re)builds perGen when it is missing or stale.
func (v *View) index() {
	if v.perGen != nil && v.indexed == len(v.Members) {
		return
	}
	v.perGen = map[int64]int{}
	for _, m := range v.Members {
		v.perGen[m.Generation]++
	}
	v.indexed = len(v.Members)
}

// JoinedCount is how many members joined generation gen: len(Joined(gen)),
// without the copy.
func (v *View) JoinedCount(gen int64) int {
	if v.perGen != nil && v.indexed == len(v.Members) {
		return v.perGen[gen]
	}
	n := 0
	for _, m := range v.Members {
		if m.Generation == gen {
			n++
		}
	}
	return n
}

// Joined returns the members that joined generation gen.
func (v *View) Joined(gen int64) []Member {
	out := make([]Member, 0, v.JoinedCount(gen))
	for _, m := range v.Members {
		if m.Generation == gen {
			out = append(out, m)
		}
	}
	return out
}
