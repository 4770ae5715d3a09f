package health

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Querier is the part of client_golang's v1.API the gates use; tests pass a
// fake (as Argo Rollouts' Prometheus provider does).
type Querier interface {
	Query(ctx context.Context, query string, ts time.Time, opts ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error)
}

// ErrTooManySeries says a gate's query returned more than one series.
var ErrTooManySeries = errors.New("the query returns more than one series; a gate needs a single value (wrap it in sum(...))")

// QueryValue runs an instant query that must return one number. An empty
// result is NaN with no error ("no data" is for the caller to judge, and
// Evaluate never passes it).
func QueryValue(ctx context.Context, q Querier, query string, ts time.Time) (float64, error) {
	v, _, _, err := q.Query(ctx, query, ts)
	if err != nil {
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
	case nil:
		return math.NaN(), nil
	}
	return math.NaN(), fmt.Errorf("prometheus query %q: unexpected result type %s", query, v.Type())
}

// Measure takes one measurement of a gate: its query and, when set, its
// samples query.
func Measure(ctx context.Context, q Querier, g plans.Gate, ts time.Time) Measurement {
	m := Measurement{Samples: math.NaN()}
	m.Value, m.Err = QueryValue(ctx, q, g.Query, ts)
	if m.Err == nil && g.SamplesQuery != "" {
		m.Samples, m.Err = QueryValue(ctx, q, g.SamplesQuery, ts)
	}
	return m
}

// MeasureBaseline measures a gate once before the change. A query error is
// returned (the executor must not start without a baseline it could not
// take); no data is a baseline without a value, recorded as such.
func MeasureBaseline(ctx context.Context, q Querier, g plans.Gate, ts time.Time) (Baseline, error) {
	m := Measure(ctx, q, g, ts)
	if m.Err != nil {
		return Baseline{Value: math.NaN(), Samples: math.NaN()}, fmt.Errorf("baseline of gate %s: %w", g.Name, m.Err)
	}
	return Baseline{Value: m.Value, Samples: m.Samples}, nil
}

// PromGate is a plan gate evaluated against Prometheus.
type PromGate struct {
	Gate     plans.Gate
	Baseline *Baseline
	Querier  Querier
	// Timeout bounds each query (0: the caller's context only).
	Timeout time.Duration
}

// Name is the gate's name.
func (p *PromGate) Name() string { return p.Gate.Name }

// Check measures and evaluates the gate.
func (p *PromGate) Check(ctx context.Context, now time.Time) Result {
	if p.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.Timeout)
		defer cancel()
	}
	return Evaluate(p.Gate, p.Baseline, Measure(ctx, p.Querier, p.Gate, now))
}
