package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	k8smetrics "k8s.io/component-base/metrics"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/coordinator/metrics"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/e2e/deploy"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/scheduler-plugin/gang"
)

// monitoringValues turn on everything the chart has for monitoring.
var monitoringValues = map[string]any{
	"serviceMonitor": map[string]any{"enabled": true},
	"prometheusRule": map[string]any{"enabled": true},
	"dashboards":     map[string]any{"enabled": true},
}

// notMuster are the metrics the dashboard and the alerts use that muster
// does not export, each on purpose.
var notMuster = map[string]string{
	"up":                                "Prometheus' own: did the target answer its scrape",
	"etcd_server_has_leader":            "etcd's own, from the chart's etcd (its ServiceMonitor)",
	"kube_pod_status_ready":             "kube-state-metrics: a coordinator replica's readiness is its etcd check",
	"kube_pod_container_status_running": "kube-state-metrics: coordinator replicas that run, ready or not",
}

// grafanaVars are the dashboard's variables as a query would see them
// once Grafana fills them in; a variable not listed fails the test.
var grafanaVars = map[string]string{
	"__rate_interval": "2m",
	"__interval":      "1m",
	"__range":         "6h",
	"window":          "1h",
	"coordinator":     "muster-coordinator",
	"scheduler":       "muster-scheduler",
	"etcd":            "muster-etcd",
	"namespace":       ".*",
}

// TestMonitoringNamesOnlyExportedMetrics renders the chart with its
// dashboard and PrometheusRule, parses every PromQL expression in both
// with Prometheus' own parser (the rules as Prometheus loads a rule file,
// templates of their annotations included), and checks that every metric
// they select is one muster's coordinator or scheduler plugin exports, or
// one of notMuster.
func TestMonitoringNamesOnlyExportedMetrics(t *testing.T) {
	known := exportedMetrics(t)
	for name := range notMuster {
		known[name] = true
	}
	objs := render(t, monitoringValues)
	var exprs []queryAt
	exprs = append(exprs, ruleQueries(t, objs)...)
	exprs = append(exprs, dashboardQueries(t, objs)...)
	if len(exprs) < 20 {
		t.Fatalf("found %d queries in the rules and the dashboard; want them all (20 or more)", len(exprs))
	}
	used := map[string]bool{}
	for _, q := range exprs {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Errorf("%s: %v\n%s", q.where, err, q.expr)
			continue
		}
		for _, n := range names {
			used[n] = true
			if !known[n] {
				t.Errorf("%s: metric %s is not exported by muster (nor listed in notMuster)\n%s", q.where, n, q.expr)
			}
		}
	}
	// Every phase of the group's way to ready is on the dashboard.
	for _, m := range []string{"muster_group_time_to_ready_seconds_bucket", "muster_group_phase_duration_seconds_bucket", "muster_groups_waiting", "muster_group_bind_duration_seconds_bucket", "muster_group_restarts_total", "muster_group_phase"} {
		if !used[m] {
			t.Errorf("no query uses %s", m)
		}
	}
}

// A misspelt metric is caught, not read as a query that selects nothing.
func TestMetricNamesCatchesATypo(t *testing.T) {
	known := exportedMetrics(t)
	names, err := metricNames(`max(muster_group_waiting{job="muster-scheduler"}) > 0 and sum(rate(muster_group_admission_attempts_total[5m])) > 0`)
	if err != nil {
		t.Fatal(err)
	}
	var unknown []string
	for _, n := range names {
		if !known[n] {
			unknown = append(unknown, n)
		}
	}
	if !slices.Equal(unknown, []string{"muster_group_waiting"}) {
		t.Errorf("unknown metrics = %v, want [muster_group_waiting] (the typo of muster_groups_waiting)", unknown)
	}
	if _, err := metricNames(`sum(rate(muster_group_restarts_total[5m])`); err == nil {
		t.Error("an unbalanced parenthesis parsed")
	}
}

// TestMonitoringOffByDefault: nothing of the Prometheus Operator (its CRDs
// may not be installed) and no dashboard unless asked for; and rules
// without the ServiceMonitors whose jobs they select are refused.
func TestMonitoringOffByDefault(t *testing.T) {
	for _, o := range render(t, nil) {
		if strings.HasPrefix(o.GetAPIVersion(), "monitoring.coreos.com/") || o.GetLabels()["grafana_dashboard"] != "" {
			t.Errorf("default values render %s", deploy.Describe(o))
		}
	}
	_, err := deploy.RenderChart(chartDir(t), release, map[string]any{"prometheusRule": map[string]any{"enabled": true}})
	if err == nil || !strings.Contains(err.Error(), "serviceMonitor.enabled") {
		t.Errorf("prometheusRule without serviceMonitor: err = %v, want a message naming serviceMonitor.enabled", err)
	}
	withJobs := map[string]any{"prometheusRule": map[string]any{"enabled": true, "jobs": map[string]any{"coordinator": "muster"}}}
	if _, err := deploy.RenderChart(chartDir(t), release, withJobs); err != nil {
		t.Errorf("prometheusRule with its own job names: %v", err)
	}
}

