package health

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// ErrTooManySeries says a gate's query returned more than one series.
var ErrTooManySeries = errors.New("the query returns more than one series; a gate needs a single value (wrap it in sum(...))")

// QueryValue runs an instant query, bounded by timeout (0: ctx only), that
// must return one number. An empty result is NaN with no error ("no data"
// is for the caller to judge, and Evaluate never passes it). Warnings (a
// partial answer), no value at all, or a result that is neither a vector
// nor a scalar are errors (*istiometrics.UnusableAnswerError): a gate
// never judges by them.
func QueryValue(ctx context.Context, q istiometrics.Querier, query string, ts time.Time, timeout time.Duration) (float64, error) {
	v, warns, _, err := istiometrics.Instant(ctx, q, query, ts, timeout)
	if err != nil {
		return math.NaN(), fmt.Errorf("prometheus query %q: %w", query, err)
	}
	if err := istiometrics.CheckWarnings(warns); err != nil {
		return math.NaN(), fmt.Errorf("prometheus query %q: %w", query, err)
	}
	switch val := v.(type) {
	case model.Vector:
		switch len(val) {
		case 0:
			return math.NaN(), nil
		case 1:
			return float64(val[0].Value), nil
		}
		return math.NaN(), fmt.Errorf("prometheus query %q: %w (got %d)", query, ErrTooManySeries, len(val))
	case *model.Scalar:
		return float64(val.Value), nil
	}
	return math.NaN(), fmt.Errorf("prometheus query %q: %w", query, &istiometrics.UnusableAnswerError{Got: istiometrics.TypeOf(v), Want: "an instant vector or a scalar"})
}

// Measure takes one measurement of a gate: its query and, when set, its
// samples query, each bounded by timeout (0: ctx only).
func Measure(ctx context.Context, q istiometrics.Querier, g plans.Gate, ts time.Time, timeout time.Duration) Measurement {
	m := Measurement{Samples: math.NaN()}
	m.Value, m.Err = QueryValue(ctx, q, g.Query, ts, timeout)
	if m.Err == nil && g.SamplesQuery != "" {
		m.Samples, m.Err = QueryValue(ctx, q, g.SamplesQuery, ts, timeout)
	}
	return m
}

// MeasureBaseline measures a gate once before the change. A query error is
// returned (the executor must not start without a baseline it could not
// take); no data is a baseline without a value, recorded as such.
func MeasureBaseline(ctx context.Context, q istiometrics.Querier, g plans.Gate, ts time.Time, timeout time.Duration) (Baseline, error) {
	m := Measure(ctx, q, g, ts, timeout)
	if m.Err != nil {
		return Baseline{Value: math.NaN(), Samples: math.NaN()}, fmt.Errorf("baseline of gate %s: %w", g.Name, m.Err)
	}
	return Baseline{Value: m.Value, Samples: m.Samples}, nil
}

// PromGate is a plan gate evaluated against Prometheus.
type PromGate struct {
	Gate     plans.Gate
	Baseline *Baseline
	Querier  istiometrics.Querier
	// Timeout bounds each query (0: the caller's context only).
	Timeout time.Duration
}

// Settings are the plan's gate and its baseline.
func (p *PromGate) Settings() (plans.Gate, *Baseline) { return p.Gate, p.Baseline }

// Check measures and evaluates the gate.
func (p *PromGate) Check(ctx context.Context, now time.Time) Result {
	return Evaluate(p.Gate, p.Baseline, Measure(ctx, p.Querier, p.Gate, now, p.Timeout))
}
