package rendezvous

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/bench/report"
	"github.com/muster-dev/muster/coordinator"
	"github.com/muster-dev/muster/coordinator/testcoord"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// conns is how many gRPC connections the in-process members share, as
// agents on a few hosts would share a network path; each member still has
// its own stream and lease.
const conns = 8

// BenchmarkScale measures one group of N in-process members (gRPC clients
// over loopback, a real coordinator with its embedded etcd) against the
// physical floor of a barrier on the same etcd and connections.
//
// First N-1 members arrive at once and wait at the barrier (each: Join,
// then Watch until its stream reports the barrier's progress). Then the
// last member joins: from the moment its Join is sent, each member's
// latency is the time until its stream delivers its assignment; p50 and
// p99 over members, pooled over the repetitions. The etcd writes per
// member cover the whole rendezvous (requests: puts, transactions and
// lease grants; revisions: puts and transactions).
//
// The floor ("floor-etcd-put") does the least any barrier must do: each
// arriving member's record durably written (one lease grant and one put
// through the same embedded etcd), and at the end one message to each of N
// open gRPC streams over the same number of connections (grpc-go's health
// service Watch as a bare fan-out).
func BenchmarkScale(b *testing.B) {
	cfg := testcoord.Config(b)
	// Members never leave (4096 Leave calls take seconds): their leases
	// must outlive the benchmark, so that no expiry lands in a measurement.
	cfg.MemberTTL = 10 * time.Minute
	co := testcoord.Start(b, cfg)
	var clients []musterv1.RendezvousClient
	for range conns {
		clients = append(clients, musterv1.NewRendezvousClient(dial(b, co.Addr())))
	}
	fan := startFanout(b)
	for _, c := range []struct{ n, reps int }{{1024, 3}, {4096, 1}} {
		b.Run(fmt.Sprintf("members=%d", c.n), func(b *testing.B) {
			var (
				ours, floor         []float64 // per member, ms after the last join
				oursAll, floorAll   []float64 // N-1 arriving at once until all wait, ms
				reqs, revs, floorRv []float64 // per member
			)
			rejoins.Store(0)
			for rep := range c.reps {
				rev0, req0 := co.EtcdRevision(), co.Store.Writes.Load()
				arrive, lat, err := stagedRendezvous(clients, fmt.Sprintf("scale-%d-%d", c.n, rep), c.n)
				if err != nil {
					b.Fatal(err)
				}
				reqs = append(reqs, float64(co.Store.Writes.Load()-req0)/float64(c.n))
				revs = append(revs, float64(co.EtcdRevision()-rev0)/float64(c.n))
				ours, oursAll = append(ours, lat...), append(oursAll, arrive)

				arrive, lat, rv, err := fan.barrier(co, fmt.Sprintf("floor-%d-%d", c.n, rep), c.n)
				if err != nil {
					b.Fatal(err)
				}
				floor, floorAll, floorRv = append(floor, lat...), append(floorAll, arrive), append(floorRv, rv)
			}
			params := fmt.Sprintf("N=%d in-process members (gRPC clients on %d loopback connections), real coordinator with embedded etcd, %d repetitions", c.n, conns, c.reps)
			floorNote := "floor-etcd-put: each arriving member's record written with one lease grant and one put through the same embedded etcd, then one message to each of N open gRPC streams over the same number of connections (grpc-go health Watch)"
			lagNote := ""
			if r := rejoins.Load(); r > 0 {
				lagNote = fmt.Sprintf("; %d streams were refused as \"not a member\" (the coordinator's view lagged their Join by more than its 10s grace) and joined again, as agents do", r)
			}
			o, f := report.Summarize(ours), report.Summarize(floor)
			for _, q := range []struct {
				name   string
				ou, fl float64
			}{{"p50", o.Median, f.Median}, {"p99", o.P99, f.P99}} {
				report.Add(b, report.Row{
					Name: fmt.Sprintf("rendezvous at scale N=%d: last join to released, %s over members", c.n, q.name), Unit: "ms", Better: report.Lower,
					Ours: q.ou, Anchor: "floor-etcd-put", AnchorValue: q.fl,
					OursSpread: o.Spread("ms") + " over members", AnchorSpread: f.Spread("ms") + " over streams",
					Params: params + "; N-1 members wait at the barrier, then the last one joins",
					Note:   "from the last member's Join sent to each member's assignment received (the last member's own Watch included); " + floorNote,
				})
			}
			o, f = report.Summarize(oursAll), report.Summarize(floorAll)
			report.Add(b, report.Row{
				Name: fmt.Sprintf("rendezvous at scale N=%d: N-1 arrive at once to all waiting", c.n), Unit: "ms", Better: report.Lower,
				Ours: o.Median, Anchor: "floor-etcd-put", AnchorValue: f.Median,
				OursSpread: o.Spread("ms"), AnchorSpread: f.Spread("ms"),
				Params: params,
				Note:   "N-1 members join at once; until every one has joined and its stream reports progress at the barrier" + lagNote + "; " + floorNote,
			})
			o, f = report.Summarize(reqs), report.Summarize(floorRv)
			report.Add(b, report.Row{
				Name: fmt.Sprintf("rendezvous at scale N=%d: etcd writes per member", c.n), Unit: "writes/member", Better: report.Lower,
				Ours: o.Median, Anchor: "floor-etcd-put", AnchorValue: 2,
				OursSpread:   fmt.Sprintf("%s; etcd revisions (puts, txns) %s per member", o.Spread("writes"), report.Fmt(report.Summarize(revs).Median)),
				AnchorSpread: fmt.Sprintf("1 lease grant + 1 put; measured %s revisions per member", report.Fmt(f.Median)),
				Params:       params,
				Note:         "write requests muster sends to etcd (puts, transactions, lease grants) for one rendezvous, divided by N; the floor is a member record under a lease of its own",
			})
		})
	}
}