// TestServiceMonitorsFindTheirPorts: each ServiceMonitor selects a Service
// of the chart that has the port it scrapes, and the rules select exactly
// the jobs the ServiceMonitors make (the Services' names).
func TestServiceMonitorsFindTheirPorts(t *testing.T) {
	for _, v := range []struct {
		name   string
		values map[string]any
		jobs   []string
	}{
		{"all", monitoringValues, []string{"muster-coordinator", "muster-etcd", "muster-scheduler"}},
		{"external-etcd-no-scheduler", mergeValues(monitoringValues, map[string]any{
			"etcd":      map[string]any{"external": map[string]any{"endpoints": []any{"http://etcd-0.etcd.infra.svc:2379"}}},
			"scheduler": map[string]any{"enabled": false},
		}), []string{"muster-coordinator"}},
	} {
		t.Run(v.name, func(t *testing.T) {
			objs := render(t, v.values)
			var jobs []string
			for _, sm := range objs {
				if sm.GetKind() != "ServiceMonitor" {
					continue
				}
				sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
				var svcs []*unstructured.Unstructured
				for _, o := range objs {
					if o.GetKind() == "Service" && o.GetNamespace() == sm.GetNamespace() && labels.SelectorFromSet(labels.Set(sel)).Matches(labels.Set(o.GetLabels())) {
						svcs = append(svcs, o)
					}
				}
				if len(svcs) != 1 {
					t.Errorf("%s selects %d Services, want 1", deploy.Describe(sm), len(svcs))
					continue
				}
				jobs = append(jobs, svcs[0].GetName())
				eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
				ports, _, _ := unstructured.NestedSlice(svcs[0].Object, "spec", "ports")
				for _, ep := range eps {
					port := ep.(map[string]any)["port"]
					if !slices.ContainsFunc(ports, func(p any) bool { return p.(map[string]any)["name"] == port }) {
						t.Errorf("%s scrapes port %v, which %s does not have", deploy.Describe(sm), port, deploy.Describe(svcs[0]))
					}
				}
			}
			slices.Sort(jobs)
			if !slices.Equal(jobs, v.jobs) {
				t.Errorf("ServiceMonitors make jobs %v, want %v", jobs, v.jobs)
			}
			ruleJobs := map[string]bool{}
			jobRE := regexp.MustCompile(`job="([^"]+)"`)
			for _, q := range ruleQueries(t, objs) {
				for _, m := range jobRE.FindAllStringSubmatch(q.expr, -1) {
					ruleJobs[m[1]] = true
				}
			}
			if got := slices.Sorted(maps.Keys(ruleJobs)); !slices.Equal(got, v.jobs) {
				t.Errorf("the rules select jobs %v, want those of the ServiceMonitors, %v", got, v.jobs)
			}
		})
	}
}

type queryAt struct {
	where string // what names the query, for messages
	expr  string
}

// ruleQueries returns the expressions of the rendered PrometheusRules,
// after loading each rule group the way Prometheus loads a rule file
// (unknown fields, bad durations, annotation templates are errors).
func ruleQueries(t *testing.T, objs []*unstructured.Unstructured) []queryAt {
	t.Helper()
	var out []queryAt
	for _, o := range objs {
		if o.GetKind() != "PrometheusRule" {
			continue
		}
		spec, _, _ := unstructured.NestedMap(o.Object, "spec")
		b, err := yaml.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		groups, errs := rulefmt.Parse(b, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.NewTextHandler(io.Discard, nil)))
		for _, err := range errs {
			t.Errorf("%s: %v", deploy.Describe(o), err)
		}
		if groups == nil {
			continue
		}
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				where := fmt.Sprintf("%s alert %s", deploy.Describe(o), r.Alert)
				if r.Alert == "" {
					t.Errorf("%s: a rule that is not an alert (record %q)", deploy.Describe(o), r.Record)
				}
				if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
					t.Errorf("%s: want a severity label and summary and description annotations", where)
				}
				out = append(out, queryAt{where, r.Expr})
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no PrometheusRule alerts rendered")
	}
	return out
}

// dashboard is what the test reads of a Grafana dashboard.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

