// Package telemetry reads the Istio standard metrics the planner needs from
// a Prometheus-compatible API (Prometheus, Thanos, Mimir, VictoriaMetrics) in
// six queries whatever the size of the mesh, sent at once: mutual-TLS
// traffic by namespace pair (in AggregateShards shards), the plaintext
// flows in detail, the Istio version, and which namespaces report. Only standard PromQL is used (offset, subqueries,
// timestamp(), label_replace, group: all four support them). Warnings and
// infos in the answers are surfaced, never dropped.
//
// # Totals computed by the server, at the cost the decision needs
//
// The traffic queries are instant queries at the end of the window: one
// point per output series, so what crosses the network and is decoded grows
// with the namespace pairs and the plaintext flows, not with the window (the
// range queries of 168 steps that came before cost 14 s of HTTP and JSON
// decoding at 2,000 namespaces, see BenchmarkFetch).
//
// What Prometheus spends answering them is another matter: increase over a
// week reads every raw sample of every series it selects (about 20,000 a
// series at a 30s scrape), 12.5 M samples/s on our machines, so over a
// whole mesh it passes the default 30s timeout near 9,000 flows. Only
// plaintext needs that exactness (a flow seen once in the week blocks its
// namespace), and plaintext is a small part of the series. So:
//
//   - mutual TLS (the aggregate), which only sizes stages, orders them and
//     tells gates how much traffic to expect, is read at the window's two
//     ends (istiometrics.GrowthBy: a series' value now less its value a
//     window ago, or all of it when it began in the window or was reset):
//     three instant selectors instead of every sample (sandbox/README.md
//     has the measurements). Traffic of series gone before the end
//     (deleted pods) is not in it: a lower bound, the reading that asks
//     for more evidence, not less. Its cost is then no longer the samples
//     but the series times the blocks the window spans (each selector
//     looks every series up in every block the query's range touches), so
//     it is split by destination namespace into AggregateShards queries
//     sent together: each is a third of the work, and Prometheus runs
//     them on separate cores;
//   - plaintext (the detail) is exact: increase over the window, by flow,
//     of the destinations' non-mTLS reports only, with > 0 so the answer
//     grows with the plaintext, not with the mesh; the plaintext totals,
//     sources and reporting of a namespace are summed from these flows;
//   - which namespaces report (for "no telemetry" risks) is one point a
//     series now (istiometrics.PresentBy), plus the flows above.
//
// The detail adds one series per flow, mm_kind="last_seen": when its
// counters last rose (istiometrics.LastRiseBy), i.e. the latest step of a
// subquery over the window at which their increase over step+5m was
// positive, or the evaluation time if they rose within the last step+5m.
// Its resolution is the subquery step, window/MaxSteps (1h for 7d): a
// last-seen time is late by less than step+5m, never early. A flow with
// traffic but no last-seen time is read as seen at the end.
//
// # The sample limit
//
// Prometheus' --query.max-samples (50M by default: "maximum number of
// samples a single query can load into memory", its flag help) counts the
// samples a query holds at once. What the engine holds (promql/engine.go,
// 2.x to 3.x; estimates, to be checked against that source and measured):
// an instant selector holds one point per series; a range-vector function
// such as increase walks the selected series one at a time, holding one
// series' samples in its range (matrixIterSlice) plus the output so far; an
// aggregation holds its whole argument (every input series at every step)
// and then only its result; a subquery holds its inner result (series x
// steps). So:
//
//   - the aggregate holds one point per input series for each of its
//     selectors (three per metric): far below the limit at any mesh size;
//   - the plaintext totals, one series' week (40,320 samples at a 15s
//     scrape) and one point per plaintext input series;
//   - the last-seen subquery holds, for each metric in turn, every plaintext
//     input series at MaxSteps steps (168 points), then the flows at 168
//     points each: the limit is reached near 300,000 plaintext input series
//     (pod and response-code labels included), a query error that says to
//     restrict --namespaces;
//   - the reporting query, one point per series;
//   - with Steps = n, the aggregate and the detail hold n points per input
//     series.
//
// Mimir (-querier.max-samples), Thanos' querier and VictoriaMetrics
// (-search.maxSamplesPerQuery, 1e9) have limits of the same kind; Mimir
// and Thanos also limit series and chunks fetched per query, which count the
// raw data read: the aggregate's instant selectors fetch a chunk or two per
// series where increase fetched the week's. A query-frontend splits a range
// query by day (Options.Steps) and an instant one not at all, as far as I
// know (Mimir has an experimental instant-query splitting I have not
// checked).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
)

