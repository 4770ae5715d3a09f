// Package telemetrytest is a fake Prometheus API for tests and benchmarks:
// it answers the queries of internal/telemetry from a list of flows as
// Prometheus would evaluate them, and counts the queries.
//
// It reads a query as the `or` of label_replace(..., "mm_kind", KIND, "", "")
// terms that internal/telemetry builds, and evaluates each term from its own
// text: the metric it names, the reporter and mutual-TLS matchers, the
// `sum by (...)` labels, the ranges of its increase and, for a last-seen
// term (timestamp(...)), its subquery's [range:step], aligned to multiples of
// the step since the epoch as Prometheus aligns them. Counters rise at a
// constant rate, so an increase is exact (no scrapes, no extrapolation).
// Regex matchers on the destination namespace (=~ and !~, which shard the
// aggregate and restrict it to --namespaces) are applied; other namespace
// matchers are ignored.
package telemetrytest

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
)

// Flow is traffic of one kind between two workloads, at a constant rate of
// PerStep per Fake.Step, from any time before the window until the end of
// the query (an instant query's time, a range query's end).
type Flow struct {
	Reporter                    string // "destination" (default) or "source"
	DstNS, DstWorkload          string
	SrcNS, SrcWorkload, SrcPrin string
	// CSP is the connection security policy label ("mutual_tls", "none").
	CSP string
	// Kind is "requests" (default), "connections" or "bytes".
	Kind    string
	PerStep float64
	// LastSteps, when > 0, starts the traffic (and the series) only
	// LastSteps steps before the end.
	LastSteps int
	// QuietSteps, when > 0, stops the traffic QuietSteps steps before the
	// end; the series stays, with no increase.
	QuietSteps int
}

// Fake answers Query and QueryRange.
type Fake struct {
	Flows []Flow
	// Step is the unit of Flow.PerStep, LastSteps and QuietSteps (default
	// one hour, the last-seen step of a 7-day window).
	Step     time.Duration
	Versions map[string]string // component -> tag
	Err      error
	Warnings v1.Warnings
	Infos    v1.Infos

	mu      sync.Mutex
	calls   []string
	answers map[string]model.Value
}

// Calls returns the queries received.
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Query answers an instant query.
func (f *Fake) Query(_ context.Context, q string, ts time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	f.mu.Lock()
	f.calls = append(f.calls, q)
	f.mu.Unlock()
	if f.Err != nil {
		return nil, nil, nil, f.Err
	}
	v, err := f.answer(q, []time.Time{ts}, false)
	if err != nil {
		return nil, nil, nil, err
	}
	return v, f.Warnings, f.Infos, nil
}

// QueryRange answers a range query.
func (f *Fake) QueryRange(_ context.Context, q string, r v1.Range, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	f.mu.Lock()
	f.calls = append(f.calls, q)
	f.mu.Unlock()
	if f.Err != nil {
		return nil, nil, nil, f.Err
	}
	v, err := f.answer(q, rangeTimes(r), true)
	if err != nil {
		return nil, nil, nil, err
	}
	return v, f.Warnings, f.Infos, nil
}

// Prepare builds the answer to the instant query q at ts ahead of time (the
// answer to a query is built once and kept), for benchmarks.
func (f *Fake) Prepare(q string, ts time.Time) error {
	_, err := f.answer(q, []time.Time{ts}, false)
	return err
}

// PrepareRange is Prepare for a range query.
func (f *Fake) PrepareRange(q string, r v1.Range) error {
	_, err := f.answer(q, rangeTimes(r), true)
	return err
}

func rangeTimes(r v1.Range) []time.Time {
	var ts []time.Time
	for t := r.Start; !t.After(r.End) && r.Step > 0; t = t.Add(r.Step) {
		ts = append(ts, t)
	}
	return ts
}

var (
	kindRE      = regexp.MustCompile(`"mm_kind", "([a-z_]+)", "", ""\)$`)
	byRE        = regexp.MustCompile(`sum by \(([a-z_, ]*)\)`)
	rangeRE     = regexp.MustCompile(`\[([0-9][0-9a-z]*)\]`)
	reportersRE = regexp.MustCompile(`reporter=~"([a-z|]*)"`)
	subqueryRE  = regexp.MustCompile(`\[([0-9][0-9a-z]*):([0-9][0-9a-z]*)\]`)
	offsetRE    = regexp.MustCompile(` offset ([0-9][0-9a-z]*)\)`)
	dstNSRE     = regexp.MustCompile(`destination_workload_namespace(=~|!~)("(?:[^"\\]|\\.)*")`)
	groupRE     = regexp.MustCompile(`^group by \(([a-z_, ]*)\) \((.*)\)$`)
	metricsOf   = map[string]string{istiometrics.RequestsTotal: "requests", istiometrics.TCPConnectionsOpened: "connections", istiometrics.TCPReceivedBytes: "bytes"}
)

