// Package istiometrics owns what the tool knows about Istio's standard
// metrics (https://istio.io/latest/docs/reference/config/metrics/): the
// metric and label names it reads, the selectors built from them (such as
// "plaintext as the destination reports it"), PromQL escaping of label
// values, and the one way to send a query to a Prometheus-compatible API
// (the per-query timeout applied, warnings and infos handed back, never
// dropped). Every other package builds its PromQL from these names, so a
// label Istio renames is changed here once.
package istiometrics

import (
	"fmt"
	"strings"
)

// Metrics of Istio's standard set, as Prometheus names them.
const (
	RequestsTotal        = "istio_requests_total"
	TCPConnectionsOpened = "istio_tcp_connections_opened_total"
	TCPConnectionsClosed = "istio_tcp_connections_closed_total"
	TCPReceivedBytes     = "istio_tcp_received_bytes_total"
	// Build is a gauge per component and version (labels component, tag).
	Build = "istio_build"
)

// Labels of the standard metrics the tool reads. Untyped, so they index a
// model.Metric directly.
const (
	LabelReporter                     = "reporter"
	LabelConnectionSecurityPolicy     = "connection_security_policy"
	LabelDestinationWorkload          = "destination_workload"
	LabelDestinationWorkloadNamespace = "destination_workload_namespace"
	LabelDestinationServiceNamespace  = "destination_service_namespace"
	LabelSourceWorkload               = "source_workload"
	LabelSourceWorkloadNamespace      = "source_workload_namespace"
	LabelSourcePrincipal              = "source_principal"
	LabelResponseCode                 = "response_code"
	LabelResponseFlags                = "response_flags"
	// LabelComponent and LabelTag are istio_build's labels: which component
	// (pilot, istiod, proxy) runs which version.
	LabelComponent = "component"
	LabelTag       = "tag"
)

// Label values with a meaning of their own.
const (
	// ReporterSource and ReporterDestination say which side's proxy
	// recorded the sample.
	ReporterSource      = "source"
	ReporterDestination = "destination"
	// MutualTLS is connection_security_policy of traffic that used mTLS.
	// The source side always reports "unknown": only the destination's
	// report says whether the connection was plaintext.
	MutualTLS = "mutual_tls"
	// Unknown is Istio's value for a peer it could not identify (no
	// sidecar, or outside the mesh).
	Unknown = "unknown"
)

