package istiometrics

import (
	"context"
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