// nsMatcher is a regex matcher on the destination namespace.
type nsMatcher struct {
	re     *regexp.Regexp
	negate bool
}

func (t term) dstMatches(ns string) bool {
	for _, m := range t.dstNS {
		if m.re.MatchString(ns) == m.negate {
			return false
		}
	}
	return true
}

// term is one label_replace(..., "mm_kind", kind, "", "") of a query.
type term struct {
	kind    string
	kinds   map[string]bool // the flows' kinds it sums
	by      []model.LabelName
	rng     time.Duration // of its increase
	reps    map[string]bool
	plain   bool // connection_security_policy!="mutual_tls"
	mtls    bool // connection_security_policy="mutual_tls"
	dstNS   []nsMatcher
	filter  bool // "> 0"
	lastAt  bool // timestamp(...) or max_over_time(timestamp(...)[sub:subStep])
	sub     time.Duration
	subStep time.Duration
}

func parseTerms(q string) ([]term, error) {
	var terms []term
	for _, part := range strings.Split(q, " or label_replace(") {
		part = strings.TrimPrefix(part, "label_replace(")
		m := kindRE.FindStringSubmatch(part)
		by := byRE.FindStringSubmatch(part)
		rng := rangeRE.FindStringSubmatch(part)
		if off := offsetRE.FindStringSubmatch(part); off != nil && !strings.Contains(part, "timestamp(") {
			// istiometrics.GrowthBy: counters rise from zero at their
			// start, so their growth over the offset is their increase.
			rng = off
		}
		if m == nil || by == nil || rng == nil {
			return nil, &v1.Error{Type: v1.ErrBadData, Msg: fmt.Sprintf("telemetrytest: cannot read %q", part)}
		}
		t := term{kind: m[1], kinds: map[string]bool{}, reps: map[string]bool{}, plain: strings.Contains(part, istiometrics.NotMutualTLS), mtls: strings.Contains(part, istiometrics.Eq(istiometrics.LabelConnectionSecurityPolicy, istiometrics.MutualTLS)), filter: strings.Contains(part, ") > 0")}
		for _, l := range strings.Split(by[1], ", ") {
			t.by = append(t.by, model.LabelName(l))
		}
		var err error
		if t.rng, err = duration(rng[1]); err != nil {
			return nil, err
		}
		for _, dm := range dstNSRE.FindAllStringSubmatch(part, -1) {
			pat, err := strconv.Unquote(dm[2])
			if err != nil {
				return nil, &v1.Error{Type: v1.ErrBadData, Msg: err.Error()}
			}
			re, err := regexp.Compile("^(?:" + pat + ")$") // PromQL anchors regexes
			if err != nil {
				return nil, &v1.Error{Type: v1.ErrBadData, Msg: err.Error()}
			}
			t.dstNS = append(t.dstNS, nsMatcher{re: re, negate: dm[1] == "!~"})
		}
		for name, kind := range metricsOf {
			if strings.Contains(part, name+"{") {
				t.kinds[kind] = true
			}
		}
		for _, rep := range []string{istiometrics.ReporterSource, istiometrics.ReporterDestination} {
			if strings.Contains(part, istiometrics.Eq(istiometrics.LabelReporter, rep)) {
				t.reps[rep] = true
			}
		}
		if re := reportersRE.FindStringSubmatch(part); re != nil {
			for _, rep := range strings.Split(re[1], "|") {
				t.reps[rep] = true
			}
		}
		if strings.Contains(part, "timestamp(") {
			sq := subqueryRE.FindStringSubmatch(part)
			if sq == nil || !strings.Contains(part, "max_over_time(timestamp(") {
				return nil, &v1.Error{Type: v1.ErrBadData, Msg: fmt.Sprintf("telemetrytest: a last-seen term without its subquery: %q", part)}
			}
			t.lastAt = true
			if t.sub, err = duration(sq[1]); err == nil {
				t.subStep, err = duration(sq[2])
			}
			if err != nil {
				return nil, err
			}
		}
		terms = append(terms, t)
	}
	return terms, nil
}

