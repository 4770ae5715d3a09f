// Package health judges a stage's health gates, in the manner of Argo
// Rollouts' analysis: a pure verdict function per measurement (Successful,
// Failed, Inconclusive or Error), kept apart from the loop that takes the
// measurements (Runner) and from where they come from (Prometheus queries,
// the namespace's pods). "No data", NaN, a warning (a partial answer), an
// answer of another type and an unreachable Prometheus are never a pass:
// they are errors, and K consecutive errors fail the gate; so do K
// measurements with too few samples after a baseline that had enough.
package health

import (
	"fmt"
	"math"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Verdict is the outcome of one measurement.
type Verdict string

// Verdicts, as in Argo Rollouts' AnalysisPhase.
const (
	Successful Verdict = "Successful"
	Failed     Verdict = "Failed"
	// Inconclusive: too few requests behind the value to judge, or a
	// relative gate without a baseline. Not a pass; see Tracker for when it
	// becomes a failure.
	Inconclusive Verdict = "Inconclusive"
	// Error: the value could not be had (query error, warnings, an answer
	// of another type, no data, NaN).
	Error Verdict = "Error"
)

// Measurement is what a gate's queries returned at one time.
type Measurement struct {
	// Value is the gate query's value; NaN when the query returned no data.
	Value float64
	// Samples is the samples query's value (NaN when absent or no data).
	Samples float64
	// Err is a query error.
	Err error
}

// Baseline is a gate measured once before the change.
type Baseline struct {
	Value   float64 // NaN when there was no data
	Samples float64 // NaN when there is no samples query or no data
}

// HasValue reports whether the baseline has a usable value.
func (b Baseline) HasValue() bool { return !math.IsNaN(b.Value) && !math.IsInf(b.Value, 0) }

// Result is one evaluated measurement.
type Result struct {
	Gate      string
	Verdict   Verdict
	Value     float64 // NaN when none
	Threshold float64 // NaN when it could not be computed
	Samples   float64 // NaN when none
	Message   string
}

// Threshold returns the number the gate's value is compared with: the
// plan's threshold, or for relative gates baseline−threshold
// (baseline-minus) or baseline×threshold (baseline-times).
func Threshold(g plans.Gate, b *Baseline) (float64, error) {
	switch g.Relative {
	case plans.Absolute:
		return g.Threshold, nil
	case plans.BaselineMinus, plans.BaselineTimes:
		if b == nil || !b.HasValue() {
			return math.NaN(), fmt.Errorf("no baseline: the gate's query had no data before the change (no traffic?), so a threshold relative to it cannot be set")
		}
		if g.Relative == plans.BaselineMinus {
			return b.Value - g.Threshold, nil
		}
		return b.Value * g.Threshold, nil
	}
	return math.NaN(), fmt.Errorf("unknown relative threshold %q", g.Relative)
}

// Evaluate judges one measurement of gate g against its baseline b (nil for
// absolute gates without one). It is a pure function.
func Evaluate(g plans.Gate, b *Baseline, m Measurement) Result {
	r := Result{Gate: g.Name, Value: m.Value, Samples: m.Samples, Threshold: math.NaN()}
	if m.Err != nil {
		r.Verdict, r.Value = Error, math.NaN()
		r.Message = fmt.Sprintf("query failed: %v", m.Err)
		return r
	}
	if g.MinSamples > 0 {
		switch {
		case math.IsNaN(m.Samples):
			// No requests at all in the interval: nothing to judge by.
			r.Verdict = Inconclusive
			r.Message = fmt.Sprintf("not enough data: no samples behind the gate (need %d)", g.MinSamples)
			return r
		case m.Samples < float64(g.MinSamples):
			r.Verdict = Inconclusive
			r.Message = fmt.Sprintf("not enough data: %.0f samples, need %d", m.Samples, g.MinSamples)
			return r
		}
	}
	th, err := Threshold(g, b)
	if err != nil {
		r.Verdict, r.Message = Inconclusive, err.Error()
		return r
	}
	r.Threshold = th
	if math.IsNaN(m.Value) || math.IsInf(m.Value, 0) {
		r.Verdict = Error
		r.Message = "no data (empty result or NaN): never read as healthy"
		return r
	}
	if compare(g.Comparison, m.Value, th) {
		r.Verdict = Successful
		r.Message = fmt.Sprintf("%.4g %s %.4g", m.Value, g.Comparison, th)
	} else {
		r.Verdict = Failed
		r.Message = fmt.Sprintf("%.4g is not %s %.4g", m.Value, g.Comparison, th)
	}
	return r
}

func compare(c plans.Comparison, v, th float64) bool {
	switch c {
	case plans.GreaterOrEqual:
		return v >= th
	case plans.Greater:
		return v > th
	case plans.LessOrEqual:
		return v <= th
	case plans.Less:
		return v < th
	}
	return false
}

// Tracker turns a gate's successive results into a decision. A Failed result
// fails the gate at once (a degraded stage is rolled back at once); Error
// fails it after MaxConsecutiveErrors in a row (a Successful or Failed
// result resets the count; Inconclusive does not).
//
// Too few samples is judged against the baseline, not on its own: minSamples
// says when a value is too thin to compare, and a gate whose baseline had
// enough samples (Baseline.Samples >= MinSamples) but whose measurement has
// too few has lost the traffic it watches, which is what a STRICT cut-off
// of a quiet namespace's clients looks like. Such a gate fails after
// MaxConsecutiveErrors such ticks in a row, whatever came before (a gate
// judged Successful once is not healthy forever), and fails at the end of
// the soak if the soak ends in such a run. A Successful or Failed result
// resets the run; an Error neither resets nor extends it. A gate whose
// baseline had too few samples never had the evidence: Inconclusive alone
// never fails it.
type Tracker struct {
	Gate                 plans.Gate
	Baseline             *Baseline
	MaxConsecutiveErrors int

	consecutiveErrors int
	starved           int  // consecutive ticks with too few samples, baseline having had enough
	judged            bool // some result was Successful or Failed
	Last              Result
}

func (t *Tracker) max() int {
	if t.MaxConsecutiveErrors < 1 {
		return 1
	}
	return t.MaxConsecutiveErrors
}

// baselineHadSamples reports whether the gate counts samples and its
// baseline had enough of them to judge by.
func (t *Tracker) baselineHadSamples() bool {
	return t.Gate.MinSamples > 0 && t.Baseline != nil && !math.IsNaN(t.Baseline.Samples) && t.Baseline.Samples >= float64(t.Gate.MinSamples)
}

// tooFewSamples reports whether r is Inconclusive for lack of samples (no
// samples at all, NaN, or fewer than MinSamples).
func (t *Tracker) tooFewSamples(r Result) bool {
	return r.Verdict == Inconclusive && t.Gate.MinSamples > 0 && (math.IsNaN(r.Samples) || r.Samples < float64(t.Gate.MinSamples))
}

// Observe records r and reports whether the gate has now failed, and why.
func (t *Tracker) Observe(r Result) (failed bool, reason string) {
	t.Last = r
	switch r.Verdict {
	case Failed:
		t.judged = true
		return true, fmt.Sprintf("gate %s failed: %s", r.Gate, r.Message)
	case Successful:
		t.judged = true
		t.consecutiveErrors, t.starved = 0, 0
	case Error:
		t.consecutiveErrors++
		if t.consecutiveErrors >= t.max() {
			return true, fmt.Sprintf("gate %s: %d consecutive errors: %s", r.Gate, t.consecutiveErrors, r.Message)
		}
	case Inconclusive:
		if t.tooFewSamples(r) && t.baselineHadSamples() {
			t.starved++
			if t.starved >= t.max() {
				return true, t.vanished(fmt.Sprintf("%d consecutive measurements", t.starved))
			}
		}
	}
	return false, ""
}

func (t *Tracker) vanished(when string) string {
	return fmt.Sprintf("gate %s: not enough samples to judge in %s (%s), although the baseline had %.0f: the traffic it watches vanished",
		t.Gate.Name, when, t.Last.Message, t.Baseline.Samples)
}

// Finish reports whether the gate fails at the end of the soak although no
// single result failed it: the soak ended in a run of measurements with too
// few samples while the baseline had enough (the gate is blind to traffic
// it saw before the change, so the stage cannot be called healthy by it),
// or the gate was Inconclusive throughout while the baseline had enough.
func (t *Tracker) Finish() (failed bool, reason string) {
	if t.Last.Verdict == "" || !t.baselineHadSamples() {
		return false, ""
	}
	switch {
	case t.starved > 0:
		return true, t.vanished(fmt.Sprintf("the last %d measurement(s) of the soak", t.starved))
	case !t.judged:
		return true, t.vanished("the whole soak")
	}
	return false, ""
}
