package rollback

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	istio "istio.io/client-go/pkg/clientset/versioned"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
)

// Runner rolls stages back from the migration state and records it there.
type Runner struct {
	Istio istio.Interface
	Store state.Store
	Now   func() time.Time
}

// StageReport is what rolling back one stage did.
type StageReport struct {
	Number    int      `json:"number"`
	Namespace string   `json:"namespace"`
	Actions   []Action `json:"actions"`
	// Changed is false when everything was already as before.
	Changed bool   `json:"changed"`
	Note    string `json:"note,omitempty"`
	Error   string `json:"error,omitempty"`
}

// ErrNoRecord says the state has no record of the plan.
var ErrNoRecord = errors.New("no stage of this plan was ever applied (the migration state has no record of its digest)")

// AppliedStages returns the numbers of the plan's stages that were applied
// (any phase but pending), latest first: the order of `rollback --all`.
func AppliedStages(s *state.State, planDigest string) ([]int, error) {
	p := s.Plan(planDigest)
	if p == nil {
		return nil, ErrNoRecord
	}
	var out []int
	for _, st := range p.Stages {
		if st.Phase != state.Pending {
			out = append(out, st.Number)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(out)))
	return out, nil
}

// Stages rolls back the given stages of the plan, in the order given,
// recording each in the state (rolling-back before touching anything, then
// rolled-back or failed). It stops at the first stage it cannot restore:
// an earlier stage must not be undone under a later one left half-way.
func (r *Runner) Stages(ctx context.Context, planDigest string, numbers []int, reason string, o Options) ([]StageReport, error) {
	now := r.Now
	if now == nil {
		now = time.Now
	}
	s, err := r.Store.Load(ctx)
	if err != nil {
		return nil, err
	}
	p := s.Plan(planDigest)
	if p == nil {
		return nil, ErrNoRecord
	}
	var reports []StageReport
	for _, n := range numbers {
		st := p.Stage(n)
		if st == nil || st.Phase == state.Pending {
			reports = append(reports, StageReport{Number: n, Note: "never applied: nothing to roll back"})
			continue
		}
		rep, err := r.stage(ctx, planDigest, st, reason, o, now)
		reports = append(reports, rep)
		if err != nil {
			return reports, err
		}
	}
	return reports, nil
}

func (r *Runner) stage(ctx context.Context, digest string, st *state.StageState, reason string, o Options, now func() time.Time) (StageReport, error) {
	rep := StageReport{Number: st.Number, Namespace: st.Namespace}
	// A stage already rolled back is checked with a dry run first, so a
	// second rollback writes nothing at all when nothing changed.
	if st.Phase == state.RolledBack || o.DryRun {
		acts, err := Restore(ctx, r.Istio, st, Options{DryRun: true})
		if err != nil {
			rep.Error = err.Error()
			return rep, fmt.Errorf("roll back stage %d (%s): %w", st.Number, st.Namespace, err)
		}
		if o.DryRun {
			rep.Actions = acts
			return rep, nil
		}
		if !anyWouldChange(acts) {
			rep.Actions = acts
			rep.Note = fmt.Sprintf("already rolled back at %s; nothing changed", st.FinishedAt.Format(time.RFC3339))
			return rep, nil
		}
	}
	if err := r.setPhase(ctx, digest, st.Number, state.RollingBack, reason, now()); err != nil {
		return rep, err
	}
	acts, err := Restore(ctx, r.Istio, st, o)
	rep.Actions = acts
	for _, a := range acts {
		rep.Changed = rep.Changed || a.Changed
	}
	if err != nil {
		rep.Error = err.Error()
		if werr := r.setPhase(ctx, digest, st.Number, state.Failed, "rollback failed: "+err.Error(), now()); werr != nil {
			err = errors.Join(err, werr)
		}
		return rep, fmt.Errorf("roll back stage %d (%s): %w", st.Number, st.Namespace, err)
	}
	if !rep.Changed {
		rep.Note = "everything was already as before the stage"
	}
	if err := r.setPhase(ctx, digest, st.Number, state.RolledBack, reason, now()); err != nil {
		return rep, err
	}
	return rep, nil
}

func anyWouldChange(acts []Action) bool {
	for _, a := range acts {
		if a.Changed || a.WouldChange {
			return true
		}
	}
	return false
}

func (r *Runner) setPhase(ctx context.Context, digest string, n int, ph state.Phase, reason string, at time.Time) error {
	err := r.Store.Update(ctx, func(s *state.State) error {
		p := s.Plan(digest)
		if p == nil || p.Stage(n) == nil {
			return fmt.Errorf("stage %d vanished from the migration state", n)
		}
		return p.Stage(n).Move(ph, at, reason)
	})
	if err != nil {
		return fmt.Errorf("record stage %d as %s: %w", n, ph, err)
	}
	return nil
}
