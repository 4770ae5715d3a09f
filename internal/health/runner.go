package health

import (
	"context"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/clock"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Check is one health signal evaluated through the soak.
type Check interface {
	// Settings are what the check's results are judged by through the
	// soak (see Tracker): its gate, whose name names the check, and the
	// baseline measured before the change (nil when none).
	Settings() (plans.Gate, *Baseline)
	Check(ctx context.Context, now time.Time) Result
}

// Tick is what the runner reports after each round of evaluations.
type Tick struct {
	Elapsed, Remaining time.Duration
	Results            []Result
}

// Runner evaluates every check each Interval for the length of the soak.
type Runner struct {
	Checks               []Check
	Interval             time.Duration
	MaxConsecutiveErrors int
	Clock                clock.Clock
	// OnTick, when set, sees each round (progress output, state records).
	OnTick func(Tick)
}

// Outcome is how the soak ended.
type Outcome struct {
	Healthy bool
	// Reason names the failed check and why.
	Reason string
	// Last holds the last result of every check.
	Last []Result
	// Err is set when the soak was interrupted (ctx done) before a verdict.
	Err error
}

// Soak evaluates the checks at once and then every Interval until d has
// passed, stopping at the first failure.
func (r *Runner) Soak(ctx context.Context, d time.Duration) Outcome {
	trackers := make([]*Tracker, len(r.Checks))
	for i, c := range r.Checks {
		g, b := c.Settings()
		trackers[i] = &Tracker{Gate: g, Baseline: b, MaxConsecutiveErrors: r.MaxConsecutiveErrors}
	}
	last := func() []Result {
		out := make([]Result, len(trackers))
		for i, t := range trackers {
			out[i] = t.Last
		}
		return out
	}
	start := r.Clock.Now()
	for {
		now := r.Clock.Now()
		results := make([]Result, len(r.Checks))
		failed, reason := false, ""
		for i, c := range r.Checks {
			results[i] = c.Check(ctx, now)
			if f, why := trackers[i].Observe(results[i]); f && !failed {
				failed, reason = true, why
			}
		}
		elapsed := r.Clock.Now().Sub(start)
		remaining := max(d-elapsed, 0)
		if r.OnTick != nil {
			r.OnTick(Tick{Elapsed: elapsed, Remaining: remaining, Results: results})
		}
		if failed {
			return Outcome{Reason: reason, Last: last()}
		}
		if ctx.Err() != nil {
			return Outcome{Reason: "interrupted during the soak", Last: last(), Err: ctx.Err()}
		}
		if remaining <= 0 {
			break
		}
		if err := r.Clock.Sleep(ctx, min(r.Interval, remaining)); err != nil {
			return Outcome{Reason: "interrupted during the soak", Last: last(), Err: err}
		}
	}
	for _, t := range trackers {
		if f, why := t.Finish(); f {
			return Outcome{Reason: why, Last: last()}
		}
	}
	return Outcome{Healthy: true, Last: last()}
}
