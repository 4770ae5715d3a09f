// Package gates defines the default health gates a plan stage carries: PromQL
// over Istio's standard metrics with thresholds the executor evaluates
// through the soak (relative ones against a baseline it measures before the
// change).
package gates

import (
	"fmt"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// DefaultMinSamples is the fewest requests in a gate window for a verdict.
const DefaultMinSamples = 10

// Defaults returns the gates for a stage on namespace, over window (the
// executor's --gate-window, e.g. 1m). namespace "" means the whole mesh (the
// mesh-wide stage).
//
//  1. success-rate: the destination's non-5xx share may drop by at most
//     0.01 from the baseline.
//  2. inbound-request-rate: requests into the namespace must stay at 0.8 of
//     the baseline or more. Plaintext clients cut off by STRICT leave no
//     error metric (their connections are reset before any request is
//     recorded): they vanish, and this gate is how we see them.
//  3. client-error-rate: meshed clients' own view (reporter="source") of
//     5xx and of failures with no response (code 0) toward the namespace:
//     at most 0.02 absolute. Absolute, because plans have no
//     "baseline-plus"; 0.02 leaves room for a namespace's usual errors
//     while catching a client whose DestinationRule still sends plaintext
//     (every one of its requests fails).
//  4. client-connection-failures: the share of source-reported requests
//     with Envoy response flags UF (upstream connection failure), URX
//     (retries exhausted) or UC (upstream connection termination), at most
//     0.01. Not "== 0": UC happens in healthy meshes whenever an upstream
//     closes a keep-alive connection as a request starts, and during
//     rollouts, so a zero threshold would roll back for noise; a ratio with
//     minSamples only fails when failures are a real share of the traffic.
func Defaults(namespace string, window plans.Duration) []plans.Gate {
	w := window.String()
	dst, src := istiometrics.Destination(namespace), istiometrics.SourceToward(namespace)
	rate := func(matchers ...string) string {
		return fmt.Sprintf("sum(rate(%s{%s}[%s]))", istiometrics.RequestsTotal, istiometrics.Selector(matchers...), w)
	}
	samples := func(sel string) string {
		return fmt.Sprintf("sum(increase(%s{%s}[%s]))", istiometrics.RequestsTotal, sel, w)
	}
	dstSamples, srcSamples := samples(dst), samples(src)
	return []plans.Gate{
		{
			Name:         "success-rate",
			Query:        fmt.Sprintf("%s / %s", rate(dst, istiometrics.NotRe(istiometrics.LabelResponseCode, "5..")), rate(dst)),
			Comparison:   plans.GreaterOrEqual,
			Threshold:    0.01,
			Relative:     plans.BaselineMinus,
			SamplesQuery: dstSamples,
			MinSamples:   DefaultMinSamples,
		},
		{
			Name:         "inbound-request-rate",
			Query:        rate(dst),
			Comparison:   plans.GreaterOrEqual,
			Threshold:    0.8,
			Relative:     plans.BaselineTimes,
			SamplesQuery: dstSamples,
			MinSamples:   DefaultMinSamples,
		},
		{
			Name:         "client-error-rate",
			Query:        fmt.Sprintf("(%s or vector(0)) / %s", rate(src, istiometrics.Re(istiometrics.LabelResponseCode, "5..|0")), rate(src)),
			Comparison:   plans.LessOrEqual,
			Threshold:    0.02,
			SamplesQuery: srcSamples,
			MinSamples:   DefaultMinSamples,
		},
		{
			Name:         "client-connection-failures",
			Query:        fmt.Sprintf("(%s or vector(0)) / %s", rate(src, istiometrics.Re(istiometrics.LabelResponseFlags, ".*(UF|URX|UC).*")), rate(src)),
			Comparison:   plans.LessOrEqual,
			Threshold:    0.01,
			SamplesQuery: srcSamples,
			MinSamples:   DefaultMinSamples,
		},
	}
}

// PlaintextSources is the gate of a stage whose namespace takes plaintext
// today (a blocked stage someone forces): the plaintext request rate into
// the namespace must stay at 0.8 of its baseline or more. STRICT resets
// those clients before any metric is recorded, so the rate falls to zero
// within the gate window; inbound-request-rate alone misses them when they
// are a small share of the namespace's traffic (Online Boutique's
// frontend-external is about a fifth). No baseline (the plaintext clients
// moved away since the plan) leaves it Inconclusive, never failing.
func PlaintextSources(namespace string, window plans.Duration) plans.Gate {
	return plans.Gate{
		Name:       "plaintext-request-rate",
		Query:      fmt.Sprintf("sum(rate(%s{%s}[%s]))", istiometrics.RequestsTotal, istiometrics.DestinationPlaintext(namespace), window.String()),
		Comparison: plans.GreaterOrEqual,
		Threshold:  0.8,
		Relative:   plans.BaselineTimes,
	}
}
