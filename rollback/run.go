package rollback

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	istio "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/kuberetry"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
)

// Runner rolls stages back from the migration state and records it there.
type Runner struct {
	Istio istio.Interface
	// Kube, when set, tells a deleted namespace (nothing left to restore)
	// from a deleted policy (someone else's change).
	Kube  kubernetes.Interface
	Store state.Store
	Now   func() time.Time
	// Owner is the run rolling back (its lock identity): the stage's owner
	// from rolling-back on. A stage held by another run is refused
	// (*state.FencedError) unless TakeOver, which a person's rollback sets to
	// win over a running apply.
	Owner    string
	TakeOver bool
	// Fallback is the stage as the calling run wrote it, used when the
	// state has no record of it (its ConfigMap was deleted): the snapshot
	// must not be lost with it.
	Fallback *state.StageState
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
	if err != nil && r.Fallback == nil {
		return nil, err
	}
	var p *state.PlanRecord
	if err == nil {
		p = s.Plan(planDigest)
	}
	if p == nil && r.Fallback == nil {
		return nil, ErrNoRecord
	}
	var reports []StageReport
	for _, n := range numbers {
		var st *state.StageState
		if p != nil {
			st = p.Stage(n)
		}
		if st == nil && r.Fallback != nil && r.Fallback.Number == n {
			st = r.Fallback
		}
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
	if gone, err := r.namespaceGone(ctx, st.Namespace); err != nil {
		return rep, err
	} else if gone {
		// Everything the stage wrote went with the namespace: nothing to
		// restore, and `rollback --all` goes on with the other stages.
		rep.Note = fmt.Sprintf("namespace %q no longer exists: nothing to restore", st.Namespace)
		if !o.DryRun && st.Phase != state.RolledBack {
			if err := r.setPhase(ctx, digest, st.Number, state.RollingBack, reason, now()); err == nil {
				_ = r.setPhase(ctx, digest, st.Number, state.RolledBack, rep.Note, now())
			}
		}
		return rep, nil
	}
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
	// The restore is attempted even when the state cannot record that it
	// starts (the ConfigMap deleted, the API server refusing writes): the
	// policies matter more than the record. Only a stage that someone else
	// holds now is left to them.
	var recordErr error
	if err := r.setPhase(ctx, digest, st.Number, state.RollingBack, reason, now()); err != nil {
		var fenced *state.FencedError
		if errors.As(err, &fenced) {
			return rep, err
		}
		recordErr = err
		rep.Note = "the migration state could not record the rollback (" + err.Error() + "); restored from the snapshot the run holds"
	}
	acts, err := Restore(ctx, r.Istio, st, o)
	rep.Actions = acts
	for _, a := range acts {
		rep.Changed = rep.Changed || a.Changed
	}
	if err != nil {
		rep.Error = err.Error()
		if recordErr == nil {
			if werr := r.setPhase(ctx, digest, st.Number, state.Failed, "rollback failed: "+err.Error(), now()); werr != nil {
				err = errors.Join(err, werr)
			}
		}
		return rep, fmt.Errorf("roll back stage %d (%s): %w", st.Number, st.Namespace, err)
	}
	if !rep.Changed && rep.Note == "" {
		rep.Note = "everything was already as before the stage"
	}
	if recordErr != nil {
		return rep, nil
	}
	if err := r.setPhase(ctx, digest, st.Number, state.RolledBack, reason, now()); err != nil {
		return rep, err
	}
	return rep, nil
}

// namespaceGone reports whether the stage's namespace was deleted (false
// without a Kube client: then a missing policy is someone else's change).
func (r *Runner) namespaceGone(ctx context.Context, ns string) (bool, error) {
	if r.Kube == nil {
		return false, nil
	}
	var err error
	err = kuberetry.DoUntil(ctx, func() error {
		_, err = r.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return err
	})
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("read namespace %q before rolling it back: %w", ns, err)
	}
	return false, nil
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
		st := p.Stage(n)
		if !(r.TakeOver && ph == state.RollingBack) {
			if err := st.Fence(r.Owner, ""); err != nil {
				return err
			}
		}
		if err := st.Move(ph, at, reason); err != nil {
			return err
		}
		if ph == state.RollingBack && r.Owner != "" {
			st.Owner = r.Owner
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record stage %d as %s: %w", n, ph, err)
	}
	return nil
}
