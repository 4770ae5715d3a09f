// Package telemetry reads the Istio standard metrics the planner needs from
// a Prometheus-compatible API (Prometheus, Thanos, Mimir, VictoriaMetrics) in
// a fixed, small number of queries whatever the size of the mesh: traffic
// aggregated by namespace pair, the plaintext flows in detail, and the Istio
// version. Warnings and infos in the answers are surfaced, never dropped.
//
// # Splitting the window
//
// A 7-day window is read as a range query of increase(...[step]) with
// step = window/MaxSteps (1h for 7d), summed over the steps, instead of one
// increase(...[7d]) instant query. Prometheus' sample limit
// (--query.max-samples, 50M by default) counts the samples a query holds at
// once: for a range-vector function the engine loads one input series' range
// at a time (a step's worth: 240 samples at a 15s scrape), and holds the
// result, output series x steps points. With at most 168 steps, the result
// of `sum by (...)` could hold ~300k series before reaching the limit, and
// the input never comes close. Range queries are also what Thanos' and
// Mimir's query-frontends split by day and cache; instant queries over 7d
// are neither split nor cached. Last-seen times come from the latest step
// with a non-zero increase, so their resolution is the step.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
)

// MaxSteps bounds the points per series of a range query (see the package
// comment).
const MaxSteps = 168

// Options say what to read.
type Options struct {
	Window time.Duration
	Now    time.Time
	// URL names Prometheus in error messages.
	URL string
	// Timeout bounds each query (0: none beyond ctx).
	Timeout time.Duration
	// Namespaces, when set, restricts the queries to these destination
	// namespaces (and sources in them); empty reads the whole mesh.
	Namespaces []string
}

// Traffic is the traffic into one destination namespace over the window
// (totals, not rates).
type Traffic struct {
	MTLSRequests         float64
	PlaintextRequests    float64
	MTLSConnections      float64
	PlaintextConnections float64
	// Sources are the distinct source namespaces seen calling (any
	// security policy), excluding the namespace itself and "unknown".
	Sources map[string]struct{}
}

// Flow is plaintext traffic from one source into one destination workload
// (totals over the window).
type Flow struct {
	DestinationNamespace string
	DestinationWorkload  string
	SourceWorkload       string
	SourceNamespace      string
	SourcePrincipal      string
	Requests             float64
	Connections          float64
	Bytes                float64
	LastSeen             time.Time
}

// Unknown is Istio's value for a peer it could not identify (no sidecar, or
// outside the mesh).
const Unknown = istiometrics.Unknown

// Result is what the planner reads.
type Result struct {
	Window time.Duration
	Step   time.Duration
	// Inbound holds traffic per destination namespace.
	Inbound map[string]*Traffic
	// Reporting holds namespaces whose proxies reported any Istio metric
	// in the window (as destination or source).
	Reporting map[string]bool
	// Plaintext holds the plaintext flows, sorted.
	Plaintext    []Flow
	IstioVersion string
	// Queries are the PromQL queries run, in order.
	Queries []string
	// Warnings are Prometheus' warnings and infos, prefixed with the query.
	Warnings []string
	// Partial is set when Prometheus answered some query with a warning
	// (partial response, truncated result): the evidence may be incomplete.
	// Infos alone do not set it.
	Partial bool
}

// Step returns the range-query step for a window: window/MaxSteps rounded
// up to a whole second, and at least one minute (an increase needs two
// scrapes in its range) unless the window itself is shorter.
func Step(window time.Duration) time.Duration {
	step := (window + MaxSteps - 1) / MaxSteps
	step = ((step + time.Second - 1) / time.Second) * time.Second
	if minStep := min(window, time.Minute); step < minStep {
		step = minStep
	}
	return step
}

// The groupings of the two traffic queries.
var (
	aggregateBy = istiometrics.Grouping(istiometrics.LabelReporter, istiometrics.LabelDestinationWorkloadNamespace, istiometrics.LabelSourceWorkloadNamespace, istiometrics.LabelConnectionSecurityPolicy)
	detailBy    = istiometrics.Grouping(istiometrics.LabelDestinationWorkloadNamespace, istiometrics.LabelDestinationWorkload, istiometrics.LabelSourceWorkload, istiometrics.LabelSourceWorkloadNamespace, istiometrics.LabelSourcePrincipal)
)

// Kinds of series, set by label_replace so one query carries several metrics.
const (
	kindLabel       = "mm_kind"
	kindRequests    = "requests"
	kindConnections = "connections"
	kindBytes       = "bytes"
)

