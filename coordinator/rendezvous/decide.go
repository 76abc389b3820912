package rendezvous

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Restart backoff: the first restart of a group is immediate, so that one
// failure heals at once; each further one waits twice as long, up to
// MaxRestartBackoff, so that a crash loop does not burn through its restart
// budget (and the cluster) in a second.
const (
	FirstRestartBackoff = time.Second
	MaxRestartBackoff   = 30 * time.Second
)

// RestartBackoff is how long the barrier of the n-th restart (1-based)
// waits.
func RestartBackoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := FirstRestartBackoff
	for i := 2; i < n && d < MaxRestartBackoff; i++ {
		d *= 2
	}
	return min(d, MaxRestartBackoff)
}

// ReleaseAt is when a waiting generation whose members have all joined may
// be released, if that is still ahead of now (zero otherwise).
func ReleaseAt(v *View, now time.Time) time.Time {
	st := v.State
	if st == nil || st.Phase != Waiting || st.RestartAfterMs == 0 {
		return time.Time{}
	}
	at := time.UnixMilli(st.RestartAfterMs)
	if !now.Before(at) {
		return time.Time{}
	}
	return at
}

// Rank orders (State.RankOrder).
const (
	RankOrderOrdinal  = "ordinal"
	RankOrderTopology = "topology"
)

// AssignRanks chooses the members of a generation and their ranks. Members
// that had a rank before keep it; the others take the free ranks in order of
// their ordinal hint (numeric order, hinted members first) and then of
// arrival (etcd create revision). With rank order topology, those others
// are then regrouped by topology domain: the first of them (the lowest
// ordinal: the leader) first, then the rest of its domain, then each other
// domain in the order its first member comes, so members of one domain hold
// neighbouring ranks. It returns member ids in rank order, at most size of
// them; members left over are not part of the generation.
func AssignRanks(prev map[string]int, joined []Member, size int, rankOrder string) []string {
	out := make([]string, size)
	taken := make([]bool, size)
	rest := make([]Member, 0, len(joined))
	for _, m := range joined {
		if r, ok := prev[m.ID]; ok && r >= 0 && r < size && !taken[r] {
			out[r] = m.ID
			taken[r] = true
			continue
		}
		rest = append(rest, m)
	}
	// A total order (ids are unique), so an unstable sort gives the one
	// answer; SliceStable's rotations of these records cost a release of
	// 4096 members 8 ms.
	slices.SortFunc(rest, func(a, b Member) int {
		switch {
		case a.Ordinal != nil && b.Ordinal != nil && *a.Ordinal != *b.Ordinal:
			return cmp.Compare(*a.Ordinal, *b.Ordinal)
		case (a.Ordinal != nil) != (b.Ordinal != nil):
			if a.Ordinal != nil {
				return -1
			}
			return 1
		case a.CreateRev != b.CreateRev:
			return cmp.Compare(a.CreateRev, b.CreateRev)
		}
		return strings.Compare(a.ID, b.ID)
	})
	if rankOrder == RankOrderTopology {
		lead := ""
		if taken[0] {
			for _, m := range joined {
				if m.ID == out[0] {
					lead = m.Domain
				}
			}
		} else if len(rest) > 0 {
			lead = rest[0].Domain
		}
		rest = byDomain(rest, lead)
	}
	r := 0
	for _, m := range rest {
		for r < size && taken[r] {
			r++
		}
		if r == size {
			break
		}
		out[r] = m.ID
		taken[r] = true
	}
	for i := range out {
		if !taken[i] {
			return out[:i]
		}
	}
	return out
}

// byDomain stably regroups ms by Domain: lead's domain first (rank 0's),
// then the others in order of first appearance.
func byDomain(ms []Member, lead string) []Member {
	order := []string{lead}
	by := map[string][]Member{}
	for _, m := range ms {
		if _, ok := by[m.Domain]; !ok && m.Domain != lead {
			order = append(order, m.Domain)
		}
		by[m.Domain] = append(by[m.Domain], m)
	}
	out := make([]Member, 0, len(ms))
	for _, d := range order {
		out = append(out, by[d]...)
	}
	return out
}

