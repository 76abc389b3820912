package kubectlmuster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"

	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

type logOptions struct {
	follow     bool
	timestamps bool
	tail       int64
	since      time.Duration
	container  string
}

func (o *options) logsGroup() *cobra.Command {
	var lo logOptions
	cmd := &cobra.Command{
		Use:     "group NAME",
		Aliases: []string{"groups", "g"},
		Short:   "Print every rank's runtime log, interleaved, each line prefixed with its rank",
		Long: `Print the logs of every pod of a group, each line prefixed with its rank
([rank 0]), in time order (with -f, as lines arrive). The container is the
one muster's agent runs the runtime in (muster.dev/container, or the
first). Ranks come from the coordinator; when it cannot be asked, lines
are prefixed with the pod's name.`,
		Example: `  kubectl muster logs group tp-model -n demo
  kubectl muster logs group tp-model -n demo -f --tail 20`,
		Args: exactlyOneGroup,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runLogs(cmd.Context(), args[0], lo)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&lo.follow, "follow", "f", false, "keep streaming new lines until interrupted")
	f.BoolVar(&lo.timestamps, "timestamps", false, "print each line's timestamp")
	f.Int64Var(&lo.tail, "tail", -1, "lines of each pod's log to print first (-1: all)")
	f.DurationVar(&lo.since, "since", 0, "only lines newer than this (e.g. 5m)")
	f.StringVarP(&lo.container, "container", "c", "", "the container to read (default: the runtime's)")
	return cmd
}

// logSource is one pod's log and the prefix of its lines.
type logSource struct {
	pod       v1.Pod
	container string
	prefix    string
	rank      int
}

func (o *options) runLogs(ctx context.Context, name string, lo logOptions) error {
	c, err := o.clients()
	if err != nil {
		return err
	}
	pods, err := groupPods(ctx, c, c.ns, name)
	if err != nil {
		return fmt.Errorf("list the pods of group %s/%s: %w", c.ns, name, err)
	}
	if len(pods) == 0 {
		return fmt.Errorf("group %s/%s has no pods (label %s=%s) in namespace %s", c.ns, name, podapi.LabelGroup, name, c.ns)
	}
	ranks := o.ranks(ctx, c, name)
	var srcs []logSource
	for _, p := range pods {
		s := logSource{pod: p, container: lo.container, rank: 1 << 30}
		if s.container == "" {
			s.container = runtimeContainer(&p)
		}
		if r, ok := ranks[p.Name]; ok && r >= 0 {
			s.prefix, s.rank = fmt.Sprintf("[rank %d] ", r), r
		} else if ranks != nil {
			s.prefix = fmt.Sprintf("[rank - %s] ", p.Name)
		} else {
			s.prefix = fmt.Sprintf("[%s] ", p.Name)
		}
		srcs = append(srcs, s)
	}
	sort.SliceStable(srcs, func(i, j int) bool {
		if srcs[i].rank != srcs[j].rank {
			return srcs[i].rank < srcs[j].rank
		}
		return srcs[i].pod.Name < srcs[j].pod.Name
	})
	if lo.follow {
		return o.follow(ctx, c, srcs, lo)
	}
	return o.merged(ctx, c, srcs, lo)
}

// ranks asks the coordinator which pod holds which rank; nil when it
// cannot be asked (said on stderr).
func (o *options) ranks(ctx context.Context, c *clients, name string) map[string]int {
	co, err := o.connect(ctx, c)
	if err == nil {
		defer co.Close()
		cctx, cancel := o.callCtx(ctx)
		defer cancel()
		var g *musterv1.Group
		if g, err = co.client.GetGroup(cctx, &musterv1.GetGroupRequest{Group: &musterv1.GroupRef{Namespace: c.ns, Name: name}}); err == nil {
			out := map[string]int{}
			for _, m := range g.GetMembers() {
				out[m.GetId()] = int(m.GetRank())
			}
			return out
		}
		err = co.explain(err, "ranks")
	}
	fmt.Fprintf(o.streams.ErrOut, "warning: lines are prefixed with pod names: %v\n", err)
	return nil
}

// runtimeContainer is the container the agent wraps.
func runtimeContainer(p *v1.Pod) string {
	if c := p.Annotations[podapi.AnnotationContainer]; c != "" {
		return c
	}
	if len(p.Spec.Containers) > 0 {
		return p.Spec.Containers[0].Name
	}
	return ""
}

func (lo logOptions) podOptions(container string) *v1.PodLogOptions {
	po := &v1.PodLogOptions{Container: container, Follow: lo.follow, Timestamps: true}
	if lo.tail >= 0 {
		po.TailLines = &lo.tail
	}
	if lo.since > 0 {
		s := int64(lo.since.Seconds())
		po.SinceSeconds = &s
	}
	return po
}

// logLine is one line with the apiserver's timestamp split off.
type logLine struct {
	at   time.Time
	ts   string
	text string
	src  int
}

func splitTimestamp(line string, src int) logLine {
	ts, text, ok := strings.Cut(line, " ")
	if !ok {
		return logLine{text: line, src: src}
	}
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return logLine{text: line, src: src}
	}
	return logLine{at: at, ts: ts, text: text, src: src}
}

func (o *options) write(w io.Writer, s logSource, l logLine, lo logOptions) {
	if lo.timestamps && l.ts != "" {
		fmt.Fprintf(w, "%s%s %s\n", s.prefix, l.ts, l.text)
		return
	}
	fmt.Fprintf(w, "%s%s\n", s.prefix, l.text)
}

// merged reads every pod's log and prints the lines in time order.
func (o *options) merged(ctx context.Context, c *clients, srcs []logSource, lo logOptions) error {
	var all []logLine
	for i, s := range srcs {
		b, err := c.cs.CoreV1().Pods(s.pod.Namespace).GetLogs(s.pod.Name, lo.podOptions(s.container)).DoRaw(ctx)
		if err != nil {
			fmt.Fprintf(o.streams.ErrOut, "warning: %slog of pod %s container %s: %v\n", s.prefix, s.pod.Name, s.container, err)
			continue
		}
		for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			if line != "" {
				all = append(all, splitTimestamp(line, i))
			}
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].at.Before(all[j].at) })
	for _, l := range all {
		o.write(o.streams.Out, srcs[l.src], l, lo)
	}
	return nil
}

// follow streams every pod's log at once, a line at a time as it comes.
func (o *options) follow(ctx context.Context, c *clients, srcs []logSource, lo logOptions) error {
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(srcs))
	for i, s := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := c.cs.CoreV1().Pods(s.pod.Namespace).GetLogs(s.pod.Name, lo.podOptions(s.container)).Stream(ctx)
			if err != nil {
				errs[i] = fmt.Errorf("%slog of pod %s container %s: %w", s.prefix, s.pod.Name, s.container, err)
				return
			}
			defer rc.Close()
			sc := bufio.NewScanner(rc)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				l := splitTimestamp(sc.Text(), i)
				mu.Lock()
				o.write(o.streams.Out, s, l, lo)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			fmt.Fprintf(o.streams.ErrOut, "warning: %v\n", err)
		}
	}
	return ctx.Err()
}
