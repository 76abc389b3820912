package preset

import (
	"sort"
	"strings"
)

// ServiceLink is an environment variable that Kubernetes injected for a
// Service (the pod's enableServiceLinks, on by default) and whose name
// falls under a prefix the runtime reads as its own setting: a Service
// named "vllm" injects VLLM_PORT=tcp://10.0.0.1:8000, which vLLM reads as
// its port and fails on (vllm/envs.py get_vllm_port: "appears to be a URI.
// This may be caused by a Kubernetes service discovery issue"; vLLM's
// docs/serving/env_vars.md warns not to name a Service "vllm").
type ServiceLink struct {
	// Var is the variable's name, Value its value.
	Var, Value string
	// Service is the name of the Service it comes from.
	Service string
}

// ServiceLinks returns the service-link variables in environ (KEY=VALUE
// entries) that collide with preset name's EnvPrefixes. Kubernetes names
// them after the Service, upper-cased with dashes as underscores:
// {SVC}_SERVICE_HOST, and {SVC}_PORT=tcp://IP:PORT (udp://, sctp://)
// https://kubernetes.io/docs/concepts/services-networking/service/#environment-variables
func ServiceLinks(name string, environ []string) []ServiceLink {
	p, err := Get(name)
	if err != nil || len(p.EnvPrefixes) == 0 {
		return nil
	}
	var out []ServiceLink
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		svc, ok := serviceOf(k, v)
		if !ok {
			continue
		}
		for _, prefix := range p.EnvPrefixes {
			if strings.HasPrefix(k, prefix) {
				out = append(out, ServiceLink{Var: k, Value: v, Service: svc})
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Var < out[j].Var })
	return out
}

// serviceOf returns the Service that variable k=v was injected for, if it
// has a service link's shape.
func serviceOf(k, v string) (string, bool) {
	var svc string
	switch {
	case strings.HasSuffix(k, "_SERVICE_HOST"):
		svc = strings.TrimSuffix(k, "_SERVICE_HOST")
	case strings.HasSuffix(k, "_PORT") && (strings.HasPrefix(v, "tcp://") || strings.HasPrefix(v, "udp://") || strings.HasPrefix(v, "sctp://")):
		svc = strings.TrimSuffix(k, "_PORT")
	default:
		return "", false
	}
	if svc == "" {
		return "", false
	}
	return strings.ToLower(strings.ReplaceAll(svc, "_", "-")), true
}