// Decision is the next state of a group and why it was chosen.
type Decision struct {
	Next   State
	Reason string
}

// Decide returns the transition the view calls for, if any: release the
// barrier, record that every rank became ready, restart a failed
// generation, complete, or fail for good. It is
// pure; the caller applies the result with a compare-and-swap on the state's
// revision, so concurrent replicas deciding the same thing is harmless.
func Decide(v *View, now time.Time) (Decision, bool) {
	st := v.State
	if st == nil || st.Phase.Terminal() {
		return Decision{}, false
	}
	switch st.Phase {
	case Waiting:
		if v.JoinedCount(st.Generation) < st.Size || !ReleaseAt(v, now).IsZero() {
			return Decision{}, false
		}
		return release(st, v, v.Joined(st.Generation), now), true
	case Running:
		return decideRunning(st, v, now)
	}
	return Decision{}, false
}

func release(st *State, v *View, joined []Member, now time.Time) Decision {
	next := st.clone()
	next.Phase = Running
	next.Assignment = AssignRanks(st.Ranks, joined, st.Size, st.RankOrder)
	if next.Ranks == nil {
		next.Ranks = make(map[string]int, len(next.Assignment))
	}
	// The generation was complete when the last of its members joined
	// (unknown when one of them did not record it).
	next.JoinedMs = 0
	known := true
	for r, id := range next.Assignment {
		next.Ranks[id] = r
		j := v.Members[id].JoinedMs
		known = known && j != 0
		next.JoinedMs = max(next.JoinedMs, j)
	}
	if !known {
		next.JoinedMs = 0
	}
	next.ReleasedMs = now.UnixMilli()
	leader := v.Members[next.Assignment[0]]
	next.LeaderAddress = leader.Address
	next.MasterPort = leader.MasterPort
	return Decision{Next: next, Reason: fmt.Sprintf("barrier released: %d members joined generation %d", st.Size, st.Generation)}
}

func decideRunning(st *State, v *View, now time.Time) (Decision, bool) {
	done := 0
	// Members are checked in rank order so that the reported cause is
	// deterministic when several fail at once.
	for _, id := range st.Assignment {
		m, ok := v.Members[id]
		switch {
		case !ok:
			return Restart(st, now, id, fmt.Sprintf("member %s was lost (its agent left or its lease expired)", id)), true
		case m.Generation > st.Generation:
			// Cannot happen through the API; treat as a restart of the member.
			return Restart(st, now, id, fmt.Sprintf("member %s rejoined in generation %d", id, m.Generation)), true
		case m.Generation < st.Generation:
			return Restart(st, now, id, fmt.Sprintf("member %s is still in generation %d", id, m.Generation)), true
		case m.State == StateExited && m.ExitCode != 0:
			reason := fmt.Sprintf("member %s (rank %d) exited with code %d", id, st.Ranks[id], m.ExitCode)
			if m.Reason != "" {
				reason += ": " + m.Reason
			}
			if why, ok := cannotStart[m.ExitCode]; ok {
				return FailAt(st, now, id, reason+"; "+why), true
			}
			return Restart(st, now, id, reason), true
		case m.State == StateExited:
			done++
		}
	}
	if done == len(st.Assignment) && done > 0 {
		next := st.clone()
		next.Phase = Completed
		return Decision{Next: next, Reason: fmt.Sprintf("every rank of generation %d exited 0", st.Generation)}, true
	}
	if st.ReadyMs == 0 && v.Ready() {
		// Recorded once per generation, the first time every rank is
		// ready: the end of its way to ready.
		next := st.clone()
		next.ReadyMs = now.UnixMilli()
		why := fmt.Sprintf("generation %d ready: all %d ranks report ready", st.Generation, len(st.Assignment))
		if st.StartedMs != 0 {
			why += fmt.Sprintf(", %s after it began", time.Duration(next.ReadyMs-st.StartedMs)*time.Millisecond)
		}
		return Decision{Next: next, Reason: why}, true
	}
	return Decision{}, false
}

