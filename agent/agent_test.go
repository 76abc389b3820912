package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/muster-dev/muster/agent"
	"github.com/muster-dev/muster/coordinator/testcoord"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// syncBuffer is an io.Writer safe for the runtime's output goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func ord(v int64) *int64 { return &v }

// agentConfig is an agent for member i of a group of size n.
func agentConfig(t *testing.T, coord, group string, n, i int, command ...string) agent.Config {
	t.Helper()
	c := agent.DefaultConfig()
	c.Coordinators = []string{coord}
	c.Namespace = "test"
	c.Group = group
	c.Size = n
	c.MemberID = fmt.Sprintf("%s-%d", group, i)
	c.Address = fmt.Sprintf("127.0.0.%d", i+2)
	c.Ordinal = ord(int64(i))
	c.JoinTimeout = 30 * time.Second
	c.StopGrace = 2 * time.Second
	c.Command = command
	out := &syncBuffer{}
	c.Stdout, c.Stderr = out, out
	c.Logger = testcoord.Logger(t)
	return c
}

// runAll runs the agents concurrently and returns their errors.
func runAll(t *testing.T, cfgs []agent.Config) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i := range cfgs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = agent.Run(ctx, cfgs[i])
		}(i)
	}
	wg.Wait()
	return errs
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("runtime did not write its environment: %v", err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

func TestFourAgentsLaunchTheirRuntimeWithRankEnv(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	dir := t.TempDir()
	const n = 4
	var cfgs []agent.Config
	for i := 0; i < n; i++ {
		cfgs = append(cfgs, agentConfig(t, co.Addr(), "envs", n, i, "sh", "-c", `env > "$0/$MUSTER_MEMBER_ID.env"; echo "arg rank {{.Rank}} of {{.WorldSize}}"`, dir))
	}
	for i, err := range runAll(t, cfgs) {
		if err != nil {
			t.Fatalf("agent %d: %v\n%s", i, err, cfgs[i].Stdout)
		}
	}
	var master string
	for i := 0; i < n; i++ {
		env := readEnv(t, filepath.Join(dir, fmt.Sprintf("envs-%d.env", i)))
		want := map[string]string{
			"RANK": fmt.Sprint(i), "NODE_RANK": fmt.Sprint(i), "GROUP_RANK": fmt.Sprint(i), "MUSTER_RANK": fmt.Sprint(i),
			"WORLD_SIZE": "4", "NNODES": "4", "MUSTER_WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
			"MASTER_ADDR": "127.0.0.2", "MUSTER_LEADER_ADDR": "127.0.0.2", "MUSTER_GENERATION": "0",
			"TORCHELASTIC_RESTART_COUNT": "0", "MUSTER_GROUP": "envs",
		}
		for k, v := range want {
			if env[k] != v {
				t.Errorf("member %d: %s=%q, want %q", i, k, env[k], v)
			}
		}
		if env["MASTER_PORT"] == "" || env["MASTER_PORT"] == "0" {
			t.Errorf("member %d: MASTER_PORT %q, want the leader's port", i, env["MASTER_PORT"])
		}
		if master == "" {
			master = env["MASTER_PORT"]
		} else if env["MASTER_PORT"] != master {
			t.Errorf("member %d: MASTER_PORT %s, others have %s", i, env["MASTER_PORT"], master)
		}
		if out := fmt.Sprint(cfgs[i].Stdout); !strings.Contains(out, fmt.Sprintf("arg rank %d of 4", i)) {
			t.Errorf("member %d: templated argument not rendered; output:\n%s", i, out)
		}
	}
}

func TestOneFailedRuntimeRestartsEveryMemberInPlace(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	dir := t.TempDir()
	// Rank 1 fails in generation 0 after the others have started; every
	// member must run again in generation 1 with the same rank.
	script := `echo "$MUSTER_GENERATION $RANK" >> "$0/$MUSTER_MEMBER_ID.runs"
if [ "$MUSTER_GENERATION" = 0 ]; then
  if [ "$RANK" = 1 ]; then sleep 0.3; echo "rank 1 giving up" >&2; exit 3; fi
  sleep 60
fi`
	const n = 3
	var cfgs []agent.Config
	for i := 0; i < n; i++ {
		cfgs = append(cfgs, agentConfig(t, co.Addr(), "heal", n, i, "sh", "-c", script, dir))
	}
	start := time.Now()
	for i, err := range runAll(t, cfgs) {
		if err != nil {
			t.Fatalf("agent %d: %v\n%s", i, err, cfgs[i].Stdout)
		}
	}
	t.Logf("group healed and completed in %s", time.Since(start).Round(time.Millisecond))
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("heal-%d.runs", i)))
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("0 %d\n1 %d\n", i, i)
		if string(b) != want {
			t.Errorf("member %d ran %q, want %q (generation 0 then 1, same rank)", i, b, want)
		}
	}
}

