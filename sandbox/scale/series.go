package scale

import (
	"sort"
	"strconv"
	"time"
)

// Istio's standard metrics (https://istio.io/latest/docs/reference/config/metrics/)
// as the world reports them.
const (
	MetricRequests      = "istio_requests_total"
	MetricTCPOpened     = "istio_tcp_connections_opened_total"
	MetricTCPClosed     = "istio_tcp_connections_closed_total"
	MetricTCPReceived   = "istio_tcp_received_bytes_total"
	MetricTCPSent       = "istio_tcp_sent_bytes_total"
	MetricBuild         = "istio_build"
	jobEnvoy            = "envoy-stats"
	jobIstiod           = "istiod"
	istiodPod           = "istiod-7b9c5d6f8-q2x4z"
	istioSystem         = "istio-system"
	clusterName         = "Kubernetes"
	reporterSource      = "source"
	reporterDestination = "destination"
)

// metricNames indexes series.metric.
var metricNames = []string{MetricRequests, MetricTCPOpened, MetricTCPClosed, MetricTCPReceived, MetricTCPSent, MetricBuild}

const (
	mRequests uint8 = iota
	mTCPOpened
	mTCPClosed
	mTCPReceived
	mTCPSent
	mBuild
)

// QueriedMetrics are the metrics the product's plan and status read; a
// backfill may write only these (see OpenMetricsOptions).
var QueriedMetrics = []string{MetricRequests, MetricTCPOpened, MetricTCPReceived, MetricBuild}

// series is one time series of the world: a counter of a flow as one side's
// proxy reports it, or an istio_build gauge.
type series struct {
	flow   int32 // index in World.Flows; -1 for istio_build
	pod    int32 // istio_build: pod index (namespace*Workloads+workload), -1 for istiod
	metric uint8
	source bool // reported by the client's proxy
}

func (w *World) buildSeries() {
	add := func(s series) {
		name := metricNames[s.metric]
		w.byMetric[name] = append(w.byMetric[name], int32(len(w.series)))
		w.series = append(w.series, s)
	}
	for k := range w.Flows {
		f := &w.Flows[k]
		metrics := []uint8{mRequests}
		if f.TCP {
			metrics = []uint8{mTCPOpened, mTCPClosed, mTCPReceived, mTCPSent}
		}
		for _, m := range metrics {
			add(series{flow: int32(k), pod: -1, metric: m})
			if !f.External() {
				add(series{flow: int32(k), pod: -1, metric: m, source: true})
			}
		}
	}
	for p := 0; p < w.Pods(); p++ {
		add(series{flow: -1, pod: int32(p), metric: mBuild})
	}
	add(series{flow: -1, pod: -1, metric: mBuild})
}

// Series is the number of series the world reports.
func (w *World) Series() int { return len(w.series) }

// rate is how fast s rises, per second.
func (w *World) rate(s *series) float64 {
	if s.flow < 0 {
		return 0
	}
	f := &w.Flows[s.flow]
	switch s.metric {
	case mTCPReceived:
		return f.ByteRate
	case mTCPSent:
		return 4 * f.ByteRate
	}
	return f.Rate
}

// stop is when s stops rising (zero: never).
func (w *World) stop(s *series) time.Time {
	if s.flow < 0 {
		return time.Time{}
	}
	return w.Flows[s.flow].Stop
}

// value is s at t (counters are 0 at Origin; istio_build is 1).
func (w *World) value(s *series, t time.Time) float64 {
	if s.metric == mBuild {
		return 1
	}
	return w.rate(s) * w.active(s, w.Origin, t).Seconds()
}

// increase is how much s rose in [from, to].
func (w *World) increase(s *series, from, to time.Time) float64 {
	return w.rate(s) * w.active(s, from, to).Seconds()
}

// active is how long s rose within [from, to].
func (w *World) active(s *series, from, to time.Time) time.Duration {
	if from.Before(w.Origin) {
		from = w.Origin
	}
	if st := w.stop(s); !st.IsZero() && st.Before(to) {
		to = st
	}
	if !to.After(from) {
		return 0
	}
	return to.Sub(from)
}

// exists reports whether s has samples at t (every series is scraped from
// Origin on).
func (w *World) exists(_ *series, t time.Time) bool { return !t.Before(w.Origin) }

// Label names of each kind of series, sorted, as Istio's proxies report
// them and Prometheus' scrape adds them (job, instance, namespace, pod, app).
var (
	requestLabels = sortedNames("reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
		"source_canonical_service", "source_canonical_revision", "source_cluster", "destination_workload", "destination_workload_namespace",
		"destination_principal", "destination_app", "destination_version", "destination_service", "destination_service_name",
		"destination_service_namespace", "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
		"request_protocol", "response_code", "response_flags", "connection_security_policy",
		"job", "instance", "namespace", "pod", "app")
	tcpLabels   = without(requestLabels, "response_code")
	buildLabels = sortedNames("component", "tag", "job", "instance", "namespace", "pod", "app")
	// leanLabels are the labels a lean backfill keeps: those the product
	// selects or groups by, and what makes each series unique.
	leanLabels = map[string]bool{
		"reporter": true, "connection_security_policy": true, "source_workload": true, "source_workload_namespace": true,
		"source_principal": true, "destination_workload": true, "destination_workload_namespace": true,
		"destination_service_namespace": true, "response_code": true, "component": true, "tag": true,
		"job": true, "instance": true, "namespace": true, "pod": true,
	}
)