// cannotStart are exit codes that say the runtime's command could not
// start at all (the shell's and the agent's: POSIX 126, not executable;
// 127, not found). A restart runs the same command on the same image, so
// the group fails at once with the reason instead of burning its restart
// budget with backoff.
var cannotStart = map[int]string{
	126: "the command is not executable: fix the command or the image (not restarting)",
	127: "the command was not found: fix the command or the image (not restarting)",
}

// Fail moves the group to Failed because of member's failure.
func Fail(st *State, member, reason string) Decision {
	return FailAt(st, time.Now(), member, reason)
}

// FailAt is Fail at now: the failed generation goes to the history, ended
// at now.
func FailAt(st *State, now time.Time, member, reason string) Decision {
	next := st.clone()
	next.ended(now, member, reason)
	next.LastError, next.LastErrorMember = reason, member
	next.Phase = Failed
	if next.FirstError == "" {
		next.FirstError, next.FailedMember = reason, member
	}
	return Decision{Next: next, Reason: "group failed: " + reason}
}

// Restart moves the group to the next generation because of member's
// failure, or to Failed once the restart budget is spent. Ranks are kept.
func Restart(st *State, now time.Time, member, reason string) Decision {
	if st.Restarts >= st.MaxRestarts {
		d := FailAt(st, now, member, reason)
		d.Reason = fmt.Sprintf("restart budget of %d spent; group failed: %s", st.MaxRestarts, reason)
		return d
	}
	next := nextGeneration(st, now, member, reason)
	if d := RestartBackoff(next.Restarts); d > 0 {
		next.RestartAfterMs = now.Add(d).UnixMilli()
	}
	why := fmt.Sprintf("restarting to generation %d: %s", next.Generation, reason)
	if d := RestartBackoff(next.Restarts); d > 0 {
		why = fmt.Sprintf("restarting to generation %d after a %s backoff (restart %d): %s", next.Generation, d, next.Restarts, reason)
	}
	return Decision{Next: next, Reason: why}
}

// OperatorRestart moves a running (or waiting) group to its next
// generation because an operator asked (who: "user alice"): no backoff,
// and it spends none of the restart budget (the restart count still
// counts it). Ranks are kept.
func OperatorRestart(st *State, now time.Time, who, reason string) Decision {
	why := "restarted by " + who
	if reason != "" {
		why += ": " + reason
	}
	next := nextGeneration(st, now, "", why)
	next.MaxRestarts++
	return Decision{Next: next, Reason: fmt.Sprintf("restarting to generation %d: %s", next.Generation, why)}
}

// nextGeneration is st moved to its next generation, the current one
// ended at now for reason.
func nextGeneration(st *State, now time.Time, member, reason string) State {
	next := st.clone()
	next.ended(now, member, reason)
	next.LastError, next.LastErrorMember = reason, member
	next.Generation++
	next.Restarts++
	next.Phase = Waiting
	next.RestartAfterMs = 0
	next.Assignment = nil
	next.LeaderAddress, next.MasterPort = "", 0
	next.StartedMs, next.JoinedMs, next.ReleasedMs, next.ReadyMs = now.UnixMilli(), 0, 0, 0
	return next
}

func (s *State) clone() State {
	c := *s
	if s.Ranks != nil {
		c.Ranks = make(map[string]int, len(s.Ranks))
		for k, v := range s.Ranks {
			c.Ranks[k] = v
		}
	}
	c.Assignment = append([]string(nil), s.Assignment...)
	c.History = append([]Generation(nil), s.History...)
	return c
}

// Ready reports whether every rank of the current generation reported its
// runtime ready.
func (v *View) Ready() bool {
	st := v.State
	if st == nil || st.Phase != Running || len(st.Assignment) == 0 {
		return false
	}
	for _, id := range st.Assignment {
		m, ok := v.Members[id]
		if !ok || m.Generation != st.Generation || m.State != StateReady {
			return false
		}
	}
	return true
}

// Missing names what the current generation's barrier still waits for:
// members known from earlier generations that have not joined yet.
func (v *View) Missing() []string {
	st := v.State
	if st == nil {
		return nil
	}
	var out []string
	for id := range st.Ranks {
		m, ok := v.Members[id]
		if !ok || m.Generation != st.Generation {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return st.Ranks[out[i]] < st.Ranks[out[j]] })
	return out
}