func TestGroupFailsAfterRestartBudgetAndAgentsSayWhy(t *testing.T) {
	cfg := testcoord.Config(t)
	cfg.MaxRestarts = 1
	co := testcoord.Start(t, cfg)
	var cfgs []agent.Config
	for i := 0; i < 2; i++ {
		cfgs = append(cfgs, agentConfig(t, co.Addr(), "doomed", 2, i, "sh", "-c", `if [ "$RANK" = 0 ]; then echo "CUDA out of memory" >&2; exit 2; fi; sleep 60`))
	}
	for i, err := range runAll(t, cfgs) {
		var ee *agent.ExitError
		if !errors.As(err, &ee) || ee.Code == 0 {
			t.Fatalf("agent %d: %v, want a non-zero exit", i, err)
		}
		for _, want := range []string{"group doomed failed", "exited with code 2", "CUDA out of memory", "member doomed-0"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("agent %d error %q does not contain %q", i, err, want)
			}
		}
	}
}

func TestAgentGivesUpWhenCoordinatorIsUnreachable(t *testing.T) {
	cfg := agentConfig(t, testcoord.FreeAddr(t), "alone", 1, 0, "true")
	cfg.JoinTimeout = 1500 * time.Millisecond
	start := time.Now()
	err := agent.Run(context.Background(), cfg)
	var ee *agent.ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("got %v, want exit code 1", err)
	}
	if !strings.Contains(err.Error(), "could not reach the coordinator") || !strings.Contains(err.Error(), "--join-timeout") {
		t.Fatalf("error %q does not say what went wrong and which flag bounds it", err)
	}
	if d := time.Since(start); d < cfg.JoinTimeout || d > 15*time.Second {
		t.Fatalf("gave up after %s, want about %s", d, cfg.JoinTimeout)
	}
}

func TestAgentRejectsBadConfiguration(t *testing.T) {
	base := func() agent.Config { return agentConfig(t, "127.0.0.1:1", "cfg", 2, 0, "true") }
	tests := []struct {
		name string
		mut  func(*agent.Config)
		want string
	}{
		{"no group", func(c *agent.Config) { c.Group = "" }, "--group is empty"},
		{"size zero", func(c *agent.Config) { c.Size = 0 }, "--size: size 0 is out of range"},
		{"bad runtime", func(c *agent.Config) { c.Runtime = "vllmm" }, `--runtime: runtime "vllmm" is not a known preset`},
		{"no command", func(c *agent.Config) { c.Command = nil }, "no command"},
		{"bad coordinator", func(c *agent.Config) { c.Coordinators = []string{"nohost"} }, `--coordinator "nohost"`},
		{"negative ordinal", func(c *agent.Config) { c.Ordinal = ord(-2) }, "--ordinal -2"},
		{"member id with slash", func(c *agent.Config) { c.MemberID = "a/b" }, "--member-id"},
		{"negative GPUs per node", func(c *agent.Config) { c.GPUsPerNode = -1 }, "--gpus-per-node -1"},
		{"interface with a space", func(c *agent.Config) { c.Interface = "eth0 eth1" }, `--interface "eth0 eth1"`},
		{"vllm parallel size against the group's GPUs", func(c *agent.Config) {
			c.Runtime, c.GPUsPerNode, c.Command = "vllm", 8, []string{"vllm", "serve", "m", "--tensor-parallel-size", "8"}
		}, "runtime vllm: tensor-parallel-size 8 x pipeline-parallel-size 1 = 8 GPUs, but the group has 2 nodes x 8 GPUs per node = 16"},
		{"deepspeed without GPUs per node", func(c *agent.Config) {
			c.Runtime, c.Command = "deepspeed", []string{"deepspeed", "infer.py"}
		}, "--gpus-per-node"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mut(&c)
			err := agent.Run(context.Background(), c)
			var ee *agent.ExitError
			if !errors.As(err, &ee) || ee.Code != 2 || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want exit code 2 and %q", err, tc.want)
			}
		})
	}
}