func duration(s string) (time.Duration, error) {
	d, err := model.ParseDuration(s)
	if err != nil {
		return 0, &v1.Error{Type: v1.ErrBadData, Msg: err.Error()}
	}
	return time.Duration(d), nil
}

func (f *Fake) answer(q string, times []time.Time, ranged bool) (model.Value, error) {
	key := fmt.Sprint(q, times)
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.answers[key]; ok {
		return v, nil
	}
	var (
		v   model.Value
		err error
	)
	switch {
	case strings.Contains(q, istiometrics.Build):
		v = f.versions(times, ranged)
	case groupRE.MatchString(q):
		v, err = f.present(q, times, ranged)
	default:
		v, err = f.traffic(q, times, ranged)
	}
	if err != nil {
		return nil, err
	}
	if f.answers == nil {
		f.answers = map[string]model.Value{}
	}
	f.answers[key] = v
	return v, nil
}

func (f *Fake) versions(times []time.Time, ranged bool) model.Value {
	var vec model.Vector
	var mat model.Matrix
	for c, t := range f.Versions {
		m := model.Metric{istiometrics.LabelComponent: model.LabelValue(c), istiometrics.LabelTag: model.LabelValue(t)}
		if !ranged {
			vec = append(vec, &model.Sample{Metric: m, Value: 1, Timestamp: ms(times[0])})
			continue
		}
		ss := &model.SampleStream{Metric: m}
		for _, ts := range times {
			ss.Values = append(ss.Values, model.SamplePair{Timestamp: ms(ts), Value: 1})
		}
		mat = append(mat, ss)
	}
	if ranged {
		return mat
	}
	return vec
}

func ms(t time.Time) model.Time { return model.TimeFromUnixNano(t.UnixNano()) }

// series accumulates one output series: a value per evaluation time, and
// whether it has one.
type series struct {
	m       model.Metric
	vals    []float64
	present []bool
}

func (f *Fake) traffic(q string, times []time.Time, ranged bool) (model.Value, error) {
	terms, err := parseTerms(q)
	if err != nil {
		return nil, err
	}
	unit := f.Step
	if unit <= 0 {
		unit = time.Hour
	}
	end := times[len(times)-1]
	all := map[string]*series{}
	var order []string
	var kb strings.Builder
	for _, t := range terms {
		for _, fl := range f.Flows {
			rep := or(fl.Reporter, istiometrics.ReporterDestination)
			csp := fl.CSP
			if rep == istiometrics.ReporterSource {
				csp = istiometrics.Unknown // only the destination knows
			}
			if !t.kinds[or(fl.Kind, "requests")] || !t.reps[rep] || (t.plain && csp == istiometrics.MutualTLS) || (t.mtls && csp != istiometrics.MutualTLS) || !t.dstMatches(fl.DstNS) {
				continue
			}
			kb.Reset()
			kb.WriteString(t.kind)
			for _, l := range t.by {
				kb.WriteByte(0)
				kb.WriteString(labelOf(fl, rep, csp, l))
			}
			s := all[kb.String()]
			if s == nil {
				m := model.Metric{"mm_kind": model.LabelValue(t.kind)}
				for _, l := range t.by {
					m[l] = lv(labelOf(fl, rep, csp, l))
				}
				s = &series{m: m, vals: make([]float64, len(times)), present: make([]bool, len(times))}
				all[kb.String()] = s
				order = append(order, kb.String())
			}
			// The flow's counter exists from lo and rises from lo to hi.
			lo, hi := time.Time{}, end.Add(-time.Duration(fl.QuietSteps)*unit)
			if fl.LastSteps > 0 {
				lo = end.Add(-time.Duration(fl.LastSteps) * unit)
			}
			rate := fl.PerStep / unit.Seconds()
			for i, ts := range times {
				if t.lastAt {
					if at, ok := lastRise(ts, t, lo, hi); ok && (!s.present[i] || at > s.vals[i]) {
						s.vals[i], s.present[i] = at, true
					}
					continue
				}
				if !lo.IsZero() && !ts.After(lo) {
					continue // no series yet
				}
				s.vals[i] += rate * overlap(ts.Add(-t.rng), ts, lo, hi).Seconds()
				s.present[i] = true
			}
		}
	}
	var vec model.Vector
	var mat model.Matrix
	for _, k := range order {
		s := all[k]
		ss := &model.SampleStream{Metric: s.m}
		for i, ts := range times {
			if !s.present[i] {
				continue
			}
			if t := termOf(terms, string(s.m["mm_kind"])); t.filter && !(s.vals[i] > 0) {
				continue
			}
			if !ranged {
				vec = append(vec, &model.Sample{Metric: s.m, Value: model.SampleValue(s.vals[i]), Timestamp: ms(ts)})
			} else {
				ss.Values = append(ss.Values, model.SamplePair{Timestamp: ms(ts), Value: model.SampleValue(s.vals[i])})
			}
		}
		if ranged && len(ss.Values) > 0 {
			mat = append(mat, ss)
		}
	}
	if ranged {
		return mat, nil
	}
	return vec, nil
}

