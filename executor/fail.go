package executor

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/events"
	"github.com/mtls-migrate/mtls-migrate/internal/probe"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

// stageRef names a stage in the migration state: all that recording and
// rolling back need, so a rollback works from the state alone when the
// plan the stage came from is not at hand.
type stageRef struct {
	Digest    string
	Number    int
	Namespace string
}

// setPhase updates this stage in the state along the phase machine; phase
// "" keeps the phase (only mutate runs). Every write is fenced: the stage
// must still be held by this run (Options.RunID) in the phase the run last
// wrote, else it is a *state.FencedError, nothing is written, and the run
// remembers it must stop.
func (r *run) setPhase(ctx context.Context, phase state.Phase, reason string, mutate func(*state.StageState)) error {
	if r.fenced != nil {
		return r.fenced
	}
	now := r.d.Clock.Now()
	err := r.d.Store.Update(ctx, func(s *state.State) error {
		p := s.Plan(r.ref.Digest)
		if p == nil || p.Stage(r.ref.Number) == nil {
			return errors.New("the stage vanished from the migration state")
		}
		st := p.Stage(r.ref.Number)
		if err := st.Fence(r.o.RunID, r.phase); err != nil {
			return err
		}
		if phase != "" && (phase != st.Phase || reason != "") {
			if err := st.Move(phase, now, reason); err != nil {
				return err
			}
		}
		if mutate != nil {
			mutate(st)
		}
		return nil
	})
	var fenced *state.FencedError
	switch {
	case errors.As(err, &fenced):
		r.fenced = fenced
	case err == nil && phase != "":
		r.phase = phase
	}
	return err
}

func (r *run) event(ctx context.Context, typ, reason, msg string) {
	if err := r.d.Events.Event(ctx, r.ref.Namespace, typ, reason, msg); err != nil {
		r.d.Progress.Step("event", "could not record event: "+err.Error())
	}
}

// fail rolls the stage back from the state and, when the plan's probes are
// known, confirms with them that plaintext is accepted again. cause, when
// set, is an error other than a failed check (its exit code is then 1 if
// the rollback works).
func (r *run) fail(ctx context.Context, reason string, cause error) error {
	if r.fenced != nil {
		// Someone else holds the stage now (a person's rollback, a run
		// that took over): theirs is the last word, ours is none.
		r.res.Reason = r.fenced.Error()
		r.res.Outcome = OutcomeTakenOver
		r.d.Progress.Step("stop", r.fenced.Error())
		return r.fenced
	}
	r.res.Reason = reason
	// The run's context may be what ended (Ctrl-C, SIGTERM): the rollback
	// must still happen, within its own bound.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	r.d.Progress.Step("rollback", "rolling back: "+reason)
	r.event(rctx, corev1.EventTypeWarning, events.StageRollingBack, fmt.Sprintf("stage %d: %s; rolling back", r.ref.Number, reason))
	rb := &rollback.Runner{Istio: r.d.Istio, Kube: r.d.Kube, Store: r.d.Store, Now: r.d.Clock.Now, Owner: r.o.RunID, Fallback: r.record}
	reps, err := rb.Stages(rctx, r.ref.Digest, []int{r.ref.Number}, reason, rollback.Options{})
	r.res.Rollback = reps
	var fenced *state.FencedError
	if errors.As(err, &fenced) {
		r.fenced = fenced
		return r.fail(ctx, reason, cause)
	}
	if err == nil {
		r.phase = state.RolledBack
		err = r.confirmPlaintext(rctx)
	}
	if err != nil {
		r.res.Outcome = OutcomeRollbackFailed
		r.event(rctx, corev1.EventTypeWarning, events.StageFailed, fmt.Sprintf("stage %d: rollback failed: %v", r.ref.Number, err))
		return &RollbackFailedError{Reason: reason, Err: err}
	}
	r.res.Outcome = OutcomeRolledBack
	r.event(rctx, corev1.EventTypeNormal, events.StageRolledBack, fmt.Sprintf("stage %d rolled back: %s", r.ref.Number, reason))
	r.d.Progress.Step("rollback", "rolled back; the PeerAuthentications are as before the stage")
	if cause != nil {
		return fmt.Errorf("%s; the stage was rolled back: %w", reason, cause)
	}
	return &RolledBackError{Reason: reason}
}

// confirmPlaintext checks that every probe that expected a refusal gets an
// answer again: the rollback reached the proxies. Without the plan (a
// rollback from the state alone) there are no probes to confirm with, and
// the restore stands on the API server's word.
func (r *run) confirmPlaintext(ctx context.Context) error {
	if r.stage == nil || !r.changed {
		return nil
	}
	var refused []plans.Probe
	for _, p := range r.stage.Probes {
		if p.Expect.Refused {
			refused = append(refused, p)
		}
	}
	if len(refused) == 0 {
		return nil
	}
	if err := r.probing(ctx, len(refused), r.o.ProbeWithin, r.o.Settle); err != nil {
		r.d.Progress.Step("rollback", "could not mark the confirmation probes in the state: "+err.Error())
	}
	if err := r.d.Clock.Sleep(ctx, r.o.Settle); err != nil {
		return err
	}
	for _, p := range refused {
		res := r.d.Prober.Until(ctx, p, probe.Answered, r.o.ProbeWithin)
		r.d.Progress.Step("rollback", "plaintext accepted again?", "probe", p.Name, "observed", res.Observed.String(), "ok", res.OK)
		if !res.OK {
			err := fmt.Errorf("after the rollback, probe %s still gets %s instead of an answer: plaintext is not accepted again", p.Name, res.Observed)
			if werr := r.setPhase(ctx, state.Failed, err.Error(), nil); werr != nil {
				err = errors.Join(err, fmt.Errorf("and recording the stage as failed: %w", werr))
			}
			return err
		}
	}
	// The real end of our plaintext probes (see markProbed).
	return r.markProbed(ctx, r.d.Clock.Now())
}
