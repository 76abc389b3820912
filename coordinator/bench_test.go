package coordinator_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/muster-dev/muster/coordinator/testcoord"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// BenchmarkRendezvous measures one group of N in-process members (gRPC
// clients over loopback) meeting at the barrier: the time from the last
// member's Join to every member holding its assignment, and the etcd writes
// it took per member (revisions: puts and transactions; requests: those
// plus lease grants).
func BenchmarkRendezvous(b *testing.B) {
	for _, n := range []int{64, 1024} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) { benchRendezvous(b, n) })
	}
}

func benchRendezvous(b *testing.B, n int) {
	cfg := testcoord.Config(b)
	cfg.MemberTTL = 30 * time.Second
	co := testcoord.Start(b, cfg)
	// Members share a few connections, as agents on a few hosts would
	// share a network path; each still has its own stream and lease.
	const conns = 8
	var clients []musterv1.RendezvousClient
	for i := 0; i < conns; i++ {
		conn, err := grpc.NewClient(co.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		clients = append(clients, musterv1.NewRendezvousClient(conn))
	}
	var (
		lastToAll    []time.Duration
		revPerMember []float64
		reqPerMember []float64
	)
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		b.StopTimer()
		group := fmt.Sprintf("bench-%d-%d", n, it)
		rev0, req0 := co.EtcdRevision(), co.Store.Writes.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var (
			mu       sync.Mutex
			lastJoin time.Time
			lastRecv time.Time
			wg       sync.WaitGroup
			errOnce  sync.Once
			firstErr error
		)
		fail := func(err error) { errOnce.Do(func() { firstErr = err; cancel() }) }
		b.StartTimer()
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c := clients[i%conns]
				id := fmt.Sprintf("m%d", i)
				o := int64(i)
				_, err := c.Join(ctx, &musterv1.JoinRequest{Group: ref(group), MemberId: id, Address: "127.0.0.1", Ordinal: &o, Size: int32(n), MasterPort: 29500, Generation: -1})
				if err != nil {
					fail(fmt.Errorf("join %s: %w", id, err))
					return
				}
				// The last join is the last Join to return: from then on
				// the coordinator has everything it needs.
				mu.Lock()
				if t := time.Now(); t.After(lastJoin) {
					lastJoin = t
				}
				mu.Unlock()
				stream, err := c.Watch(ctx, &musterv1.WatchRequest{Group: ref(group), MemberId: id})
				if err != nil {
					fail(fmt.Errorf("watch %s: %w", id, err))
					return
				}
				for {
					ev, err := stream.Recv()
					if err != nil {
						fail(fmt.Errorf("stream %s: %w", id, err))
						return
					}
					if a := ev.GetAssignment(); a != nil {
						if a.Rank != int32(i) {
							fail(fmt.Errorf("%s got rank %d, want %d", id, a.Rank, i))
						}
						mu.Lock()
						if t := time.Now(); t.After(lastRecv) {
							lastRecv = t
						}
						mu.Unlock()
						return
					}
				}
			}(i)
		}
		wg.Wait()
		b.StopTimer()
		cancel()
		if firstErr != nil {
			b.Fatal(firstErr)
		}
		lastToAll = append(lastToAll, lastRecv.Sub(lastJoin))
		revPerMember = append(revPerMember, float64(co.EtcdRevision()-rev0)/float64(n))
		reqPerMember = append(reqPerMember, float64(co.Store.Writes.Load()-req0)/float64(n))
		// Members leave so that their leases do not expire into the next
		// iteration's write count.
		lctx, lcancel := context.WithTimeout(context.Background(), time.Minute)
		var lwg sync.WaitGroup
		for i := 0; i < n; i++ {
			lwg.Add(1)
			go func(i int) {
				defer lwg.Done()
				clients[i%conns].Leave(lctx, &musterv1.LeaveRequest{Group: ref(group), MemberId: fmt.Sprintf("m%d", i)})
			}(i)
		}
		lwg.Wait()
		lcancel()
		b.StartTimer()
	}
	b.StopTimer()
	sort.Slice(lastToAll, func(i, j int) bool { return lastToAll[i] < lastToAll[j] })
	b.ReportMetric(float64(lastToAll[len(lastToAll)/2].Microseconds())/1000, "ms-last-join-to-all-released(p50)")
	b.ReportMetric(float64(lastToAll[len(lastToAll)-1].Microseconds())/1000, "ms-last-join-to-all-released(max)")
	b.ReportMetric(mean(revPerMember), "etcd-revisions/member")
	b.ReportMetric(mean(reqPerMember), "etcd-write-requests/member")
}

func mean(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
