package scale

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Evaluation follows Prometheus 2.x (the sandbox runs 2.42) on the world's
// counters, which rise at a constant rate from Origin (until a flow's Stop)
// and are scraped continuously:
//
//   - increase(v[r]) is rate x the time the counter rose within [t-r, t].
//     Prometheus extrapolates from the first and last samples in the
//     range to its ends, which for a counter rising at a constant rate
//     over the whole range gives exactly that; where the rise stops inside
//     the range it overstates by range/(range - scrape interval) at most
//     (0.8% for a 1h5m range at a 30s scrape, 0.005% for 7 days);
//   - an instant selector sees every series (no staleness: no series ends);
//   - timestamp() is the evaluation time, also for a plain selector
//     (Prometheus would give the time of the last scrape, up to one
//     scrape interval earlier);
//   - a subquery [r:s] is evaluated at the multiples of s in [t-r, t]
//     (Prometheus 2.x aligns them to the epoch and includes the start).

func inf(sign int) float64 { return math.Inf(sign) }
func nan() float64         { return math.NaN() }

// sample is one element of an instant vector. Samples straight from the
// world's series carry their labels lazily (ser), so an aggregation over a
// million series reads only the labels it groups by.
type sample struct {
	ser      *series
	dropName bool        // lazy form: the metric name was dropped
	lbls     []labelPair // explicit form (ser == nil): sorted, without __name__
	name     string      // explicit form: the metric name, "" when dropped
	v        float64
}

type vector []sample

type scalar float64

type strVal string

type point struct {
	t int64 // milliseconds
	v float64
}

type mseries struct {
	s   sample // labels only
	pts []point
}

type matrix []*mseries

type evaluator struct {
	w        *World
	selCache map[*vectorSel][]*series
}

func newEvaluator(w *World) *evaluator {
	return &evaluator{w: w, selCache: map[*vectorSel][]*series{}}
}

func (e *evaluator) get(s *sample, name string) string {
	if s.ser != nil {
		if name == "__name__" && s.dropName {
			return ""
		}
		return e.w.label(s.ser, name)
	}
	if name == "__name__" {
		return s.name
	}
	for _, l := range s.lbls {
		if l.name == name {
			return l.value
		}
	}
	return ""
}

// explicit turns a lazy sample into the explicit form.
func (e *evaluator) explicit(s *sample) {
	if s.ser == nil {
		return
	}
	s.lbls = e.w.labels(s.ser, false)
	if !s.dropName {
		s.name = metricNames[s.ser.metric]
	}
	s.ser = nil
}

func (e *evaluator) dropName(s *sample) {
	if s.ser != nil {
		s.dropName = true
	} else {
		s.name = ""
	}
}

// signature identifies a sample's labels, with or without the metric name.
func (e *evaluator) signature(s *sample, withName bool) string {
	e.explicit(s)
	var b strings.Builder
	if withName {
		b.WriteString(s.name)
	}
	for _, l := range s.lbls {
		b.WriteByte(0xff)
		b.WriteString(l.name)
		b.WriteByte(0xfe)
		b.WriteString(l.value)
	}
	return b.String()
}