// MaxSteps bounds Options.Steps and the subquery steps that find last-seen
// times (see the package comment).
const MaxSteps = 168

// scrapeMargin is how much longer than a step the increase that finds
// last-seen times spans, so that consecutive steps overlap by a scrape
// interval and no rise between two scrapes falls between them: 5m is
// Prometheus' default lookback delta, beyond which instant queries see a
// series as stale anyway.
const scrapeMargin = 5 * time.Minute

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
	// Steps is the number of points per series of the traffic queries. 1
	// (the default; 0 means 1) runs them as instant queries over the whole
	// window, the cheapest answer. n > 1 (at most MaxSteps) runs range
	// queries of n steps of window/n each (at least a minute), summed here:
	// for a Thanos or Mimir query-frontend, which splits range queries by
	// day and caches them but passes an instant query over the window to
	// one querier whole.
	Steps int
}

// Traffic is the traffic into one destination namespace over the window
// (totals, not rates).
type Traffic struct {
	MTLSRequests         float64
	PlaintextRequests    float64
	MTLSConnections      float64
	PlaintextConnections float64
	// Bytes received over TCP connections.
	MTLSBytes      float64
	PlaintextBytes float64
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
	// Step is the resolution of the flows' LastSeen (the last-seen
	// subquery's step, see Step).
	Step time.Duration
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

// Step returns the step of the subquery that finds last-seen times, which
// is their resolution: window/MaxSteps rounded up to a whole second (1h for
// 7d), and at least one minute (an increase needs two scrapes in its range)
// unless the window itself is shorter.
func Step(window time.Duration) time.Duration { return stepOf(window, MaxSteps) }

// stepOf divides window into n steps as Step does.
func stepOf(window time.Duration, n int) time.Duration {
	step := (window + time.Duration(n) - 1) / time.Duration(n)
	step = ((step + time.Second - 1) / time.Second) * time.Second
	if minStep := min(window, time.Minute); step < minStep {
		step = minStep
	}
	return step
}

// span returns the range each point of the traffic queries covers and how
// many points there are: the whole window once by default, or o.Steps
// steps (fewer when a step would be shorter than a minute).
func span(o Options) (time.Duration, int) {
	if o.Steps <= 1 {
		return o.Window, 1
	}
	r := stepOf(o.Window, o.Steps)
	return r, int((o.Window + r - 1) / r)
}

// The groupings of the two traffic queries.
var (
	aggregateBy = istiometrics.Grouping(istiometrics.LabelDestinationWorkloadNamespace, istiometrics.LabelSourceWorkloadNamespace)
	reportingBy = istiometrics.Grouping(istiometrics.LabelReporter, istiometrics.LabelDestinationWorkloadNamespace, istiometrics.LabelSourceWorkloadNamespace)
	detailBy    = istiometrics.Grouping(istiometrics.LabelDestinationWorkloadNamespace, istiometrics.LabelDestinationWorkload, istiometrics.LabelSourceWorkload, istiometrics.LabelSourceWorkloadNamespace, istiometrics.LabelSourcePrincipal)
)

// Kinds of series, set by label_replace so one query carries several metrics.
const (
	kindLabel       = "mm_kind"
	kindRequests    = "requests"
	kindConnections = "connections"
	kindBytes       = "bytes"
	// kindLastSeen is a flow's last-seen time, in seconds since the epoch.
	kindLastSeen = "last_seen"
)

type metric struct{ kind, name string }

var (
	// A long-lived connection opened before the window shows no new
	// connections_opened; its bytes do (Istio reports the bytes of open
	// connections periodically). The TCP gates' estimate needs them too.
	aggregateMetrics = []metric{{kindRequests, istiometrics.RequestsTotal}, {kindConnections, istiometrics.TCPConnectionsOpened}, {kindBytes, istiometrics.TCPReceivedBytes}}
	detailMetrics    = aggregateMetrics
)

// AggregateShards is how many queries the aggregate is split into, by
// the last character of the destination namespace (see shardMatchers):
// its cost on Prometheus grows with the mutual-TLS series, and Fetch sends
// the shards at once, so each stays within the per-query timeout on a
// mesh three times larger and Prometheus spreads them over its cores.
const AggregateShards = 3

// QueryNames name the queries of Queries, in order, for messages.
var QueryNames = []string{"aggregate traffic 1/3", "aggregate traffic 2/3", "aggregate traffic 3/3", "plaintext flows", "istio version", "reporting"}

// Ranged says whether query i of Queries is a range query when
// Options.Steps > 1 (the aggregate's shards and the plaintext flows).
func Ranged(i int) bool { return i <= AggregateShards }

// shardMatchers partition the destination namespaces into n sets by the
// last character of their name (Kubernetes names end in [a-z0-9]; those
// 36 characters are dealt round-robin, so numbered and random-suffixed
// names spread evenly): the first n-1 match one set each and the last
// matches everything else, so every series, whatever its label holds, is
// in exactly one shard.
func shardMatchers(n int) []string {
	const alnum = "0123456789abcdefghijklmnopqrstuvwxyz"
	sets := make([]string, n)
	for i, c := range alnum {
		sets[i%n] += string(c)
	}
	out := make([]string, n)
	for i := 0; i < n-1; i++ {
		out[i] = istiometrics.Re(istiometrics.LabelDestinationWorkloadNamespace, ".*["+sets[i]+"]")
	}
	out[n-1] = istiometrics.NotRe(istiometrics.LabelDestinationWorkloadNamespace, ".*["+strings.Join(sets[:n-1], "")+"]")
	return out
}

// Queries returns the PromQL queries Fetch runs, in order (QueryNames):
// mutual-TLS traffic by namespace pair (AggregateShards queries), plaintext
// flows, Istio version, reporting namespaces. The aggregate and the flows
// are instant queries at the end of the window by default, range queries
// with o.Steps > 1 (Ranged); the last two are instant queries.
func Queries(o Options) []string {
	r, _ := span(o)
	rng := model.Duration(r).String()
	step := Step(o.Window)
	dst, src := "", ""
	if len(o.Namespaces) > 0 {
		ns := append([]string(nil), o.Namespaces...)
		sort.Strings(ns)
		dst = istiometrics.OneOf(istiometrics.LabelDestinationWorkloadNamespace, ns)
		src = istiometrics.OneOf(istiometrics.LabelSourceWorkloadNamespace, ns)
	}
	kind := func(expr, kind string) string {
		return fmt.Sprintf(`label_replace(%s, %q, %q, "", "")`, expr, kindLabel, kind)
	}
	totals := func(metrics []metric, by, sel, filter string) []string {
		var parts []string
		for _, m := range metrics {
			parts = append(parts, kind(istiometrics.IncreaseBy(m.name, sel, by, rng)+filter, m.kind))
		}
		return parts
	}
	// Mutual TLS only sizes stages and gates: its growth, two points a
	// series (see the package comment). Plaintext is counted exactly by
	// the detail below.
	var out []string
	for _, shard := range shardMatchers(AggregateShards) {
		aggSel := istiometrics.Selector(istiometrics.ByDestination, istiometrics.Eq(istiometrics.LabelConnectionSecurityPolicy, istiometrics.MutualTLS), dst, shard)
		var agg []string
		for _, m := range aggregateMetrics {
			agg = append(agg, kind(istiometrics.GrowthBy(m.name, aggSel, aggregateBy, rng), m.kind))
		}
		out = append(out, strings.Join(agg, " or "))
	}
	// Classified on the destination's report (see istiometrics.DestinationPlaintext).
	// Only flows with traffic in the window: the answer grows with the
	// plaintext, not with the mesh.
	detailSel := istiometrics.Selector(istiometrics.DestinationPlaintext(""), dst)
	detail := totals(detailMetrics, detailBy, detailSel, " > 0")
	names := make([]string, len(detailMetrics))
	for i, m := range detailMetrics {
		names[i] = m.name
	}
	detail = append(detail, kind(istiometrics.LastRiseBy(names, detailSel, detailBy, rng, model.Duration(step).String(), model.Duration(step+scrapeMargin).String()), kindLastSeen))
	version := fmt.Sprintf(`count by (%s) (%s)`, istiometrics.Grouping(istiometrics.LabelComponent, istiometrics.LabelTag), istiometrics.Build)
	reportSels := []string{istiometrics.OneOf(istiometrics.LabelReporter, []string{istiometrics.ReporterSource, istiometrics.ReporterDestination})}
	if src != "" {
		// Restricted: traffic into the namespaces, or reported by them as clients.
		reportSels = []string{istiometrics.Selector(istiometrics.ByDestination, dst), istiometrics.Selector(istiometrics.BySource, src)}
	}
	reporting := istiometrics.PresentBy(names, reportSels, reportingBy)
	return append(out, strings.Join(detail, " or "), version, reporting)
}

// Fetch runs the queries and parses the answers.
func Fetch(ctx context.Context, q istiometrics.Querier, o Options) (*Result, error) {
	if o.Window <= 0 {
		return nil, errors.New("telemetry window must be positive")
	}
	if o.Steps < 0 || o.Steps > MaxSteps {
		return nil, fmt.Errorf("telemetry steps must be between 1 and %d, not %d", MaxSteps, o.Steps)
	}
	r, points := span(o)
	end := o.Now.Truncate(time.Second)
	rng := v1.Range{Start: end.Add(-time.Duration(points-1) * r), End: end, Step: r}
	qs := Queries(o)
	res := &Result{Window: o.Window, Step: Step(o.Window), Queries: qs, Inbound: map[string]*Traffic{}, Reporting: map[string]bool{}}

	// All at once: Prometheus evaluates each query on one core, and the
	// aggregate's shards cost about the same.
	type answer struct {
		val   model.Value
		warns v1.Warnings
		infos v1.Infos
		err   error
	}
	answers := make([]answer, len(qs))
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i, query := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &answers[i]
			if Ranged(i) && points > 1 {
				a.val, a.warns, a.infos, a.err = istiometrics.Range(qctx, q, query, rng, o.Timeout)
			} else {
				a.val, a.warns, a.infos, a.err = istiometrics.Instant(qctx, q, query, end, o.Timeout)
			}
			if a.err != nil {
				cancel() // the others are of no use now
			}
		}()
	}
	wg.Wait()
	// The first error in query order, not one caused by its cancelling
	// the others.
	for i := range answers {
		if err := answers[i].err; err != nil && !(errors.Is(err, context.Canceled) && ctx.Err() == nil) {
			return nil, queryError(o, QueryNames[i], err)
		}
	}
	for i := range answers {
		if err := answers[i].err; err != nil {
			return nil, queryError(o, QueryNames[i], err)
		}
	}
	for i, a := range answers {
		name := QueryNames[i]
		if len(a.warns) > 0 {
			res.Partial = true
		}
		for _, w := range a.warns {
			res.Warnings = append(res.Warnings, fmt.Sprintf("prometheus warning (%s): %s", name, w))
		}
		for _, in := range a.infos {
			res.Warnings = append(res.Warnings, fmt.Sprintf("prometheus info (%s): %s", name, in))
		}
		ranged := Ranged(i) && points > 1
		var err error
		switch {
		case i < AggregateShards:
			err = res.parseAggregate(a.val, ranged)
		case i == AggregateShards:
			err = res.parseDetail(a.val, ranged, end)
		case i == AggregateShards+1:
			err = res.parseVersion(a.val)
		default:
			err = res.parseReporting(a.val)
		}
		if err != nil {
			return nil, fmt.Errorf("%s from Prometheus at %s: %w", name, o.URL, err)
		}
	}
	res.addPlaintext()
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

