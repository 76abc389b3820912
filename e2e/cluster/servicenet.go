package cluster

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// The local cluster runs no kube-proxy: nothing serves a Service's
// ClusterIP. Without a route of its own, a request to one (a user's curl,
// a pod's client that resolved a Service) would follow the host's default
// route and leave the machine. serviceRoute routes the service range
// nowhere instead: a blackhole route on the host, so that a connection to
// a ClusterIP fails at once ("Invalid argument" / "No route to host") and
// no packet leaves. Clusters on one machine share the default range, so
// each adds its own route, told apart by its metric, and removes only that
// one: the range stays routed nowhere while any cluster runs.
type serviceRoute struct {
	prefix netip.Prefix
	metric string
	ip     string
}

// routeServiceRangeNowhere adds the blackhole route for cidr, for a
// cluster whose state lives in dir. Without root or iproute2 it adds
// nothing and says why (ok false).
func routeServiceRangeNowhere(dir, cidr string) (r *serviceRoute, why string, err error) {
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, "", fmt.Errorf("service CIDR %q: %w", cidr, err)
	}
	ip, lookErr := exec.LookPath("ip")
	switch {
	case os.Geteuid() != 0:
		return nil, "not root", nil
	case lookErr != nil:
		return nil, "no ip command (iproute2)", nil
	}
	h := fnv.New32a()
	h.Write([]byte(dir))
	r = &serviceRoute{prefix: prefix.Masked(), metric: fmt.Sprint(1000 + h.Sum32()%60000), ip: ip}
	r.remove() // a killed run's leftover
	if out, err := exec.Command(ip, "route", "add", "blackhole", r.prefix.String(), "metric", r.metric).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("route the service range %s nowhere: ip route add blackhole: %v: %s", r.prefix, err, strings.TrimSpace(string(out)))
	}
	return r, "", nil
}

func (r *serviceRoute) remove() {
	if r != nil {
		_ = exec.Command(r.ip, "route", "del", "blackhole", r.prefix.String(), "metric", r.metric).Run()
	}
}

// routeServiceRange routes the service range nowhere (see serviceRoute),
// or warns that it cannot.
func (c *Cluster) routeServiceRange(context.Context) error {
	if _, err := kubernetesServiceIP(c.cfg.ServiceCIDR); err != nil {
		return err
	}
	var why string
	var err error
	if c.svcRoute, why, err = routeServiceRangeNowhere(c.stateDir, c.cfg.ServiceCIDR); err != nil {
		return err
	} else if why != "" {
		c.log.Warn("the service range is not routed nowhere ("+why+"): a request to a ClusterIP would follow the default route and leave the machine", "range", c.cfg.ServiceCIDR)
	}
	return nil
}

// kubernetesServiceIP is the address the `kubernetes` Service takes: the
// service range's first. Only IPv4 ranges are supported here.
func kubernetesServiceIP(cidr string) (net.IP, error) {
	_, svcNet, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("service CIDR %q: %w", cidr, err)
	}
	ip := slices.Clone(svcNet.IP.To4())
	if ip == nil {
		return nil, fmt.Errorf("service CIDR %q: only IPv4 is supported here", cidr)
	}
	ip[3]++
	return ip, nil
}