func TestRanksFollowOrdinalsNotArrival(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	dir := t.TempDir()
	const n = 3
	var cfgs []agent.Config
	for i := 0; i < n; i++ {
		c := agentConfig(t, co.Addr(), "order", n, i, "sh", "-c", `echo "$RANK" > "$0/$MUSTER_MEMBER_ID.rank"`, dir)
		c.Ordinal = ord(int64(100 - 10*i)) // member 0 has the highest ordinal
		cfgs = append(cfgs, c)
	}
	for i, err := range runAll(t, cfgs) {
		if err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
	}
	var got []string
	for i := 0; i < n; i++ {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("order-%d.rank", i)))
		got = append(got, strings.TrimSpace(string(b)))
	}
	if want := []string{"2", "1", "0"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("ranks by member %v, want %v (ordinals 100, 90, 80)", got, want)
	}
}

func TestEveryMemberServesTheGroupEndpointOnceAllRanksAreReady(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	runtimePort, endpointPort := freePort(t), freePort(t)
	// The leader's runtime is a small HTTP server that comes up after a
	// delay; the worker's runtime just runs.
	server := fmt.Sprintf(`import http.server, os, time
if os.environ["RANK"] != "0":
    time.sleep(600)
time.sleep(1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("served by rank 0 of " + os.environ["WORLD_SIZE"]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((os.environ["MUSTER_ADDRESS"], %d), H).serve_forever()`, runtimePort)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		c := agentConfig(t, co.Addr(), "endpoint", 2, i, "python3", "-c", server)
		c.ReadyPort, c.EndpointPort = runtimePort, endpointPort
		go func() { errs <- agent.Run(ctx, c) }()
	}
	urls := []string{fmt.Sprintf("http://127.0.0.2:%d/v1", endpointPort), fmt.Sprintf("http://127.0.0.3:%d/v1", endpointPort)}
	saw503 := false
	for _, u := range urls {
		deadline := time.Now().Add(45 * time.Second)
		for {
			resp, err := http.Get(u)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" {
					saw503 = true
				}
				if resp.StatusCode == 200 {
					if string(b) != "served by rank 0 of 2" {
						t.Fatalf("%s answered %q", u, b)
					}
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never answered 200 (last error %v)", u, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !saw503 {
		t.Error("the endpoint never answered 503 while the group was forming")
	}
	cancel()
	for i := 0; i < 2; i++ {
		<-errs
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestAgentsMoveToAnotherReplicaWhenTheirsDies(t *testing.T) {
	etcd := testcoord.Etcd(t)
	cfgA, cfgB := testcoord.Config(t), testcoord.Config(t)
	cfgA.EtcdEndpoints, cfgB.EtcdEndpoints = []string{etcd}, []string{etcd}
	a := testcoord.Start(t, cfgA)
	b := testcoord.Start(t, cfgB)
	dir := t.TempDir()
	const n = 4
	// Every agent knows both replicas; pick_first puts them all on A.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	errs := make(chan error, n)
	var cfgs []agent.Config
	for i := 0; i < n; i++ {
		c := agentConfig(t, a.Addr(), "failover", n, i, "sh", "-c", `echo "$RANK" > "$0/$MUSTER_MEMBER_ID.rank"`, dir)
		c.Coordinators = []string{a.Addr(), b.Addr()}
		cfgs = append(cfgs, c)
	}
	for _, c := range cfgs[:n-1] {
		go func(c agent.Config) { errs <- agent.Run(ctx, c) }(c)
	}
	// Three wait at the barrier on A; A dies; the fourth arrives.
	cl := testcoord.Client(t, b.Addr())
	waitJoined(t, cl, "failover", n-1)
	a.Close()
	go func() { errs <- agent.Run(ctx, cfgs[n-1]) }()
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("agent: %v", err)
		}
	}
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("failover-%d.rank", i)))
		if err != nil {
			t.Fatal(err)
		}
		r := strings.TrimSpace(string(b))
		if seen[r] || r != fmt.Sprint(i) {
			t.Fatalf("member %d got rank %s (seen %v): ranks must stay the ordinals, with no duplicate", i, r, seen)
		}
		seen[r] = true
	}
}

