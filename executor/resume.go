package executor

import (
	"context"
	"errors"
	"fmt"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/mtls-migrate/mtls-migrate/internal/events"
	"github.com/mtls-migrate/mtls-migrate/internal/health"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

// Resume finishes a stage a previous run left mid-way: the state says
// applying, soaking or rolling-back and the run that wrote it is gone (the
// caller holds the lock). It never leaves the target mode unverified:
//
//   - rolling-back: the rollback is finished from the state's snapshot;
//   - applying or soaking, the change is live and o.Plan is the plan of
//     that record: probes and a full fresh soak (against the baseline
//     recorded before the change), then done or rolled back;
//   - applying, the change never reached the API server: the snapshot is
//     restored (normally a no-op) and the stage goes back to pending, so the
//     next run starts it afresh;
//   - o.Plan nil (the record belongs to another plan than the one given):
//     rolled back from the state alone.
//
// o.Stage and o.PlanDigest name the stage in the state.
func Resume(ctx context.Context, d Deps, o Options) (*Result, error) {
	o.defaults()
	d.defaults()
	if d.Events == nil {
		d.Events = events.Discard{}
	}
	s, err := d.Store.Load(ctx)
	if err != nil {
		return nil, err
	}
	rec := s.Plan(o.PlanDigest)
	if rec == nil || rec.Stage(o.Stage) == nil {
		return nil, fmt.Errorf("resume: stage %d of plan %s is not in the migration state", o.Stage, o.PlanDigest)
	}
	ss := rec.Stage(o.Stage)
	r := &run{d: d, o: o, ref: stageRef{Digest: o.PlanDigest, Number: ss.Number, Namespace: ss.Namespace},
		res: &Result{Stage: ss.Number, Namespace: ss.Namespace}, changed: true}
	if o.Plan != nil {
		if r.stage, err = o.Plan.Stage(o.Stage); err != nil {
			return nil, fmt.Errorf("resume: %w", err)
		}
	}
	r.note(fmt.Sprintf("a previous run left stage %d (%s) %s since %s (by %s); resuming", ss.Number, ss.Namespace, ss.Phase, ss.StartedAt.UTC().Format("2006-01-02T15:04:05Z"), orUnknown(ss.AppliedBy)))
	if err := r.takeOver(ctx, ss); err != nil {
		return r.res, err
	}

	if ss.Phase == state.RollingBack {
		return r.res, r.fail(ctx, "finishing the rollback a previous run started: "+ss.Reason, nil)
	}
	if !ss.Phase.InProgress() {
		return r.res, fmt.Errorf("resume: stage %d is %s, not in progress", ss.Number, ss.Phase)
	}
	if r.stage == nil {
		return r.res, r.fail(ctx, "the previous run's plan is not the one given; rolling its stage back from the state", nil)
	}
	live, err := r.liveTarget(ctx, ss)
	if err != nil {
		return r.res, r.fail(ctx, "could not read the target PeerAuthentication: "+err.Error(), err)
	}
	alsoLive, allAlso, err := r.alsoLive(ctx, ss)
	if err != nil {
		return r.res, r.fail(ctx, "could not read the other namespace-wide PeerAuthentications the stage writes: "+err.Error(), err)
	}
	if live == nil || string(live.Spec.GetMtls().GetMode().String()) != ss.Target.Mode {
		// The change is not live: either the apply never happened, or
		// someone put it back. Restoring the snapshot undoes nothing that
		// is not ours (it refuses on a conflict).
		r.changed = false
		err := r.fail(ctx, "the previous run died before its change was live", nil)
		if !IsRolledBack(err) || anyChanged(r.res.Rollback) {
			return r.res, err
		}
		if perr := r.setPhase(ctx, state.Pending, "the previous run died before the change; nothing was changed; the next run starts the stage afresh", nil); perr != nil {
			return r.res, perr
		}
		r.res.Outcome = OutcomePending
		return r.res, nil
	}

	if !allAlso {
		// The policy Istio uses changed but not every other namespace-wide
		// one did: finishing the write would need the plan's view of
		// objects a dead run was writing; undoing it needs only the
		// snapshot.
		return r.res, r.fail(ctx, "the previous run died before it had written every namespace-wide policy of the stage", nil)
	}

	// The change is live: verify it as a fresh run would, against the
	// baseline recorded before the change.
	recorded := map[string]health.Baseline{}
	for _, g := range ss.Baseline {
		b := health.Baseline{Value: nan(), Samples: nan()}
		if g.Value != nil {
			b.Value = *g.Value
		}
		if g.Samples != nil {
			b.Samples = *g.Samples
		}
		recorded[g.Name] = b
	}
	for _, g := range r.stage.Gates {
		b, ok := recorded[g.Name]
		if !ok {
			b = health.Baseline{Value: nan(), Samples: nan()}
		}
		r.gates = append(r.gates, r.promGate(g, &b))
	}
	if r.pods, err = health.NewPodCheck(ctx, d.Kube, ss.Namespace); err != nil {
		return r.res, r.fail(ctx, "resume: "+err.Error(), err)
	}
	// What "done" is checked against (stillTrue): every policy the stage
	// writes, as found now, the other namespace-wide ones as much as the
	// one Istio uses; a fresh run knows them from its own apply.
	r.applied, r.alsoApplied, r.appliedAt = live, alsoLive, ss.StartedAt
	r.record.Target.UID, r.record.Target.ResourceVersion = string(live.UID), live.ResourceVersion
	for i, pa := range alsoLive {
		if i < len(r.record.AlsoTargets) && r.record.AlsoTargets[i].Name == pa.Name {
			r.record.AlsoTargets[i].UID, r.record.AlsoTargets[i].ResourceVersion = string(pa.UID), pa.ResourceVersion
		}
	}
	r.event(ctx, corev1.EventTypeNormal, events.StageApplying, fmt.Sprintf("stage %d: resuming the verification a previous run left %s", ss.Number, ss.Phase))
	if err := r.setPhase(ctx, state.Applying, "resumed after the previous run died", func(st *state.StageState) {
		st.Target.UID = string(live.UID)
		st.Target.ResourceVersion = live.ResourceVersion
		for i, pa := range alsoLive {
			if i < len(st.AlsoTargets) && st.AlsoTargets[i].Name == pa.Name {
				st.AlsoTargets[i].UID, st.AlsoTargets[i].ResourceVersion = string(pa.UID), pa.ResourceVersion
			}
		}
	}); err != nil {
		return r.res, r.fail(ctx, "record resume: "+err.Error(), err)
	}
	return r.res, r.verify(ctx)
}

// liveTarget returns the PeerAuthentication the stage wrote, or nil when it
// is absent or not the object the stage wrote (another UID).
func (r *run) liveTarget(ctx context.Context, ss *state.StageState) (*securityv1.PeerAuthentication, error) {
	if ss.Target == nil {
		return nil, nil
	}
	pa, err := peerauth.Get(ctx, r.d.Istio, ss.Namespace, ss.Target.Name)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if ss.Target.UID != "" && string(pa.UID) != ss.Target.UID {
		return nil, nil
	}
	if ss.Target.Created && pa.Labels[peerauth.ManagedByLabel] != peerauth.ManagedByValue {
		return nil, nil
	}
	return pa, nil
}

// alsoLive returns, in the state's order, the other namespace-wide
// policies the stage writes as they are now, and whether every one has the
// stage's mode (and, where the apply recorded one, its UID).
func (r *run) alsoLive(ctx context.Context, ss *state.StageState) ([]*securityv1.PeerAuthentication, bool, error) {
	out := make([]*securityv1.PeerAuthentication, 0, len(ss.AlsoTargets))
	for _, t := range ss.AlsoTargets {
		pa, err := peerauth.Get(ctx, r.d.Istio, ss.Namespace, t.Name)
		if apierrors.IsNotFound(err) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if (t.UID != "" && string(pa.UID) != t.UID) || pa.Spec.GetMtls().GetMode().String() != t.Mode {
			return nil, false, nil
		}
		out = append(out, pa)
	}
	return out, true, nil
}

func anyChanged(reps []rollback.StageReport) bool {
	for _, rep := range reps {
		if rep.Changed {
			return true
		}
	}
	return false
}

// IsRolledBack reports whether err says the stage was rolled back.
func IsRolledBack(err error) bool {
	var rb *RolledBackError
	return errors.As(err, &rb)
}

// takeOver makes this run the stage's owner (the caller holds the lock the
// dead run lost): from here on, a write from the previous run is fenced
// off. It is a compare-and-set on the phase and owner the resume was
// decided from.
func (r *run) takeOver(ctx context.Context, seen *state.StageState) error {
	err := r.d.Store.Update(ctx, func(s *state.State) error {
		p := s.Plan(r.ref.Digest)
		if p == nil || p.Stage(r.ref.Number) == nil {
			return errors.New("the stage vanished from the migration state")
		}
		st := p.Stage(r.ref.Number)
		if err := st.Fence(seen.Owner, seen.Phase); err != nil {
			return err
		}
		st.Owner = r.o.RunID
		r.record = st.DeepCopy()
		return nil
	})
	if err != nil {
		return fmt.Errorf("resume: take the stage over: %w", err)
	}
	r.phase = seen.Phase
	return nil
}
