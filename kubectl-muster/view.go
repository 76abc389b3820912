package kubectlmuster

import (
	"fmt"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// Group is what kubectl muster shows of a group (-o json|yaml print it):
// the coordinator's record joined with its pods as Kubernetes has them.
type Group struct {
	Namespace  string     `json:"namespace"`
	Name       string     `json:"name"`
	Runtime    string     `json:"runtime"`
	Size       int        `json:"size"`
	Phase      string     `json:"phase"`
	Ready      bool       `json:"ready"`
	ReadyRanks int        `json:"readyRanks"`
	Generation int64      `json:"generation"`
	Restarts   int        `json:"restarts"`
	Leader     string     `json:"leader,omitempty"`
	LeaderAddr string     `json:"leaderAddress,omitempty"`
	RankOrder  string     `json:"rankOrder,omitempty"`
	Created    *time.Time `json:"created,omitempty"`
	// LastError is the cause of the last restart, or of the failure that
	// ended the group.
	LastError       string       `json:"lastError,omitempty"`
	LastErrorMember string       `json:"lastErrorMember,omitempty"`
	Members         []Member     `json:"members,omitempty"`
	Current         *Generation  `json:"current,omitempty"`
	History         []Generation `json:"history,omitempty"`
}

// Member is one member: the coordinator's record and its pod.
type Member struct {
	Rank           int    `json:"rank"` // -1: none yet
	ID             string `json:"id"`
	Pod            string `json:"pod,omitempty"`
	Node           string `json:"node,omitempty"`
	TopologyDomain string `json:"topologyDomain,omitempty"`
	State          string `json:"state"`
	Address        string `json:"address,omitempty"`
	Live           bool   `json:"live"`
	Generation     int64  `json:"generation"`
	ExitCode       int    `json:"exitCode,omitempty"`
	Reason         string `json:"reason,omitempty"`
}

// Generation is one generation's way to ready; times are absent when not
// reached (or not recorded).
type Generation struct {
	Generation int64 `json:"generation"`
	// PodsCreated is when the first of the group's pods was made (from
	// Kubernetes), generation 0 only.
	PodsCreated *time.Time `json:"podsCreated,omitempty"`
	// Started is when the generation began: its first member joined
	// (generation 0), or the group restarted.
	Started *time.Time `json:"started,omitempty"`
	// Bound is when the last of the group's pods was scheduled (from
	// Kubernetes: the pods' PodScheduled condition), current generation
	// only.
	Bound     *time.Time `json:"bound,omitempty"`
	Joined    *time.Time `json:"joined,omitempty"`
	Released  *time.Time `json:"released,omitempty"`
	ReadyAt   *time.Time `json:"ready,omitempty"`
	Ended     *time.Time `json:"ended,omitempty"`
	EndReason string     `json:"endReason,omitempty"`
	EndMember string     `json:"endMember,omitempty"`
}

func msTime(ms int64) *time.Time {
	if ms == 0 {
		return nil
	}
	t := time.UnixMilli(ms).UTC()
	return &t
}

func generationOf(r *musterv1.GenerationRecord) *Generation {
	if r == nil {
		return nil
	}
	return &Generation{Generation: r.GetGeneration(), Started: msTime(r.GetStartedMs()), Joined: msTime(r.GetJoinedMs()),
		Released: msTime(r.GetReleasedMs()), ReadyAt: msTime(r.GetReadyMs()), Ended: msTime(r.GetEndedMs()),
		EndReason: r.GetEndReason(), EndMember: r.GetEndMember()}
}

var phaseNames = map[musterv1.Phase]string{
	musterv1.Phase_PHASE_WAITING: "Waiting", musterv1.Phase_PHASE_RUNNING: "Running",
	musterv1.Phase_PHASE_COMPLETED: "Completed", musterv1.Phase_PHASE_FAILED: "Failed",
}

var stateNames = map[musterv1.RuntimeState]string{
	musterv1.RuntimeState_RUNTIME_STATE_LAUNCHING: "Launching", musterv1.RuntimeState_RUNTIME_STATE_READY: "Ready",
	musterv1.RuntimeState_RUNTIME_STATE_EXITED: "Exited",
}

// groupOf is the coordinator's record of g; pods (may be nil) add nodes
// and the bound time.
func groupOf(g *musterv1.Group, pods []v1.Pod) Group {
	out := Group{
		Namespace: g.GetRef().GetNamespace(), Name: g.GetRef().GetName(), Runtime: g.GetRuntime(), Size: int(g.GetSize()),
		Phase: phaseNames[g.GetPhase()], Ready: g.GetReady(), Generation: g.GetGeneration(), Restarts: int(g.GetRestarts()),
		LeaderAddr: g.GetLeaderAddress(), RankOrder: g.GetRankOrder(), Created: msTime(g.GetCreatedMs()),
		LastError: g.GetFirstError(), LastErrorMember: g.GetFailedMember(), Current: generationOf(g.GetCurrent()),
	}
	if out.Phase == "" {
		out.Phase = "Unknown"
	}
	if out.Current == nil {
		out.Current = &Generation{Generation: g.GetGeneration()}
	}
	for _, h := range g.GetHistory() {
		out.History = append(out.History, *generationOf(h))
	}
	byName := map[string]*v1.Pod{}
	for i := range pods {
		byName[pods[i].Name] = &pods[i]
	}
	for _, m := range g.GetMembers() {
		mv := Member{Rank: int(m.GetRank()), ID: m.GetId(), TopologyDomain: m.GetTopologyDomain(), State: stateNames[m.GetState()],
			Address: m.GetAddress(), Live: m.GetLive(), Generation: m.GetGeneration(), ExitCode: int(m.GetExitCode()), Reason: m.GetReason()}
		switch {
		case !mv.Live:
			mv.State = "Gone"
		case mv.State == "" && mv.Generation == out.Generation:
			mv.State = "Joined"
		case mv.State == "":
			mv.State = "Joining"
		}
		if p, ok := byName[m.GetId()]; ok {
			mv.Pod, mv.Node = p.Name, p.Spec.NodeName
		}
		if mv.Rank == 0 {
			out.Leader = mv.ID
		}
		if mv.Live && mv.Generation == out.Generation && mv.State == "Ready" && mv.Rank >= 0 {
			out.ReadyRanks++
		}
		out.Members = append(out.Members, mv)
	}
	sort.SliceStable(out.Members, func(i, j int) bool {
		a, b := out.Members[i], out.Members[j]
		if (a.Rank < 0) != (b.Rank < 0) {
			return a.Rank >= 0
		}
		if a.Rank != b.Rank {
			return a.Rank < b.Rank
		}
		return a.ID < b.ID
	})
	out.Current.Bound = boundAt(pods, g.GetMembers())
	if out.Current.Generation == 0 {
		out.Current.PodsCreated = podsCreated(pods, g.GetMembers())
	} else if out.Current.Bound != nil && out.Current.Started != nil && out.Current.Bound.Before(*out.Current.Started) {
		// Restarted in place: the pods were bound before this generation.
		out.Current.Bound = nil
	}
	return out
}

// boundAt is when the last member's pod was scheduled (nil unless every
// member has a scheduled pod).
func boundAt(pods []v1.Pod, members []*musterv1.Member) *time.Time {
	want := map[string]bool{}
	for _, m := range members {
		if m.GetLive() {
			want[m.GetId()] = true
		}
	}
	var last time.Time
	found := 0
	for _, p := range pods {
		if !want[p.Name] {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == v1.PodScheduled && c.Status == v1.ConditionTrue {
				found++
				if t := c.LastTransitionTime.Time; t.After(last) {
					last = t
				}
			}
		}
	}
	if found == 0 || found < len(want) {
		return nil
	}
	last = last.UTC()
	return &last
}

// podsCreated is when the first member's pod was made.
func podsCreated(pods []v1.Pod, members []*musterv1.Member) *time.Time {
	want := map[string]bool{}
	for _, m := range members {
		want[m.GetId()] = true
	}
	var first *time.Time
	for _, p := range pods {
		if t := p.CreationTimestamp.Time.UTC(); want[p.Name] && (first == nil || t.Before(*first)) {
			first = &t
		}
	}
	return first
}

// age prints a duration as kubectl does (5s, 3m, 2h, 4d).
func age(t *time.Time, now time.Time) string {
	if t == nil {
		return "<unknown>"
	}
	d := now.Sub(*t)
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// since prints t relative to the generation's start ("+2.1s"), or "-"
// when not reached.
func since(t, start *time.Time) string {
	if t == nil {
		return "-"
	}
	if start == nil {
		return t.Local().Format("15:04:05")
	}
	d := t.Sub(*start)
	sign := "+"
	if d < 0 {
		sign, d = "-", -d
	}
	return sign + d.Round(10*time.Millisecond).String()
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "<none>"
	}
	return s
}
