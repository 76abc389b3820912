package procnode

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	crilogs "k8s.io/cri-client/pkg/logs"
)

// GetContainerLogs serves a container's log for the kubelet API (kubectl
// logs): the kubelet's own reader of CRI log files does the work (tail,
// since, limit, timestamps, follow until the container stops).
func (p *provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts vkapi.ContainerLogOpts) (io.ReadCloser, error) {
	pr := p.lookup(namespace, podName)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on node %s", namespace, podName, p.nodeName)
	}
	var c *ctr
	for _, cand := range append(append([]*ctr{}, pr.inits...), pr.ctrs...) {
		if cand.spec.Name == containerName {
			c = cand
		}
	}
	if c == nil {
		return nil, errdefs.NotFoundf("container %s is not in pod %s/%s", containerName, namespace, podName)
	}
	pr.mu.Lock()
	run := c.restarts
	// The current run's log exists once it started; before its first
	// restart the "current" one may still be the previous run's.
	if c.state.Waiting != nil && c.last.Terminated != nil && run > 0 {
		if _, err := os.Stat(c.logPath(run)); err != nil {
			run--
		}
	}
	pr.mu.Unlock()
	if opts.Previous {
		run--
	}
	if run < 0 {
		return nil, errdefs.InvalidInputf("previous terminated container %q in pod %q not found", containerName, podName)
	}
	path := c.logPath(run)
	if _, err := os.Stat(path); err != nil {
		return nil, errdefs.InvalidInputf("container %q in pod %q is waiting to start: no log yet", containerName, podName)
	}

	lo := &crilogs.LogOptions{Follow: opts.Follow, Timestamp: opts.Timestamps}
	// vk reads an absent tailLines and limitBytes as 0; both mean "all".
	if opts.Tail > 0 {
		n := int64(opts.Tail)
		lo.TailLines = &n
	}
	if opts.LimitBytes > 0 {
		n := int64(opts.LimitBytes)
		lo.LimitBytes = &n
	}
	switch {
	case opts.SinceSeconds > 0:
		lo.Since = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	case !opts.SinceTime.IsZero():
		lo.Since = opts.SinceTime
	}
	r, w := io.Pipe()
	go func() {
		err := crilogs.ReadLogs(ctx, path, c.id(run), lo, runStatus{c: c, run: run}, w, w)
		if err != nil && ctx.Err() == nil {
			w.CloseWithError(fmt.Errorf("read log of %s/%s/%s: %w", namespace, podName, containerName, err))
			return
		}
		w.Close()
	}()
	return r, nil
}

// runStatus tells the kubelet's log reader whether the run of a container
// whose log it follows is still going: ContainerStatus is the one method
// of the CRI runtime service it calls.
type runStatus struct {
	internalapi.RuntimeService
	c   *ctr
	run int32
}

func (s runStatus) ContainerStatus(context.Context, string, bool) (*runtimeapi.ContainerStatusResponse, error) {
	s.c.pr.mu.Lock()
	running := s.c.restarts == s.run && s.c.state.Running != nil
	s.c.pr.mu.Unlock()
	state := runtimeapi.ContainerState_CONTAINER_EXITED
	if running {
		state = runtimeapi.ContainerState_CONTAINER_RUNNING
	}
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: s.c.id(s.run), State: state}}, nil
}