func (e *evaluator) selectSeries(vs *vectorSel) []*series {
	if out, ok := e.selCache[vs]; ok {
		return out
	}
	var out []*series
	for _, idx := range e.w.byMetric[vs.name] {
		s := &e.w.series[idx]
		ok := true
		for k := range vs.matchers {
			m := &vs.matchers[k]
			if !m.matches(e.w.label(s, m.name)) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	e.selCache[vs] = out
	return out
}

func (e *evaluator) eval(n node, t time.Time) (any, error) {
	switch x := n.(type) {
	case *numberLit:
		return scalar(x.v), nil
	case *stringLit:
		return strVal(x.s), nil
	case *vectorSel:
		at := t.Add(-x.offset)
		var out vector
		for _, s := range e.selectSeries(x) {
			if e.w.exists(s, at) {
				out = append(out, sample{ser: s, v: e.w.value(s, at)})
			}
		}
		return out, nil
	case *matrixSel:
		return nil, fmt.Errorf("a range vector as a query result is not supported by the synthetic Prometheus")
	case *subqueryExpr:
		return nil, fmt.Errorf("a subquery as a query result is not supported by the synthetic Prometheus")
	case *callExpr:
		return e.evalCall(x, t)
	case *aggExpr:
		return e.evalAgg(x, t)
	case *binaryExpr:
		return e.evalBinary(x, t)
	case *unaryMinus:
		v, err := e.eval(x.expr, t)
		if err != nil {
			return nil, err
		}
		switch y := v.(type) {
		case scalar:
			return -y, nil
		case vector:
			for k := range y {
				y[k].v = -y[k].v
				e.dropName(&y[k])
			}
			return y, nil
		}
		return nil, fmt.Errorf("unary minus on %T", v)
	}
	return nil, fmt.Errorf("unsupported expression %T", n)
}

func (e *evaluator) evalVector(n node, t time.Time) (vector, error) {
	v, err := e.eval(n, t)
	if err != nil {
		return nil, err
	}
	vec, ok := v.(vector)
	if !ok {
		return nil, fmt.Errorf("expected an instant vector, got %s", typeName(v))
	}
	return vec, nil
}

func typeName(v any) string {
	switch v.(type) {
	case vector:
		return "instant vector"
	case scalar:
		return "scalar"
	case strVal:
		return "string"
	}
	return fmt.Sprintf("%T", v)
}

func (e *evaluator) evalCall(c *callExpr, t time.Time) (any, error) {
	argc := func(n int) error {
		if len(c.args) != n {
			return fmt.Errorf("expected %d argument(s) in call to %q, got %d", n, c.fn, len(c.args))
		}
		return nil
	}
	switch c.fn {
	case "increase", "rate":
		if err := argc(1); err != nil {
			return nil, err
		}
		ms, ok := c.args[0].(*matrixSel)
		if !ok {
			return nil, fmt.Errorf("expected type range vector in call to function %q", c.fn)
		}
		end := t.Add(-ms.sel.offset)
		from := end.Add(-ms.rng)
		var out vector
		for _, s := range e.selectSeries(ms.sel) {
			if s.metric == mBuild || !e.w.exists(s, end) {
				continue
			}
			v := e.w.increase(s, from, end)
			if c.fn == "rate" {
				v /= ms.rng.Seconds()
			}
			out = append(out, sample{ser: s, dropName: true, v: v})
		}
		return out, nil
	case "max_over_time", "min_over_time", "last_over_time", "sum_over_time", "count_over_time", "avg_over_time":
		if err := argc(1); err != nil {
			return nil, err
		}
		switch a := c.args[0].(type) {
		case *subqueryExpr:
			m, err := e.evalSubquery(a, t)
			if err != nil {
				return nil, err
			}
			out := make(vector, 0, len(m))
			for _, ms := range m {
				s := ms.s
				e.dropName(&s)
				s.v = overTime(c.fn, ms.pts)
				out = append(out, s)
			}
			return out, nil
		case *matrixSel:
			// Counters only rise: the last value is the largest.
			if c.fn != "last_over_time" && c.fn != "max_over_time" {
				return nil, fmt.Errorf("%s over raw samples is not supported by the synthetic Prometheus (it has no scrape interval)", c.fn)
			}
			at := t.Add(-a.sel.offset)
			var out vector
			for _, s := range e.selectSeries(a.sel) {
				if e.w.exists(s, at) {
					out = append(out, sample{ser: s, dropName: true, v: e.w.value(s, at)})
				}
			}
			return out, nil
		}
		return nil, fmt.Errorf("expected type range vector in call to function %q", c.fn)
	case "timestamp":
		if err := argc(1); err != nil {
			return nil, err
		}
		vec, err := e.evalVector(c.args[0], t)
		if err != nil {
			return nil, err
		}
		ts := float64(t.UnixMilli()) / 1000
		for k := range vec {
			vec[k].v = ts
			e.dropName(&vec[k])
		}
		return vec, nil
	case "label_replace":
		return e.labelReplace(c, t)
	case "vector":
		if err := argc(1); err != nil {
			return nil, err
		}
		v, err := e.eval(c.args[0], t)
		if err != nil {
			return nil, err
		}
		s, ok := v.(scalar)
		if !ok {
			return nil, fmt.Errorf("expected type scalar in call to function \"vector\"")
		}
		return vector{{v: float64(s)}}, nil
	case "time":
		return scalar(float64(t.UnixMilli()) / 1000), nil
	}
	return nil, fmt.Errorf("function %q is not supported by the synthetic Prometheus", c.fn)
}

func overTime(fn string, pts []point) float64 {
	switch fn {
	case "last_over_time":
		return pts[len(pts)-1].v
	case "count_over_time":
		return float64(len(pts))
	}
	acc := pts[0].v
	sum := 0.0
	for _, p := range pts {
		sum += p.v
		switch {
		case fn == "max_over_time" && (p.v > acc || math.IsNaN(acc)):
			acc = p.v
		case fn == "min_over_time" && (p.v < acc || math.IsNaN(acc)):
			acc = p.v
		}
	}
	switch fn {
	case "sum_over_time":
		return sum
	case "avg_over_time":
		return sum / float64(len(pts))
	}
	return acc
}

// evalSubquery evaluates the inner expression at the multiples of the step
// in [t-offset-range, t-offset], as Prometheus 2.x does.
func (e *evaluator) evalSubquery(sq *subqueryExpr, t time.Time) (matrix, error) {
	end := t.Add(-sq.offset).UnixMilli()
	start := end - sq.rng.Milliseconds()
	step := sq.step.Milliseconds()
	if step <= 0 {
		return nil, fmt.Errorf("zero subquery step")
	}
	first := step * (start / step)
	if first < start {
		first += step
	}
	idx := map[string]*mseries{}
	var out matrix
	for ts := first; ts <= end; ts += step {
		vec, err := e.evalVector(sq.expr, time.UnixMilli(ts))
		if err != nil {
			return nil, err
		}
		for k := range vec {
			s := vec[k]
			key := e.signature(&s, true)
			ms := idx[key]
			if ms == nil {
				ms = &mseries{s: s}
				idx[key] = ms
				out = append(out, ms)
			}
			ms.pts = append(ms.pts, point{ts, s.v})
		}
	}
	return out, nil
}

func (e *evaluator) labelReplace(c *callExpr, t time.Time) (any, error) {
	if len(c.args) != 5 {
		return nil, fmt.Errorf("expected 5 arguments in call to \"label_replace\", got %d", len(c.args))
	}
	vec, err := e.evalVector(c.args[0], t)
	if err != nil {
		return nil, err
	}
	var strs [4]string
	for k := 1; k < 5; k++ {
		s, ok := c.args[k].(*stringLit)
		if !ok {
			return nil, fmt.Errorf("expected type string in call to function \"label_replace\"")
		}
		strs[k-1] = s.s
	}
	dst, repl, src, reStr := strs[0], strs[1], strs[2], strs[3]
	re, err := regexp.Compile("^(?:" + reStr + ")$")
	if err != nil {
		return nil, fmt.Errorf("invalid regular expression in label_replace(): %s", reStr)
	}
	for k := range vec {
		s := &vec[k]
		m := re.FindStringSubmatchIndex(e.get(s, src))
		if m == nil {
			continue
		}
		val := string(re.ExpandString(nil, repl, e.get(s, src), m))
		e.explicit(s)
		if dst == "__name__" {
			s.name = val
			continue
		}
		s.lbls = setLabel(s.lbls, dst, val)
	}
	return vec, nil
}

// setLabel sets (or with "" removes) a label, keeping them sorted.
func setLabel(l []labelPair, name, value string) []labelPair {
	out := make([]labelPair, 0, len(l)+1)
	done := false
	for _, p := range l {
		if p.name == name {
			done = true
			if value != "" {
				out = append(out, labelPair{name, value})
			}
			continue
		}
		if !done && p.name > name {
			done = true
			if value != "" {
				out = append(out, labelPair{name, value})
			}
		}
		out = append(out, p)
	}
	if !done && value != "" {
		out = append(out, labelPair{name, value})
	}
	return out
}

func (e *evaluator) evalAgg(a *aggExpr, t time.Time) (any, error) {
	vec, err := e.evalVector(a.expr, t)
	if err != nil {
		return nil, err
	}
	by := append([]string(nil), a.by...)
	sort.Strings(by)
	excluded := map[string]bool{"__name__": true}
	if a.without {
		for _, l := range a.by {
			excluded[l] = true
		}
	}
	type group struct {
		lbls     []labelPair
		sum, acc float64
		count    int
	}
	groups := map[string]*group{}
	var order []*group
	var key strings.Builder
	for k := range vec {
		s := &vec[k]
		key.Reset()
		var lbls []labelPair
		if a.without {
			e.explicit(s)
			for _, l := range s.lbls {
				if !excluded[l.name] {
					key.WriteString(l.name)
					key.WriteByte(0xfe)
					key.WriteString(l.value)
					key.WriteByte(0xff)
				}
			}
		} else {
			for _, l := range by {
				key.WriteString(e.get(s, l))
				key.WriteByte(0xff)
			}
		}
		g := groups[key.String()]
		if g == nil {
			if a.without {
				for _, l := range s.lbls {
					if !excluded[l.name] {
						lbls = append(lbls, l)
					}
				}
			} else {
				for _, l := range by {
					if v := e.get(s, l); v != "" {
						lbls = append(lbls, labelPair{l, v})
					}
				}
			}
			g = &group{lbls: lbls, acc: s.v}
			groups[key.String()] = g
			order = append(order, g)
		}
		g.count++
		g.sum += s.v
		switch {
		case a.op == "max" && (s.v > g.acc || math.IsNaN(g.acc)):
			g.acc = s.v
		case a.op == "min" && (s.v < g.acc || math.IsNaN(g.acc)):
			g.acc = s.v
		}
	}
	out := make(vector, 0, len(order))
	for _, g := range order {
		v := g.sum
		switch a.op {
		case "count":
			v = float64(g.count)
		case "group":
			v = 1
		case "avg":
			v = g.sum / float64(g.count)
		case "min", "max":
			v = g.acc
		}
		out = append(out, sample{lbls: g.lbls, v: v})
	}
	return out, nil
}

func (e *evaluator) evalBinary(b *binaryExpr, t time.Time) (any, error) {
	lhs, err := e.eval(b.lhs, t)
	if err != nil {
		return nil, err
	}
	rhs, err := e.eval(b.rhs, t)
	if err != nil {
		return nil, err
	}
	switch b.op {
	case "or", "and", "unless":
		l, lok := lhs.(vector)
		r, rok := rhs.(vector)
		if !lok || !rok {
			return nil, fmt.Errorf("set operator %q not allowed in binary scalar expression", b.op)
		}
		return e.setOp(b.op, l, r), nil
	}
	comparison := false
	switch b.op {
	case "==", "!=", "<", ">", "<=", ">=":
		comparison = true
	}
	switch l := lhs.(type) {
	case scalar:
		switch r := rhs.(type) {
		case scalar:
			if comparison && !b.returnBool {
				return nil, fmt.Errorf("comparisons between scalars must use BOOL modifier")
			}
			v, _ := binop(b.op, float64(l), float64(r))
			return scalar(v), nil
		case vector:
			return e.vectorScalar(b, r, float64(l), true, comparison), nil
		}
	case vector:
		switch r := rhs.(type) {
		case scalar:
			return e.vectorScalar(b, l, float64(r), false, comparison), nil
		case vector:
			if b.returnBool {
				return nil, fmt.Errorf("binary %q bool between two vectors is not supported by the synthetic Prometheus", b.op)
			}
			return e.vectorVector(b, l, r, comparison)
		}
	}
	return nil, fmt.Errorf("binary %q between %s and %s", b.op, typeName(lhs), typeName(rhs))
}

// vectorVector is one-to-one matching on all labels but the metric name
// (no on, ignoring or group modifiers), as PromQL does it: a sample of
// either side without a match is dropped, a match group with more than one
// sample on a side is an error, arithmetic drops the metric name and a
// comparison keeps the left sample where it holds.
func (e *evaluator) vectorVector(b *binaryExpr, l, r vector, comparison bool) (vector, error) {
	rs := make(map[string]int, len(r))
	for k := range r {
		sig := e.signature(&r[k], false)
		if _, dup := rs[sig]; dup {
			return nil, fmt.Errorf("found duplicate series for the match group on the right hand-side of the operation %q", b.op)
		}
		rs[sig] = k
	}
	seen := make(map[string]bool, len(l))
	out := vector{}
	for k := range l {
		sig := e.signature(&l[k], false)
		j, ok := rs[sig]
		if !ok {
			continue
		}
		if seen[sig] {
			return nil, fmt.Errorf("found duplicate series for the match group on the left hand-side of the operation %q", b.op)
		}
		seen[sig] = true
		smp := l[k]
		v, keep := binop(b.op, smp.v, r[j].v)
		if comparison {
			if !keep {
				continue
			}
		} else {
			e.dropName(&smp)
			smp.v = v
		}
		out = append(out, smp)
	}
	return out, nil
}

func (e *evaluator) vectorScalar(b *binaryExpr, vec vector, s float64, scalarLeft, comparison bool) vector {
	out := vec[:0]
	for k := range vec {
		smp := vec[k]
		l, r := smp.v, s
		if scalarLeft {
			l, r = s, smp.v
		}
		v, keep := binop(b.op, l, r)
		if comparison {
			if b.returnBool {
				v = 0
				if keep {
					v = 1
				}
				e.dropName(&smp)
			} else {
				if !keep {
					continue
				}
				v = smp.v
			}
		} else {
			e.dropName(&smp)
		}
		smp.v = v
		out = append(out, smp)
	}
	return out
}

// binop computes an arithmetic result, or a comparison's truth (keep).
func binop(op string, l, r float64) (float64, bool) {
	switch op {
	case "+":
		return l + r, true
	case "-":
		return l - r, true
	case "*":
		return l * r, true
	case "/":
		return l / r, true
	case "%":
		return math.Mod(l, r), true
	case "^":
		return math.Pow(l, r), true
	case "==":
		return l, l == r
	case "!=":
		return l, l != r
	case "<":
		return l, l < r
	case ">":
		return l, l > r
	case "<=":
		return l, l <= r
	case ">=":
		return l, l >= r
	}
	return math.NaN(), false
}

// setOp matches on all labels but the metric name, as PromQL's or, and and
// unless do without on() or ignoring().
func (e *evaluator) setOp(op string, l, r vector) vector {
	rs := make(map[string]bool, len(r))
	for k := range r {
		rs[e.signature(&r[k], false)] = true
	}
	switch op {
	case "or":
		ls := make(map[string]bool, len(l))
		for k := range l {
			ls[e.signature(&l[k], false)] = true
		}
		out := l
		for k := range r {
			if !ls[e.signature(&r[k], false)] {
				out = append(out, r[k])
			}
		}
		return out
	case "and":
		out := vector{}
		for k := range l {
			if rs[e.signature(&l[k], false)] {
				out = append(out, l[k])
			}
		}
		return out
	}
	out := vector{}
	for k := range l {
		if !rs[e.signature(&l[k], false)] {
			out = append(out, l[k])
		}
	}
	return out
}
