package executor

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/internal/window"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// StageRunner runs one stage with the caller's clients and flags: ApplyNext
// decides which stage and how, the runner does it.
type StageRunner interface {
	// Run applies stage n of plan (digest) from the start.
	Run(ctx context.Context, plan *plans.Plan, digest string, n int) (*Result, error)
	// Resume finishes stage n of the plan recorded under digest, which a
	// run that died left in progress. plan is nil when that record belongs
	// to another plan than the one given: the stage is then rolled back
	// from the state alone.
	// namespace is the stage's, as the state records it.
	Resume(ctx context.Context, plan *plans.Plan, digest string, n int, namespace string) (*Result, error)
}

// Locker takes the run's lock. The context it returns is cancelled when the
// lock is lost; release gives it back.
type Locker func(ctx context.Context) (locked context.Context, release func(), err error)

// NextDeps are what `apply --next` needs besides a stage runner's clients.
type NextDeps struct {
	Store  state.Store
	Lock   Locker
	Stages StageRunner
	// Now is the clock of the window and of the state's records.
	Now func() time.Time
	// Say tells the operator what is being decided (a line each).
	Say func(string)
}

// NextOptions are one `apply --next` run's inputs.
type NextOptions struct {
	Plan   *plans.Plan
	Digest string
	// Window, when set, is when a new stage may start.
	Window *window.Window
	// Replan continues with a plan whose digest differs from the one in
	// progress.
	Replan bool
}

// NextOutcome says what ApplyNext did. Kind is NextRun when a stage ran (or
// was resumed: Resumed is then set) and Result holds its result; for the other
// kinds nothing was changed and Message says why.
type NextOutcome struct {
	Kind    NextKind
	Message string
	Stage   int
	Resumed bool
	Result  *Result
}

// NextOutsideWindow means the run was outside the allowed window with no
// stage in progress, so nothing was done.
const NextOutsideWindow NextKind = "outside-window"

// PlanChangedError says the plan given is not the one the migration is
// executing and --replan was not given; nothing was changed.
type PlanChangedError struct{ Message string }

func (e *PlanChangedError) Error() string { return e.Message }

// ApplyNext is `apply --next`: it finishes a stage that a dead run left
// mid-way, or else runs the next pending stage, once. Outside the window
// only a stage in progress is handled: the window is about starting changes,
// and STRICT must not stay unverified until the next window opens. The
// error is the stage run's (see Run), a *PlanChangedError, or the lock's or
// store's.
func ApplyNext(ctx context.Context, d NextDeps, o NextOptions) (*NextOutcome, error) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Say == nil {
		d.Say = func(string) {}
	}
	st, err := d.Store.Load(ctx)
	if err != nil {
		return nil, err
	}
	if _, inProgress := st.InProgress(); inProgress == nil && o.Window != nil {
		now := d.Now()
		if in, _ := o.Window.Contains(now); !in {
			msg := fmt.Sprintf("outside the allowed window %q (now %s; next opens %s): nothing to do",
				o.Window, now.In(o.Window.Loc).Format("Mon 15:04 MST"), o.Window.Next(now).Format("Mon 2006-01-02 15:04 MST"))
			d.Say(msg)
			return &NextOutcome{Kind: NextOutsideWindow, Message: msg}, nil
		}
	}

	ctx, release, err := d.Lock(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	// Re-read under the lock: the state may have moved while we waited.
	if st, err = d.Store.Load(ctx); err != nil {
		return nil, err
	}

	if rec, inProg := st.InProgress(); inProg != nil {
		plan := o.Plan
		if rec.Digest != o.Digest {
			if !o.Replan {
				return nil, &PlanChangedError{Message: fmt.Sprintf("stage %d (%s) of plan %q (%s) was left %s by a run that died, and the plan given is another one (%s); pass --replan to roll that stage back from the state and move to the new plan, or run `mtls-migrate apply --next` with the plan it started with",
					inProg.Number, inProg.Namespace, rec.Name, rec.Digest, inProg.Phase, o.Digest)}
			}
			plan = nil
		}
		res, err := d.Stages.Resume(ctx, plan, rec.Digest, inProg.Number, inProg.Namespace)
		return &NextOutcome{Kind: NextRun, Stage: inProg.Number, Resumed: true, Result: res}, err
	}

	if cur := st.Current(); cur != nil && cur.Digest != o.Digest && st.Plan(o.Digest) == nil {
		changes := strings.Join(DiffOutlines(cur, Outline(o.Plan)), "\n  ")
		if !o.Replan {
			return nil, &PlanChangedError{Message: fmt.Sprintf("the plan's digest %s differs from the one in progress (%q, %s): it changed since the migration started:\n  %s\nreview the change and pass --replan to continue with the new plan",
				o.Digest, cur.Name, cur.Digest, changes)}
		}
		d.Say(fmt.Sprintf("replanning: plan %q (%s) replaces %q (%s); stages changed:\n  %s", o.Plan.Metadata.Name, o.Digest, cur.Name, cur.Digest, changes))
	}

	// Record the plan and its outline (once), carrying done stages over.
	var notes []string
	if err := d.Store.Update(ctx, func(s *state.State) error {
		notes = nil
		prev := s.Current()
		isNew := s.Plan(o.Digest) == nil
		r := s.EnsurePlan(o.Plan.Metadata.Name, o.Digest, d.Now())
		if len(r.Outline) == 0 {
			r.Outline = Outline(o.Plan)
		}
		if isNew && prev != nil {
			// prev may have moved when EnsurePlan appended; look it up again.
			notes = CarryOver(s.Plan(prev.Digest), s.Plan(o.Digest), o.Plan, d.Now())
		}
		return nil
	}); err != nil {
		return nil, err
	}
	for _, n := range notes {
		d.Say(n)
	}
	if st, err = d.Store.Load(ctx); err != nil {
		return nil, err
	}
	next := PickNext(st, o.Plan, o.Digest)
	d.Say(next.Message)
	out := &NextOutcome{Kind: next.Kind, Message: next.Message}
	if next.Stage != nil {
		out.Stage = next.Stage.Number
	}
	if next.Kind != NextRun {
		return out, nil
	}
	out.Result, err = d.Stages.Run(ctx, o.Plan, o.Digest, next.Stage.Number)
	return out, err
}