// present answers istiometrics.PresentBy: 1 for each group of the flows
// whose series exist at the (instant) query's time.
func (f *Fake) present(q string, times []time.Time, ranged bool) (model.Value, error) {
	g := groupRE.FindStringSubmatch(q)
	if ranged || len(times) != 1 {
		return nil, &v1.Error{Type: v1.ErrBadData, Msg: "telemetrytest: a presence query must be an instant query"}
	}
	var by []model.LabelName
	for _, l := range strings.Split(g[1], ", ") {
		by = append(by, model.LabelName(l))
	}
	reps := map[string]bool{}
	for _, rep := range []string{istiometrics.ReporterSource, istiometrics.ReporterDestination} {
		if strings.Contains(g[2], istiometrics.Eq(istiometrics.LabelReporter, rep)) || strings.Contains(g[2], "|"+rep) || strings.Contains(g[2], rep+"|") {
			reps[rep] = true
		}
	}
	seen := map[string]bool{}
	var vec model.Vector
	for _, fl := range f.Flows {
		rep := or(fl.Reporter, istiometrics.ReporterDestination)
		csp := fl.CSP
		if rep == istiometrics.ReporterSource {
			csp = istiometrics.Unknown
		}
		if !reps[rep] {
			continue // every flow's series exists until the query's time
		}
		m := model.Metric{}
		for _, l := range by {
			m[l] = lv(labelOf(fl, rep, csp, l))
		}
		if seen[m.String()] {
			continue
		}
		seen[m.String()] = true
		vec = append(vec, &model.Sample{Metric: m, Value: 1, Timestamp: ms(times[0])})
	}
	return vec, nil
}

func termOf(terms []term, kind string) term {
	for _, t := range terms {
		if t.kind == kind {
			return t
		}
	}
	return term{}
}

// lastRise evaluates timestamp(rose) or max_over_time(timestamp(rose)[sub:subStep])
// at ts, rose being "the increase over t.rng is positive", for a counter
// rising from lo (zero: always) to hi.
func lastRise(ts time.Time, t term, lo, hi time.Time) (float64, bool) {
	rose := func(at time.Time) bool { return overlap(at.Add(-t.rng), at, lo, hi) > 0 }
	if rose(ts) {
		return float64(ts.UnixMilli()) / 1000, true
	}
	step := t.subStep.Milliseconds()
	if step <= 0 {
		return 0, false
	}
	from := ts.Add(-t.sub).UnixMilli() // a left-open range, as in Prometheus 3
	for at := ts.UnixMilli() / step * step; at > from; at -= step {
		if rose(time.UnixMilli(at)) {
			return float64(at) / 1000, true
		}
	}
	return 0, false
}

// overlap is the length of (a, b] within (lo, hi] (lo zero: unbounded).
func overlap(a, b, lo, hi time.Time) time.Duration {
	if !lo.IsZero() && a.Before(lo) {
		a = lo
	}
	if hi.Before(b) {
		b = hi
	}
	if b.After(a) {
		return b.Sub(a)
	}
	return 0
}

// labelOf is the flow's value of an Istio label.
func labelOf(fl Flow, rep, csp string, l model.LabelName) string {
	switch l {
	case istiometrics.LabelReporter:
		return rep
	case istiometrics.LabelConnectionSecurityPolicy:
		return csp
	case istiometrics.LabelDestinationWorkloadNamespace:
		return fl.DstNS
	case istiometrics.LabelDestinationWorkload:
		return fl.DstWorkload
	case istiometrics.LabelSourceWorkloadNamespace:
		return fl.SrcNS
	case istiometrics.LabelSourceWorkload:
		return fl.SrcWorkload
	case istiometrics.LabelSourcePrincipal:
		return fl.SrcPrin
	}
	return ""
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func lv(s string) model.LabelValue {
	if s == "" {
		return istiometrics.Unknown
	}
	return model.LabelValue(s)
}