// dashboardQueries returns the PromQL of the rendered dashboards' panels
// and variables, with Grafana's variables filled in (grafanaVars).
func dashboardQueries(t *testing.T, objs []*unstructured.Unstructured) []queryAt {
	t.Helper()
	var out []queryAt
	for _, o := range objs {
		if o.GetKind() != "ConfigMap" || o.GetLabels()["grafana_dashboard"] != "1" {
			continue
		}
		data, _, _ := unstructured.NestedStringMap(o.Object, "data")
		for file, text := range data {
			var d dashboard
			if err := json.Unmarshal([]byte(text), &d); err != nil {
				t.Fatalf("%s %s: %v", deploy.Describe(o), file, err)
			}
			if d.UID == "" || d.Title == "" {
				t.Errorf("%s: no uid or title", file)
			}
			for _, v := range d.Templating.List {
				if v.Type != "query" {
					continue
				}
				q, _ := v.Query.(string)
				if m, ok := v.Query.(map[string]any); ok {
					q, _ = m["query"].(string)
				}
				sel, ok := strings.CutPrefix(q, "label_values(")
				i := strings.LastIndex(sel, ",")
				if !ok || i < 0 {
					t.Errorf("%s: variable %s: query %q is not label_values(selector, label)", file, v.Name, q)
					continue
				}
				out = append(out, queryAt{fmt.Sprintf("%s variable %s", file, v.Name), fill(t, sel[:i])})
			}
			ids := map[int]bool{}
			var walk func([]panel)
			walk = func(ps []panel) {
				for _, p := range ps {
					if ids[p.ID] {
						t.Errorf("%s: panel id %d twice", file, p.ID)
					}
					ids[p.ID] = true
					walk(p.Panels)
					if p.Type == "row" {
						continue
					}
					if len(p.Targets) == 0 || p.Datasource == nil || p.Datasource.UID != "${datasource}" {
						t.Errorf("%s: panel %q: want targets and the datasource variable", file, p.Title)
					}
					refs := map[string]bool{}
					for _, tg := range p.Targets {
						if refs[tg.RefID] {
							t.Errorf("%s: panel %q: refId %s twice", file, p.Title, tg.RefID)
						}
						refs[tg.RefID] = true
						out = append(out, queryAt{fmt.Sprintf("%s panel %q %s", file, p.Title, tg.RefID), fill(t, tg.Expr)})
					}
				}
			}
			walk(d.Panels)
		}
	}
	if len(out) == 0 {
		t.Fatal("no dashboard ConfigMap (label grafana_dashboard: \"1\") rendered")
	}
	return out
}

var grafanaVar = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)`)

// fill puts grafanaVars' values in place of the dashboard's variables.
func fill(t *testing.T, q string) string {
	t.Helper()
	return grafanaVar.ReplaceAllStringFunc(q, func(v string) string {
		m := grafanaVar.FindStringSubmatch(v)
		name := m[1] + m[2]
		val, ok := grafanaVars[name]
		if !ok {
			t.Errorf("query %q uses variable $%s, which the test does not know (grafanaVars)", q, name)
		}
		return val
	})
}

// metricNames parses a PromQL expression and returns the metric names its
// selectors name; a selector without a metric name is an error.
func metricNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	var bad error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && name == "" {
				name = m.Value
			}
		}
		if name == "" {
			bad = fmt.Errorf("selector %s names no metric", vs)
		}
		names = append(names, name)
		return nil
	})
	return names, bad
}

// exportedMetrics gathers the metric names muster serves: the coordinator's
// registry as a replica builds it, with a group and one generation's way
// to ready in it so that every family has a series, and the scheduler
// plugin's metrics. A histogram is selected by its series' names
// (_bucket, _sum, _count), as the dashboard's queries do.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	timing := metrics.NewTiming()
	waiting := rendezvous.State{Size: 1, Phase: rendezvous.Waiting, StartedMs: 1000}
	released := waiting
	released.Phase, released.JoinedMs, released.ReleasedMs = rendezvous.Running, 2000, 2100
	ready := released
	ready.ReadyMs = 9000
	timing.Transition("ns", &waiting, &released)
	timing.Transition("ns", &released, &ready)
	group := &rendezvous.View{Key: podapi.Key{Namespace: "ns", Name: "g"}, State: &ready,
		Members: map[string]rendezvous.Member{"g-0": {ID: "g-0", State: rendezvous.StateReady}}}
	coord, err := metrics.NewRegistry(oneGroup{group}, time.Second, timing).Gather()
	if err != nil {
		t.Fatal(err)
	}
	sched := k8smetrics.NewKubeRegistry()
	gang.RegisterMetrics(sched.MustRegister)
	schedFams, err := sched.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, f := range append(coord, schedFams...) {
		name := f.GetName()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			known[name+"_bucket"], known[name+"_sum"], known[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			known[name], known[name+"_sum"], known[name+"_count"] = true, true, true
		default:
			known[name] = true
		}
	}
	for _, want := range []string{"muster_groups", "muster_group_phase", "muster_group_phase_duration_seconds_bucket", "muster_group_time_to_ready_seconds_count", "muster_groups_waiting", "muster_group_admission_attempts_total", "process_cpu_seconds_total"} {
		if !known[want] {
			t.Fatalf("the registries export no %s: the test no longer sees what muster exports", want)
		}
	}
	return known
}

type oneGroup struct{ v *rendezvous.View }

func (l oneGroup) LoadAll(context.Context) ([]*rendezvous.View, error) {
	return []*rendezvous.View{l.v}, nil
}

// mergeValues returns a copy of a with b's values over it, maps merged deeply.
func mergeValues(a, b map[string]any) map[string]any {
	out := maps.Clone(a)
	for k, v := range b {
		if bm, ok := v.(map[string]any); ok {
			if am, ok := out[k].(map[string]any); ok {
				out[k] = mergeValues(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}