// waitJoined waits until n members are attached to the group.
func waitJoined(t *testing.T, c musterv1.RendezvousClient, group string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		g, err := c.GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: &musterv1.GroupRef{Namespace: "test", Name: group}})
		if err == nil && len(g.Members) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s: fewer than %d members after 30s (%v, %v)", group, n, g, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStuckRuntimeCountsAsFailed(t *testing.T) {
	cfg := testcoord.Config(t)
	cfg.MaxRestarts = 0
	co := testcoord.Start(t, cfg)
	c := agentConfig(t, co.Addr(), "stuck", 1, 0, "sleep", "600")
	// The runtime never listens on its serving port: stuck.
	c.ReadyPort, c.ReadyTimeout = freePort(t), 700*time.Millisecond
	start := time.Now()
	err := agent.Run(context.Background(), c)
	var ee *agent.ExitError
	if !errors.As(err, &ee) || ee.Code == 0 || !strings.Contains(err.Error(), "not ready within 700ms (--ready-timeout)") {
		t.Fatalf("got %v, want the group failed because the runtime was stuck", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestGroupFormsAndHealsWithOneOfThreeEtcdMembersDown(t *testing.T) {
	members := testcoord.EtcdCluster(t, 3)
	var urls []string
	for _, m := range members {
		urls = append(urls, m.ClientURL)
	}
	cfgA, cfgB := testcoord.Config(t), testcoord.Config(t)
	cfgA.EtcdEndpoints, cfgB.EtcdEndpoints = urls, urls
	a := testcoord.Start(t, cfgA)
	b := testcoord.Start(t, cfgB)
	dir := t.TempDir()
	const n = 4
	// Rank 1 fails once, so the group also restarts while etcd is degraded.
	script := `echo "$MUSTER_GENERATION $RANK" >> "$0/$MUSTER_MEMBER_ID.runs"
if [ "$MUSTER_GENERATION" = 0 ] && [ "$RANK" = 1 ]; then exit 3; fi`
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	errs := make(chan error, n)
	var cfgs []agent.Config
	for i := 0; i < n; i++ {
		c := agentConfig(t, a.Addr(), "quorum", n, i, "sh", "-c", script, dir)
		// Half the agents on each replica.
		c.Coordinators = []string{[]string{a.Addr(), b.Addr()}[i%2]}
		cfgs = append(cfgs, c)
	}
	for _, c := range cfgs[:n-1] {
		go func(c agent.Config) { errs <- agent.Run(ctx, c) }(c)
	}
	waitJoined(t, testcoord.Client(t, b.Addr()), "quorum", n-1)
	members[2].Close() // one of three etcd members goes away mid-rendezvous
	go func() { errs <- agent.Run(ctx, cfgs[n-1]) }()
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("agent: %v", err)
		}
	}
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("quorum-%d.runs", i)))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("0 %d\n1 %d\n", i, i); string(b) != want {
			t.Errorf("member %d ran %q, want %q", i, b, want)
		}
	}
}

func TestReplicaDiesInTheMiddleOfA64MemberRendezvous(t *testing.T) {
	// Under load this once caught a member whose late READY report
	// overtook its EXITED one, so the group never completed; the agent now
	// orders its reports and the coordinator refuses EXITED -> READY.
	etcd := testcoord.Etcd(t)
	cfgA, cfgB := testcoord.Config(t), testcoord.Config(t)
	cfgA.EtcdEndpoints, cfgB.EtcdEndpoints = []string{etcd}, []string{etcd}
	a := testcoord.Start(t, cfgA)
	b := testcoord.Start(t, cfgB)
	dir := t.TempDir()
	const n = 64
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, n)
	run := func(i int) {
		c := agentConfig(t, a.Addr(), "big", n, i, "sh", "-c", `echo "$RANK" > "$0/$MUSTER_MEMBER_ID.rank"`, dir)
		c.Address = "127.0.0.1"
		c.NoGossip = true // 64 gossip nodes on 2 cores only add noise here
		if i%2 == 0 {
			c.Coordinators = []string{a.Addr(), b.Addr()}
		} else {
			c.Coordinators = []string{b.Addr(), a.Addr()}
		}
		errs <- agent.Run(ctx, c)
	}
	for i := 0; i < n/2; i++ {
		go run(i)
	}
	waitJoined(t, testcoord.Client(t, b.Addr()), "big", n/2)
	a.Close() // half the agents lose their replica mid-rendezvous
	for i := n / 2; i < n; i++ {
		go run(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			g, gerr := testcoord.Client(t, b.Addr()).GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: &musterv1.GroupRef{Namespace: "test", Name: "big"}})
			var states []string
			for _, m := range g.GetMembers() {
				if m.GetState() != musterv1.RuntimeState_RUNTIME_STATE_EXITED {
					states = append(states, fmt.Sprintf("%s:%v:live=%v:gen=%d", m.GetId(), m.GetState(), m.GetLive(), m.GetGeneration()))
				}
			}
			t.Fatalf("agent: %v; group phase %v generation %d; members not exited: %v (%v)", err, g.GetPhase(), g.GetGeneration(), states, gerr)
		}
	}
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("big-%d.rank", i)))
		if err != nil {
			t.Fatal(err)
		}
		r := strings.TrimSpace(string(b))
		if prev, dup := seen[r]; dup || r != fmt.Sprint(i) {
			t.Fatalf("member %d got rank %s (also member %d's): ranks must be the ordinals, unique", i, r, prev)
		}
		seen[r] = i
	}
}