// eachSeries calls fn with each series of an answer: its labels, the sum of
// its positive finite points (the total over the window) and its largest
// finite point (NaN if none). An instant query must answer with a vector,
// a range query with a matrix; anything else, no value included, is an
// error, never "no traffic".
func eachSeries(v model.Value, ranged bool, fn func(m model.Metric, sum, max float64)) error {
	want := "an instant vector"
	if ranged {
		want = "a range matrix"
	}
	switch a := v.(type) {
	case model.Vector:
		if !ranged {
			for _, s := range a {
				x := float64(s.Value)
				fn(s.Metric, positive(x), finite(x))
			}
			return nil
		}
	case model.Matrix:
		if ranged {
			for _, ss := range a {
				sum, max := 0.0, math.NaN()
				for _, p := range ss.Values {
					x := float64(p.Value)
					sum += positive(x)
					if y := finite(x); !math.IsNaN(y) && !(y <= max) {
						max = y
					}
				}
				fn(ss.Metric, sum, max)
			}
			return nil
		}
	}
	return &istiometrics.UnusableAnswerError{Got: istiometrics.TypeOf(v), Want: want}
}

// positive is x when it counts toward a total, else 0.
func positive(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) || x <= 0 {
		return 0
	}
	return x
}

// finite is x, or NaN when x is infinite.
func finite(x float64) float64 {
	if math.IsInf(x, 0) {
		return math.NaN()
	}
	return x
}

