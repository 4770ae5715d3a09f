package istiometrics

import (
	"context"
	"fmt"
	"strings"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// Querier is the part of client_golang's v1.API the tool uses; tests pass a
// fake (as Argo Rollouts' Prometheus provider does).
type Querier interface {
	Query(ctx context.Context, query string, ts time.Time, opts ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error)
	QueryRange(ctx context.Context, query string, r v1.Range, opts ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error)
}

// Instant runs an instant query at ts, bounded by timeout (0: by ctx
// only). Prometheus' warnings and infos are returned with the value: the
// caller decides what they mean, and says so where it ignores them.
func Instant(ctx context.Context, q Querier, query string, ts time.Time, timeout time.Duration) (model.Value, v1.Warnings, v1.Infos, error) {
	ctx, cancel := withTimeout(ctx, timeout)
	defer cancel()
	return q.Query(ctx, query, ts)
}

// Range runs a range query, bounded by timeout (0: by ctx only), and
// returns warnings and infos as Instant does.
func Range(ctx context.Context, q Querier, query string, r v1.Range, timeout time.Duration) (model.Value, v1.Warnings, v1.Infos, error) {
	ctx, cancel := withTimeout(ctx, timeout)
	defer cancel()
	return q.QueryRange(ctx, query, r)
}

func withTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout > 0 {
		return context.WithTimeout(ctx, timeout)
	}
	return context.WithCancel(ctx)
}

// UnusableAnswerError is an answer nothing may be judged by: Prometheus
// attached warnings (a partial answer: a store, shard or tenant limit did
// not answer in full, so an empty or low result may only be missing data),
// or the result is not of the type the caller needs (a matrix, a string, no
// value at all). It is never "no data" and never "fine".
type UnusableAnswerError struct {
	Warnings v1.Warnings
	// Got is the result's type when it is not the one needed ("" when
	// the type was right and only warnings make it unusable).
	Got string
	// Want is the type the caller needed, e.g. "an instant vector".
	Want string
}

func (e *UnusableAnswerError) Error() string {
	if len(e.Warnings) > 0 {
		return fmt.Sprintf("answered with warnings, so the answer may be partial: %s", strings.Join(e.Warnings, "; "))
	}
	return fmt.Sprintf("answered with %s, not %s", e.Got, e.Want)
}

// CheckWarnings returns an *UnusableAnswerError when warns is not empty.
// Infos are not checked: they are PromQL's informational annotations (such
// as "metric might not be a counter") and say nothing about missing data.
func CheckWarnings(warns v1.Warnings) error {
	if len(warns) > 0 {
		return &UnusableAnswerError{Warnings: warns}
	}
	return nil
}

// InstantVector runs Instant and returns its vector. A query error is
// returned as is; warnings or a result that is not a vector (including no
// value) are an *UnusableAnswerError.
func InstantVector(ctx context.Context, q Querier, query string, ts time.Time, timeout time.Duration) (model.Vector, error) {
	v, warns, _, err := Instant(ctx, q, query, ts, timeout)
	if err != nil {
		return nil, err
	}
	if err := CheckWarnings(warns); err != nil {
		return nil, err
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, &UnusableAnswerError{Got: TypeOf(v), Want: "an instant vector"}
	}
	return vec, nil
}

// TypeOf names a result's type for a message ("no value" for nil).
func TypeOf(v model.Value) string {
	if v == nil {
		return "no value"
	}
	return "a " + v.Type().String()
}
