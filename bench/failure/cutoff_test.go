package failure

import (
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/muster-dev/muster/bench/rendezvous"
	"github.com/muster-dev/muster/bench/report"
	"github.com/muster-dev/muster/internal/testnet"
)

// cutSize is the group cut into: 4 members, each in its own network
// namespace.
const cutSize = 4

// BenchmarkCutOff cuts one member of a group of 4 off the network (the
// link of its network namespace goes down; its agent and runtime keep
// running, unreachable) once the group runs, and measures from the cut to
// the last of the other 3 members logging "group restarting".
//
// No socket closes when a host is cut off, so the fast path of the
// agent-kill rows does not apply: muster's agents notice by gossip
// (memberlist with Lifeguard), and the coordinator confirms that the
// member's gossip port no longer answers before it restarts the group.
// The anchor is the same agents with --no-gossip, where only the member's
// etcd lease running out (the coordinator's --member-ttl, 5 s) tells:
// what a rendezvous with keep-alives alone gives (torch 1.13's c10d
// keep-alive is 5 s x 3). It needs root and iproute2 (network
// namespaces) and is skipped without them.
func BenchmarkCutOff(b *testing.B) {
	if err := testnet.Available(); err != nil {
		b.Skip(err)
	}
	agent := filepath.Join(rendezvous.Bins(b), "agent")
	trials := trials(5) // the row is the worst of them
	took := map[string][]float64{}
	for m, mode := range []string{"gossip", "lease-only"} {
		for trial := range trials {
			took[mode] = append(took[mode], ms(cutTrial(b, agent, mode, trial, m*trials+trial)))
		}
	}
	o, t := report.Summarize(took["gossip"]), report.Summarize(took["lease-only"])
	report.Add(b, report.Row{
		Name: "failure/cut-off: every survivor told, worst trial", Unit: "ms", Better: report.Lower,
		Ours: o.Max, Anchor: "lease-only", AnchorValue: t.Max,
		OursSpread:   fmt.Sprintf("median %s ms, %s", report.Fmt(o.Median), o.Spread("ms")),
		AnchorSpread: fmt.Sprintf("median %s ms, %s", report.Fmt(t.Median), t.Spread("ms")),
		Params: fmt.Sprintf("group of %d, each member in its own network namespace on one bridge; the link of one member goes down once the group runs; worst of %d trials of the last survivor told; anchor: the same agents with --no-gossip (coordinator --member-ttl 5s)",
			cutSize, trials),
		Note: "muster: the cut-off member's peers find it unreachable by gossip (200 ms probes, a suspicion of at least 3 probe intervals that other members must confirm to shorten), report it, and the coordinator dials its gossip port (300 ms, believed when two members reported it) before it restarts the group; " +
			"lease-only: nothing notices until the member's lease runs out",
	})
}

// cutTrial runs one group of cutSize agents in a network of its own (seq
// tells the networks apart), cuts one member off and returns the time
// until every other member was told to restart.
func cutTrial(b *testing.B, agent, mode string, trial, seq int) time.Duration {
	b.Helper()
	net := testnet.New(b, cutSize, seq)
	defer net.Close()
	// The coordinator serves the benchmark's own network namespaces, not
	// loopback; nothing else reaches that network, so it takes the agents
	// at their word (--insecure): TLS is not what is measured here.
	coord, cp := rendezvous.CoordinatorOn(b, testnet.HostAddr, "--insecure")
	defer cp.Kill()
	group := fmt.Sprintf("cut-%s-%d", mode, trial)
	ps := make([]*rendezvous.Proc, cutSize)
	for i := range ps {
		args := []string{agent, "run", "--coordinator", coord, "--group", group, "--size", strconv.Itoa(cutSize),
			"--member-id", fmt.Sprintf("m%d", i), "--address", net.Addr(i), "--ordinal", strconv.Itoa(i)}
		if mode == "lease-only" {
			args = append(args, "--no-gossip")
		}
		ip, argv := net.Command(i, append(args, "--", "sleep", "600")...)
		ps[i] = rendezvous.Start(b, nil, ip, argv...)
	}
	defer killAll(ps)
	deadline := time.Now().Add(time.Minute)
	for _, p := range ps {
		if _, _, err := p.Line(0, "group ready", deadline); err != nil {
			b.Fatal(err)
		}
		if mode == "gossip" {
			// Every agent has met its peers before one is cut off.
			if _, _, err := p.Line(0, "gossip: joined peers", deadline); err != nil {
				b.Fatal(err)
			}
		}
	}
	victim := trial % cutSize
	from := lineCounts(ps)
	cut := time.Now()
	net.Cut(victim)
	return told(b, ps, from, victim, "group restarting", cut, rendezvous.SlogTime)
}