func (r *Result) inbound(ns string) *Traffic {
	t := r.Inbound[ns]
	if t == nil {
		t = &Traffic{Sources: map[string]struct{}{}}
		r.Inbound[ns] = t
	}
	return t
}

// parseAggregate reads the mutual-TLS growth by namespace pair.
func (r *Result) parseAggregate(v model.Value, ranged bool) error {
	return eachSeries(v, ranged, func(l model.Metric, total, _ float64) {
		dst, src := string(l[istiometrics.LabelDestinationWorkloadNamespace]), string(l[istiometrics.LabelSourceWorkloadNamespace])
		if dst == "" || dst == Unknown {
			return
		}
		r.Reporting[dst] = true
		t := r.inbound(dst)
		if src != "" && src != Unknown && src != dst && total > 0 {
			t.Sources[src] = struct{}{}
		}
		switch string(l[kindLabel]) {
		case kindRequests:
			t.MTLSRequests += total
		case kindConnections:
			t.MTLSConnections += total
		case kindBytes:
			t.MTLSBytes += total
		}
	})
}

// parseReporting reads which namespaces' proxies report now, as
// destination or as source.
func (r *Result) parseReporting(v model.Value) error {
	vec, ok := v.(model.Vector)
	if !ok {
		return &istiometrics.UnusableAnswerError{Got: istiometrics.TypeOf(v), Want: "an instant vector"}
	}
	for _, s := range vec {
		ns := string(s.Metric[istiometrics.LabelDestinationWorkloadNamespace])
		if string(s.Metric[istiometrics.LabelReporter]) == istiometrics.ReporterSource {
			ns = string(s.Metric[istiometrics.LabelSourceWorkloadNamespace])
		}
		if ns != "" && ns != Unknown {
			r.Reporting[ns] = true
		}
	}
	return nil
}