// Queries returns the PromQL queries Fetch runs, in order: aggregate
// traffic, plaintext detail (both range queries), Istio version (instant).
func Queries(o Options) []string {
	step := model.Duration(Step(o.Window)).String()
	dst, src := "", ""
	if len(o.Namespaces) > 0 {
		ns := append([]string(nil), o.Namespaces...)
		sort.Strings(ns)
		dst = istiometrics.OneOf(istiometrics.LabelDestinationWorkloadNamespace, ns)
		src = istiometrics.OneOf(istiometrics.LabelSourceWorkloadNamespace, ns)
	}
	kinds := func(by, sel string, withBytes bool) string {
		metrics := []struct{ kind, name string }{{kindRequests, istiometrics.RequestsTotal}, {kindConnections, istiometrics.TCPConnectionsOpened}}
		if withBytes {
			// A long-lived connection opened before the window shows no new
			// connections_opened; its bytes do.
			metrics = append(metrics, struct{ kind, name string }{kindBytes, istiometrics.TCPReceivedBytes})
		}
		var parts []string
		for _, m := range metrics {
			parts = append(parts, fmt.Sprintf(`label_replace(sum by (%s) (increase(%s{%s}[%s])), %q, %q, "", "")`, by, m.name, sel, step, kindLabel, m.kind))
		}
		return strings.Join(parts, " or ")
	}
	aggSel := istiometrics.Selector(istiometrics.OneOf(istiometrics.LabelReporter, []string{istiometrics.ReporterSource, istiometrics.ReporterDestination}), dst)
	if src != "" {
		// Restricted: traffic into the namespaces, or reported by them as clients.
		aggSel = istiometrics.Selector(istiometrics.ByDestination, dst)
	}
	agg := kinds(aggregateBy, aggSel, false)
	if src != "" {
		agg += " or " + kinds(aggregateBy, istiometrics.Selector(istiometrics.BySource, src), false)
	}
	// Classified on the destination's report (see istiometrics.DestinationPlaintext).
	detail := kinds(detailBy, istiometrics.Selector(istiometrics.DestinationPlaintext(""), dst), true)
	version := fmt.Sprintf(`count by (%s) (%s)`, istiometrics.Grouping(istiometrics.LabelComponent, istiometrics.LabelTag), istiometrics.Build)
	return []string{agg, detail, version}
}

// Fetch runs the queries and parses the answers.
func Fetch(ctx context.Context, q istiometrics.Querier, o Options) (*Result, error) {
	if o.Window <= 0 {
		return nil, errors.New("telemetry window must be positive")
	}
	step := Step(o.Window)
	steps := int((o.Window + step - 1) / step)
	end := o.Now.Truncate(time.Second)
	rng := v1.Range{Start: end.Add(-time.Duration(steps-1) * step), End: end, Step: step}
	qs := Queries(o)
	res := &Result{Window: o.Window, Step: step, Queries: qs, Inbound: map[string]*Traffic{}, Reporting: map[string]bool{}}

	names := []string{"aggregate traffic", "plaintext flows", "istio version"}
	for i, query := range qs {
		var (
			val   model.Value
			warns v1.Warnings
			infos v1.Infos
			err   error
		)
		if i < 2 {
			val, warns, infos, err = istiometrics.Range(ctx, q, query, rng, o.Timeout)
		} else {
			val, warns, infos, err = istiometrics.Instant(ctx, q, query, end, o.Timeout)
		}
		if err != nil {
			return nil, queryError(o, names[i], err)
		}
		if len(warns) > 0 {
			res.Partial = true
		}
		for _, w := range warns {
			res.Warnings = append(res.Warnings, fmt.Sprintf("prometheus warning (%s): %s", names[i], w))
		}
		for _, in := range infos {
			res.Warnings = append(res.Warnings, fmt.Sprintf("prometheus info (%s): %s", names[i], in))
		}
		switch i {
		case 0:
			err = res.parseAggregate(val)
		case 1:
			err = res.parseDetail(val)
		case 2:
			err = res.parseVersion(val)
		}
		if err != nil {
			return nil, fmt.Errorf("%s from Prometheus at %s: %w", names[i], o.URL, err)
		}
	}
	return res, nil
}

func queryError(o Options, what string, err error) error {
	var apiErr *v1.Error
	hint := "check --prometheus-url, that Prometheus is reachable from here, and --prometheus-ca-file / --prometheus-bearer-token-file"
	if errors.As(err, &apiErr) {
		switch apiErr.Type {
		case v1.ErrBadData:
			hint = "Prometheus rejected the query; is this a Prometheus-compatible API?"
		case v1.ErrTimeout, v1.ErrCanceled:
			hint = "the query timed out: raise --prometheus-timeout or shorten --window"
		case v1.ErrExec:
			hint = "Prometheus could not run the query (a sample or series limit?): shorten --window or restrict --namespaces"
		}
	} else if errors.Is(err, context.DeadlineExceeded) {
		hint = "no answer in time: check --prometheus-url and raise --prometheus-timeout"
	}
	return fmt.Errorf("query Prometheus at %s (%s): %w; %s", o.URL, what, err, hint)
}