// EscapeLabelValue quotes s as a PromQL label value (a Go-style double-quoted
// string, which PromQL accepts), so a value can never end the matcher.
func EscapeLabelValue(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// EscapeRegexValue returns a regex label-matcher value matching exactly one
// of the given strings (RE2 metacharacters escaped, then quoted).
func EscapeRegexValue(values []string) string {
	parts := make([]string, len(values))
	for i, v := range values {
		parts[i] = regexpQuote(v)
	}
	return EscapeLabelValue(strings.Join(parts, "|"))
}

func regexpQuote(s string) string {
	const special = `\.+*?()|[]{}^$`
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(special, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Eq is the matcher label="value".
func Eq(label, value string) string { return label + "=" + EscapeLabelValue(value) }

// Neq is the matcher label!="value".
func Neq(label, value string) string { return label + "!=" + EscapeLabelValue(value) }

// Re is the matcher label=~"pattern"; pattern is a regex, quoted but not
// escaped (use OneOf for literal values).
func Re(label, pattern string) string { return label + "=~" + EscapeLabelValue(pattern) }

// NotRe is the matcher label!~"pattern".
func NotRe(label, pattern string) string { return label + "!~" + EscapeLabelValue(pattern) }

// OneOf is the matcher label=~"v1|v2|..." matching exactly the given values.
func OneOf(label string, values []string) string { return label + "=~" + EscapeRegexValue(values) }

// Selector joins matchers into the inside of a series selector's braces,
// skipping empty ones.
func Selector(matchers ...string) string {
	out := make([]string, 0, len(matchers))
	for _, m := range matchers {
		if m != "" {
			out = append(out, m)
		}
	}
	return strings.Join(out, ",")
}

// Grouping joins label names for `by (...)`.
func Grouping(labels ...string) string { return strings.Join(labels, ", ") }

// Matchers used throughout.
var (
	// ByDestination selects what the destination's proxy reported.
	ByDestination = Eq(LabelReporter, ReporterDestination)
	// BySource selects what the client's proxy reported.
	BySource = Eq(LabelReporter, ReporterSource)
	// NotMutualTLS selects traffic that was not mutual TLS.
	NotMutualTLS = Neq(LabelConnectionSecurityPolicy, MutualTLS)
)

// inNamespace is label="namespace", or nothing for the whole mesh ("").
func inNamespace(label, namespace string) string {
	if namespace == "" {
		return ""
	}
	return Eq(label, namespace)
}

// Destination selects traffic into namespace ("" for the whole mesh) as
// the destination's proxies report it.
func Destination(namespace string) string {
	return Selector(ByDestination, inNamespace(LabelDestinationWorkloadNamespace, namespace))
}

// SourceToward selects meshed clients' own reports of traffic toward the
// services of namespace ("" for the whole mesh).
func SourceToward(namespace string) string {
	return Selector(BySource, inNamespace(LabelDestinationServiceNamespace, namespace))
}

// DestinationPlaintext selects traffic into namespace ("" for the whole
// mesh) that the destination's proxy reports as not mutual TLS: the
// plaintext it still accepts (under STRICT, refused plaintext leaves no
// metric). Classified on the destination's report because the source side
// always reports connection_security_policy="unknown".
func DestinationPlaintext(namespace string) string {
	return Selector(ByDestination, NotMutualTLS, inNamespace(LabelDestinationWorkloadNamespace, namespace))
}

// IncreaseBy is the increase of counter metric over the last window (a
// PromQL duration), summed by the grouping labels, of the series sel
// selects. A series that appears inside the window is counted from its
// first sample on: what its first scrape already holds is not in it (see
// NewSeriesBy).
func IncreaseBy(metric, sel, by, window string) string {
	return fmt.Sprintf("sum by (%s) (increase(%s{%s}[%s]))", by, metric, sel, window)
}

// GrowthBy is, summed by the grouping labels, how much each series of
// counter metric that sel selects grew over the last window (a PromQL
// duration), read at its two ends only: its value now less its value
// window ago; its whole value when it did not exist window ago (it began
// in the window) or is lower now (it was reset, so it counts from the
// reset on). Two points a series, where increase reads every sample of
// the window: Prometheus answers it in a fraction of the time on a large
// mesh (see internal/telemetry). What it cannot see: a series that stopped
// being scraped before now (a deleted pod) counts for nothing, and a
// reset loses what came before it, so it is a lower bound of IncreaseBy
// (without its extrapolation to the window's ends). Good for sizing
// traffic; never for deciding that something did not happen.
func GrowthBy(metric, sel, by, window string) string {
	s := fmt.Sprintf("%s{%s}", metric, sel)
	return fmt.Sprintf("sum by (%s) (((%s - %s offset %s) >= 0) or %s)", by, s, s, window, s)
}

// PresentBy is, by the grouping labels, 1 for every group that holds a
// series of any of metrics selected by one of sels now (an instant query:
// scraped within Prometheus' lookback, 5m by default). It reads one point
// a series.
func PresentBy(metrics []string, sels []string, by string) string {
	var parts []string
	for _, m := range metrics {
		for _, sel := range sels {
			parts = append(parts, fmt.Sprintf("%s{%s}", m, sel))
		}
	}
	return fmt.Sprintf("group by (%s) (%s)", by, strings.Join(parts, " or "))
}

// LastRiseBy is, by the grouping labels, when any of the counter metrics
// that sel selects last rose within the last window, in seconds since the
// epoch (window, step and rise are PromQL durations). It is the evaluation
// time itself when they rose within the last rise; otherwise the latest
// step of a subquery over the window (Prometheus aligns subquery steps to
// multiples of step since the epoch, not to the evaluation time, hence the
// first term) at which their increase over rise was positive. timestamp()
// of anything but a plain selector returns each sample's evaluation time
// (the time of the step), so max_over_time of it is the latest such step.
// With rise longer than step by at least a scrape interval, consecutive
// steps overlap and no rise between two scrapes goes unseen; the time is
// then late by less than rise, never early. Only flows with a rise in the
// window have a value.
func LastRiseBy(metrics []string, sel, by, window, step, rise string) string {
	parts := make([]string, len(metrics))
	for i, m := range metrics {
		parts[i] = IncreaseBy(m, sel, by, rise) + " > 0"
	}
	rose := strings.Join(parts, " or ")
	return fmt.Sprintf("timestamp(%s) or max_over_time(timestamp(%s)[%s:%s])", rose, rose, window, step)
}

// NewSeriesBy is, summed by the grouping labels, the last value of every
// series of counter metric that sel selects which holds a positive count
// within the last window but did not exist `absent` ago (a PromQL
// duration, the offset of the instant it must have been absent at). Such a
// series began after that instant, so its whole count is requests made
// since: the part IncreaseBy cannot see (a client whose first scrape
// already holds all its requests shows an increase of 0, or none at all).
func NewSeriesBy(metric, sel, by, window, absent string) string {
	return fmt.Sprintf("sum by (%s) ((last_over_time(%s{%s}[%s]) > 0) unless %s{%s} offset %s)", by, metric, sel, window, metric, sel, absent)
}

// SeriesCount counts the series of metric that sel selects now (an instant
// query: the series scraped within Prometheus' lookback). Empty, not 0,
// when there are none.
func SeriesCount(metric, sel string) string {
	return fmt.Sprintf("count(%s{%s})", metric, sel)
}