// addPlaintext counts the plaintext flows, exact over the window, into
// their destination's totals, sources and reporting.
func (r *Result) addPlaintext() {
	for _, f := range r.Plaintext {
		dst := f.DestinationNamespace
		if dst == "" || dst == Unknown {
			continue
		}
		r.Reporting[dst] = true
		t := r.inbound(dst)
		t.PlaintextRequests += f.Requests
		t.PlaintextConnections += f.Connections
		t.PlaintextBytes += f.Bytes
		if src := f.SourceNamespace; src != "" && src != Unknown && src != dst {
			t.Sources[src] = struct{}{}
		}
	}
}

// parseDetail reads the plaintext flows: their totals, and their last-seen
// times (in seconds) from the last_seen series.
func (r *Result) parseDetail(v model.Value, ranged bool, end time.Time) error {
	type key struct{ dns, dwl, swl, sns, sp string }
	idx := map[key]int{}
	lastSeen := map[key]float64{}
	err := eachSeries(v, ranged, func(l model.Metric, total, max float64) {
		k := key{string(l[istiometrics.LabelDestinationWorkloadNamespace]), string(l[istiometrics.LabelDestinationWorkload]), string(l[istiometrics.LabelSourceWorkload]), string(l[istiometrics.LabelSourceWorkloadNamespace]), string(l[istiometrics.LabelSourcePrincipal])}
		kind := string(l[kindLabel])
		if kind == kindLastSeen {
			if !math.IsNaN(max) && !(max <= lastSeen[k]) {
				lastSeen[k] = max
			}
			return
		}
		if total <= 0 {
			return
		}
		i, ok := idx[k]
		if !ok {
			i = len(r.Plaintext)
			idx[k] = i
			r.Plaintext = append(r.Plaintext, Flow{DestinationNamespace: k.dns, DestinationWorkload: k.dwl, SourceWorkload: k.swl, SourceNamespace: k.sns, SourcePrincipal: k.sp})
		}
		f := &r.Plaintext[i]
		switch kind {
		case kindRequests:
			f.Requests += total
		case kindConnections:
			f.Connections += total
		case kindBytes:
			f.Bytes += total
		}
	})
	if err != nil {
		return err
	}
	for k, i := range idx {
		f := &r.Plaintext[i]
		secs, ok := lastSeen[k]
		if !ok || secs > float64(end.Unix()) {
			// Traffic in the window but no (or an impossible) last-seen
			// time: read it as current, the reading that blocks rather
			// than the one that calls the flow gone.
			f.LastSeen = end.UTC()
			continue
		}
		f.LastSeen = time.UnixMilli(int64(math.Round(secs * 1000))).UTC()
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
		return &istiometrics.UnusableAnswerError{Got: istiometrics.TypeOf(v), Want: "an instant vector"}
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