func asMatrix(v model.Value) (model.Matrix, error) {
	switch m := v.(type) {
	case model.Matrix:
		return m, nil
	case nil:
		return nil, nil
	}
	return nil, fmt.Errorf("expected a matrix, got %s", v.Type())
}

func sumSeries(ss *model.SampleStream) (total float64, last time.Time) {
	for _, p := range ss.Values {
		v := float64(p.Value)
		if math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
			continue
		}
		total += v
		last = p.Timestamp.Time()
	}
	return total, last
}

func (r *Result) inbound(ns string) *Traffic {
	t := r.Inbound[ns]
	if t == nil {
		t = &Traffic{Sources: map[string]struct{}{}}
		r.Inbound[ns] = t
	}
	return t
}

func (r *Result) parseAggregate(v model.Value) error {
	m, err := asMatrix(v)
	if err != nil {
		return err
	}
	for _, ss := range m {
		l := ss.Metric
		dst, src := string(l[istiometrics.LabelDestinationWorkloadNamespace]), string(l[istiometrics.LabelSourceWorkloadNamespace])
		total, _ := sumSeries(ss)
		switch string(l[istiometrics.LabelReporter]) {
		case istiometrics.ReporterSource:
			if src != "" && src != Unknown {
				r.Reporting[src] = true
			}
			continue
		case istiometrics.ReporterDestination:
		default:
			continue
		}
		if dst == "" || dst == Unknown {
			continue
		}
		r.Reporting[dst] = true
		t := r.inbound(dst)
		if src != "" && src != Unknown && src != dst && total > 0 {
			t.Sources[src] = struct{}{}
		}
		mtls := string(l[istiometrics.LabelConnectionSecurityPolicy]) == istiometrics.MutualTLS
		switch string(l[kindLabel]) {
		case kindRequests:
			if mtls {
				t.MTLSRequests += total
			} else {
				t.PlaintextRequests += total
			}
		case kindConnections:
			if mtls {
				t.MTLSConnections += total
			} else {
				t.PlaintextConnections += total
			}
		}
	}
	return nil
}

func (r *Result) parseDetail(v model.Value) error {
	m, err := asMatrix(v)
	if err != nil {
		return err
	}
	type key struct{ dns, dwl, swl, sns, sp string }
	idx := make(map[key]int, len(m))
	for _, ss := range m {
		l := ss.Metric
		total, last := sumSeries(ss)
		if total <= 0 {
			continue
		}
		k := key{string(l[istiometrics.LabelDestinationWorkloadNamespace]), string(l[istiometrics.LabelDestinationWorkload]), string(l[istiometrics.LabelSourceWorkload]), string(l[istiometrics.LabelSourceWorkloadNamespace]), string(l[istiometrics.LabelSourcePrincipal])}
		i, ok := idx[k]
		if !ok {
			i = len(r.Plaintext)
			idx[k] = i
			r.Plaintext = append(r.Plaintext, Flow{DestinationNamespace: k.dns, DestinationWorkload: k.dwl, SourceWorkload: k.swl, SourceNamespace: k.sns, SourcePrincipal: k.sp})
		}
		f := &r.Plaintext[i]
		switch string(l[kindLabel]) {
		case kindRequests:
			f.Requests += total
		case kindConnections:
			f.Connections += total
		case kindBytes:
			f.Bytes += total
		}
		if last.After(f.LastSeen) {
			f.LastSeen = last
		}
	}
	sort.Slice(r.Plaintext, func(i, j int) bool {
		a, b := &r.Plaintext[i], &r.Plaintext[j]
		for _, c := range [][2]string{{a.DestinationNamespace, b.DestinationNamespace}, {a.DestinationWorkload, b.DestinationWorkload}, {a.SourceNamespace, b.SourceNamespace}, {a.SourceWorkload, b.SourceWorkload}, {a.SourcePrincipal, b.SourcePrincipal}} {
			if c[0] != c[1] {
				return c[0] < c[1]
			}
		}
		return false
	})
	return nil
}

func (r *Result) parseVersion(v model.Value) error {
	vec, ok := v.(model.Vector)
	if !ok {
		if v == nil {
			return nil
		}
		return fmt.Errorf("expected a vector, got %s", v.Type())
	}
	tags := map[string]map[string]bool{}
	for _, s := range vec {
		c, t := string(s.Metric[istiometrics.LabelComponent]), string(s.Metric[istiometrics.LabelTag])
		if t == "" {
			continue
		}
		if tags[c] == nil {
			tags[c] = map[string]bool{}
		}
		tags[c][t] = true
	}
	// The control plane's version when it is scraped, else the proxies'
	// (several while an upgrade is under way).
	for _, c := range []string{"pilot", "istiod", "proxy"} {
		if len(tags[c]) > 0 {
			var ts []string
			for t := range tags[c] {
				ts = append(ts, t)
			}
			sort.Strings(ts)
			r.IstioVersion = strings.Join(ts, ",")
			return nil
		}
	}
	return nil
}