func sortedNames(names ...string) []string {
	sort.Strings(names)
	return names
}

func without(names []string, drop string) []string {
	var out []string
	for _, n := range names {
		if n != drop {
			out = append(out, n)
		}
	}
	return out
}

func (w *World) labelNames(s *series) []string {
	switch s.metric {
	case mRequests:
		return requestLabels
	case mBuild:
		return buildLabels
	}
	return tcpLabels
}

// labelPair is one label of a series.
type labelPair struct{ name, value string }

// labels are the series' labels, sorted by name, without __name__; lean
// keeps only leanLabels.
func (w *World) labels(s *series, lean bool) []labelPair {
	names := w.labelNames(s)
	out := make([]labelPair, 0, len(names))
	for _, n := range names {
		if lean && !leanLabels[n] {
			continue
		}
		if v := w.label(s, n); v != "" {
			out = append(out, labelPair{n, v})
		}
	}
	return out
}

// label is the value of one label of s ("" when s has no such label);
// "__name__" is the metric name.
func (w *World) label(s *series, name string) string {
	if name == "__name__" {
		return metricNames[s.metric]
	}
	if s.metric == mBuild {
		return w.buildLabel(s, name)
	}
	f := &w.Flows[s.flow]
	srcKnown := !f.External()
	// The scrape labels are those of the reporting pod.
	podNS, podWL := f.DstNS, f.DstWL
	if s.source {
		podNS, podWL = f.SrcNS, f.SrcWL
	}
	switch name {
	case "reporter":
		if s.source {
			return reporterSource
		}
		return reporterDestination
	case "connection_security_policy":
		switch {
		case s.source:
			return unknown
		case f.Plain:
			return "none"
		}
		return "mutual_tls"
	case "source_workload", "source_app", "source_canonical_service":
		if !srcKnown {
			return unknown
		}
		return w.wlNames[f.SrcWL]
	case "source_workload_namespace":
		if !srcKnown {
			return unknown
		}
		return w.Names[f.SrcNS]
	case "source_principal":
		if !srcKnown || f.Plain {
			return unknown
		}
		return w.Principal(f.SrcNS, f.SrcWL)
	case "source_version":
		if !srcKnown {
			return unknown
		}
		return "v1"
	case "source_canonical_revision":
		if !srcKnown {
			return "latest"
		}
		return "v1"
	case "source_cluster":
		if !srcKnown {
			return unknown
		}
		return clusterName
	case "destination_workload", "destination_app", "destination_canonical_service", "destination_service_name":
		return w.wlNames[f.DstWL]
	case "destination_workload_namespace", "destination_service_namespace":
		return w.Names[f.DstNS]
	case "destination_principal":
		if f.Plain {
			return unknown
		}
		return w.Principal(f.DstNS, f.DstWL)
	case "destination_version", "destination_canonical_revision":
		return "v1"
	case "destination_service":
		return w.wlNames[f.DstWL] + "." + w.Names[f.DstNS] + ".svc.cluster.local"
	case "destination_cluster":
		return clusterName
	case "request_protocol":
		if f.TCP {
			return "tcp"
		}
		return "http"
	case "response_code":
		if f.TCP {
			return ""
		}
		return "200"
	case "response_flags":
		return "-"
	case "job":
		return jobEnvoy
	case "instance":
		return w.PodIP(podNS, podWL) + ":15090"
	case "namespace":
		return w.Names[podNS]
	case "pod":
		return w.PodName(podNS, podWL)
	case "app":
		return w.wlNames[podWL]
	}
	return ""
}

func (w *World) buildLabel(s *series, name string) string {
	if s.pod < 0 {
		switch name {
		case "component":
			return "pilot"
		case "tag":
			return ProxyVersion
		case "job":
			return jobIstiod
		case "instance":
			return "10.64.0.1:15014"
		case "namespace":
			return istioSystem
		case "pod":
			return istiodPod
		case "app":
			return "istiod"
		}
		return ""
	}
	i, j := int(s.pod)/w.Opts.Workloads, int(s.pod)%w.Opts.Workloads
	switch name {
	case "component":
		return "proxy"
	case "tag":
		return ProxyVersion
	case "job":
		return jobEnvoy
	case "instance":
		return w.PodIP(i, j) + ":15090"
	case "namespace":
		return w.Names[i]
	case "pod":
		return w.PodName(i, j)
	case "app":
		return w.wlNames[j]
	}
	return ""
}

// formatFloat is how Prometheus writes a sample value in its JSON (and
// OpenMetrics writers write them): shortest representation, exponent only
// for very small or large magnitudes.
func formatFloat(buf []byte, f float64) []byte {
	abs := f
	if abs < 0 {
		abs = -abs
	}
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	return strconv.AppendFloat(buf, f, format, -1, 64)
}
