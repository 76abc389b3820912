package rendezvous

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/muster-dev/muster/bench/report"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// The size of the 1000-node gang rows (bench/sched): 1000 groups of 4.
const (
	memGroups = 1000
	memSize   = 4
)

// BenchmarkMemory measures bin/coordinator's memory once 1000 groups of 4
// have formed and every member (4000, in-process gRPC clients on 8
// connections) holds its stream open, as live agents do. The anchor is a
// bare etcd process (etcd's own server, the one the coordinator embeds)
// holding the least a store of the same members must: per member one
// lease kept alive, one key, and one watch on its group.
func BenchmarkMemory(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// MUSTER_BENCH_COORD_PROFILE=DIR: the coordinator serves pprof on
	// loopback and its heap profile, once every group formed, is saved to
	// DIR/coordinator-memory.heap.pprof (its /metrics and goroutines beside).
	profDir := os.Getenv("MUSTER_BENCH_COORD_PROFILE")
	var extra []string
	metrics := FreeAddr(b, "127.0.0.1")
	if profDir != "" {
		extra = []string{"--metrics-listen", metrics, "--pprof"}
	}
	addr, co := coordinatorProc(b, extra...)
	var clients []musterv1.RendezvousClient
	for range conns {
		clients = append(clients, musterv1.NewRendezvousClient(dial(b, addr)))
	}
	idle, _ := co.Memory()
	began := time.Now()
	var eg errgroup.Group
	eg.SetLimit(512)
	for g := range memGroups {
		group := fmt.Sprintf("mem-%d", g)
		for i := range memSize {
			c := clients[(g*memSize+i)%len(clients)]
			eg.Go(func() error {
				// member returns once assigned; its stream stays open
				// until ctx ends.
				_, err := member(ctx, c, group, i, memSize, nil)
				return err
			})
		}
	}
	if err := eg.Wait(); err != nil {
		b.Fatal(err)
	}
	formed := time.Since(began)
	ours, oursPeak := co.Memory()
	if ours == 0 {
		b.Fatal("coordinator memory unknown (no VmRSS in /proc/PID/status)")
	}
	if profDir != "" {
		saveURL(b, "http://"+metrics+"/debug/pprof/heap", filepath.Join(profDir, "coordinator-memory.heap.pprof"))
		saveURL(b, "http://"+metrics+"/metrics", filepath.Join(profDir, "coordinator-memory.metrics"))
		saveURL(b, "http://"+metrics+"/debug/pprof/goroutine", filepath.Join(profDir, "coordinator-memory.goroutine.pprof"))
	}

	etcdIdle, theirs, theirsPeak := etcdFloorMemory(b, ctx)
	mib := func(v int64) float64 { return float64(v) / (1 << 20) }
	report.Add(b, report.Row{
		Name: fmt.Sprintf("coordinator memory with %d groups of %d formed", memGroups, memSize), Unit: "MiB", Better: report.Lower,
		Ours: mib(ours), Anchor: "floor-etcd", AnchorValue: mib(theirs),
		OursSpread:   fmt.Sprintf("idle %s MiB, peak %s MiB; all formed in %s", report.Fmt(mib(idle)), report.Fmt(mib(oursPeak)), formed.Round(time.Millisecond)),
		AnchorSpread: fmt.Sprintf("idle %s MiB, peak %s MiB", report.Fmt(mib(etcdIdle)), report.Fmt(mib(theirsPeak))),
		Params: fmt.Sprintf("%d members, each with its Watch stream open (in-process gRPC clients on %d loopback connections); resident memory (VmRSS) of the process once all are assigned; one run",
			memGroups*memSize, conns),
		Note: "muster: bin/coordinator (its embedded etcd included); floor-etcd: a bare etcd process (bench/cmd/etcdfloor, etcd's etcdmain) holding per member one lease kept alive, one key under it and one watch on its group's prefix",
	})
}

func saveURL(b *testing.B, url, file string) {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("saved %s", file)
}

// etcdFloorMemory starts a bare etcd, stores memGroups x memSize members
// in it the least a store must (lease kept alive, key, watch of the group)
// and returns its resident memory before and after, and its peak.
func etcdFloorMemory(b *testing.B, ctx context.Context) (idle, rss, peak int64) {
	bin := filepath.Join(b.TempDir(), "etcd")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/muster-dev/muster/bench/cmd/etcdfloor").CombinedOutput(); err != nil {
		b.Fatalf("build bench/cmd/etcdfloor: %v\n%s", err, out)
	}
	client, peer := "http://"+FreeAddr(b, "127.0.0.1"), "http://"+FreeAddr(b, "127.0.0.1")
	p := Start(b, nil, bin, "--data-dir", b.TempDir(), "--name", "floor",
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "floor="+peer, "--log-level", "error")
	var clis []*clientv3.Client
	for range conns {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 30 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cli.Close() })
		clis = append(clis, cli)
	}
	deadline, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, err := clis[0].Get(deadline, "ready"); err == nil {
			break
		} else if deadline.Err() != nil {
			b.Fatalf("etcd floor never answered: %v\n%s", err, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	idle, _ = p.Memory()
	var eg errgroup.Group
	eg.SetLimit(512)
	for g := range memGroups {
		prefix := fmt.Sprintf("/floor/mem-%d/", g)
		for i := range memSize {
			cli := clis[(g*memSize+i)%len(clis)]
			eg.Go(func() error {
				lease, err := cli.Grant(ctx, 5)
				if err != nil {
					return err
				}
				ka, err := cli.KeepAlive(ctx, lease.ID)
				if err != nil {
					return err
				}
				go func() {
					for range ka {
					}
				}()
				w := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
				if created, ok := <-w; !ok || created.Err() != nil {
					return fmt.Errorf("watch %s: %v", prefix, created.Err())
				}
				go func() {
					for range w {
					}
				}()
				_, err = cli.Put(ctx, fmt.Sprintf("%sm%d", prefix, i), "127.0.0.1", clientv3.WithLease(lease.ID))
				return err
			})
		}
	}
	if err := eg.Wait(); err != nil {
		b.Fatalf("etcd floor: %v", err)
	}
	// Every watch was created before its member's put.
	resp, err := clis[0].Get(ctx, "/floor/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != memGroups*memSize {
		b.Fatalf("etcd floor holds %v keys (%v), want %d", resp, err, memGroups*memSize)
	}
	rss, peak = p.Memory()
	if rss == 0 {
		b.Fatal("etcd floor memory unknown")
	}
	return idle, rss, peak
}