func dial(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

func groupRef(name string) *musterv1.GroupRef {
	return &musterv1.GroupRef{Namespace: "bench", Name: name}
}

// member joins group as m<i> and opens its stream, as an agent does
// (joining again and reopening the stream when the coordinator says it
// does not know the member yet); waiting is closed once the stream reports
// the barrier's progress. It returns when the assignment arrived.
func member(ctx context.Context, c musterv1.RendezvousClient, group string, i, n int, waiting chan<- struct{}) (time.Time, error) {
	id := fmt.Sprintf("m%d", i)
	o := int64(i)
	gen := int64(-1)
	for {
		resp, err := c.Join(ctx, &musterv1.JoinRequest{Group: groupRef(group), MemberId: id, Address: "127.0.0.1", Ordinal: &o, Size: int32(n), MasterPort: 29500, Generation: gen})
		if err != nil {
			return time.Time{}, fmt.Errorf("join %s: %w", id, err)
		}
		gen = resp.GetGeneration()
		stream, err := c.Watch(ctx, &musterv1.WatchRequest{Group: groupRef(group), MemberId: id, Generation: gen})
		if err != nil {
			return time.Time{}, fmt.Errorf("watch %s: %w", id, err)
		}
		for {
			ev, err := stream.Recv()
			if status.Code(err) == codes.NotFound {
				// The replica's view lags the Join; the agent rejoins too.
				rejoins.Add(1)
				break
			}
			if err != nil {
				return time.Time{}, fmt.Errorf("stream %s: %w", id, err)
			}
			if ev.GetProgress() != nil && waiting != nil {
				close(waiting)
				waiting = nil
			}
			if a := ev.GetAssignment(); a != nil {
				if a.Rank != int32(i) {
					return time.Time{}, fmt.Errorf("%s got rank %d, want %d", id, a.Rank, i)
				}
				return time.Now(), nil
			}
		}
	}
}

// rejoins counts streams the coordinator ended with "not a member" (its
// view lagging the Join by more than its grace period).
var rejoins atomic.Int64

// stagedRendezvous runs one rendezvous of n members: n-1 arrive at once
// and wait at the barrier, then the last one joins; member i calls through
// clients[i%len(clients)]. It returns the ms until the n-1 all waited, and
// each member's ms from the last Join to its assignment.
func stagedRendezvous(clients []musterv1.RendezvousClient, group string, n int) (float64, []float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	released := make([]time.Time, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	run := func(i int, waiting chan struct{}) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t, err := member(ctx, clients[i%len(clients)], group, i, n, waiting)
			released[i] = t
			if err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	start := time.Now()
	waiting := make([]chan struct{}, n-1)
	for i := range waiting {
		waiting[i] = make(chan struct{})
		run(i, waiting[i])
	}
	for i, w := range waiting {
		select {
		case <-w:
		case <-ctx.Done():
			wg.Wait()
			return 0, nil, fmt.Errorf("group %s: member %d not waiting at the barrier: %w", group, i, firstErr(errs, ctx.Err()))
		}
	}
	arrived := ms(time.Since(start))
	start = time.Now()
	run(n-1, nil)
	wg.Wait()
	if err := firstErr(errs, nil); err != nil {
		return 0, nil, err
	}
	out := make([]float64, n)
	for i, t := range released {
		out[i] = ms(t.Sub(start))
	}
	return arrived, out, nil
}

func firstErr(errs chan error, otherwise error) error {
	select {
	case err := <-errs:
		return err
	default:
		return otherwise
	}
}

// fanout is the floor's notification path: a bare gRPC server whose
// health service tells every watcher of a name when its status changes.
type fanout struct {
	srv     *health.Server
	clients []healthpb.HealthClient
}

func startFanout(tb testing.TB) *fanout {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := lis.Addr().String()
	gs := grpc.NewServer()
	f := &fanout{srv: health.NewServer()}
	healthpb.RegisterHealthServer(gs, f.srv)
	go gs.Serve(lis)
	tb.Cleanup(gs.Stop)
	for range conns {
		f.clients = append(f.clients, healthpb.NewHealthClient(dial(tb, addr)))
	}
	return f
}

// barrier is the floor of a rendezvous of n members: n-1 of them arrive
// at once (each opens its stream and writes its record: a lease grant and
// a put through co's etcd client), then the last one writes its record and
// all n streams hear one message. It returns the ms until the n-1 were
// written and waiting, each stream's ms from the last arrival to its
// message, and the etcd revisions per member.
func (f *fanout) barrier(co *coordinator.Coordinator, name string, n int) (float64, []float64, float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cli := co.Store.Client()
	f.srv.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	defer f.srv.SetServingStatus(name, healthpb.HealthCheckResponse_SERVICE_UNKNOWN)
	heard := make([]time.Time, n)
	leases := make([]clientv3.LeaseID, n)
	errs := make(chan error, 2*n)
	write := func(i int) {
		lease, err := cli.Grant(ctx, 600)
		if err == nil {
			leases[i] = lease.ID
			_, err = cli.Put(ctx, fmt.Sprintf("/bench-floor/%s/m%d", name, i), "127.0.0.1", clientv3.WithLease(lease.ID))
		}
		if err != nil {
			errs <- fmt.Errorf("floor put %d: %w", i, err)
		}
	}
	rev0 := co.EtcdRevision()
	start := time.Now()
	var ready, wg sync.WaitGroup
	for i := range n {
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i < n-1 {
				write(i)
			}
			waiting := true
			defer func() {
				if waiting {
					ready.Done()
				}
			}()
			s, err := f.clients[i%conns].Watch(ctx, &healthpb.HealthCheckRequest{Service: name})
			if err != nil {
				errs <- err
				return
			}
			for {
				r, err := s.Recv()
				if err != nil {
					errs <- fmt.Errorf("fan-out stream %d: %w", i, err)
					return
				}
				if r.Status == healthpb.HealthCheckResponse_SERVING {
					heard[i] = time.Now()
					return
				}
				if waiting {
					waiting = false
					ready.Done()
				}
			}
		}()
	}
	ready.Wait()
	arrived := ms(time.Since(start))
	if err := firstErr(errs, nil); err != nil {
		return 0, nil, 0, err
	}
	start = time.Now()
	write(n - 1)
	f.srv.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	wg.Wait()
	revs := float64(co.EtcdRevision()-rev0) / float64(n)
	for _, l := range leases {
		if l != 0 {
			cli.Revoke(ctx, l)
		}
	}
	if err := firstErr(errs, nil); err != nil {
		return 0, nil, 0, err
	}
	out := make([]float64, n)
	for i, t := range heard {
		out[i] = ms(t.Sub(start))
	}
	return arrived, out, revs, nil
}
