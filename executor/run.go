package executor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	applyv1 "istio.io/client-go/pkg/applyconfiguration/security/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/events"
	"github.com/mtls-migrate/mtls-migrate/internal/gates"
	"github.com/mtls-migrate/mtls-migrate/internal/health"
	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/internal/istiosync"
	"github.com/mtls-migrate/mtls-migrate/internal/kuberetry"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

// run is one execution of one stage.
type run struct {
	d Deps
	o Options
	// ref names the stage in the state; stage is the plan's (nil when a
	// rollback runs from the state alone).
	ref   stageRef
	stage *plans.Stage
	res   *Result

	live   []*securityv1.PeerAuthentication
	target *securityv1.PeerAuthentication // nil: the stage creates it
	// also are the other namespace-wide policies the stage writes (the
	// plan's policy.alsoUpdates), as pre-flight read them.
	also    []*securityv1.PeerAuthentication
	gates   []*health.PromGate // the stage's gates with their baselines
	pods    *health.PodCheck
	changed bool // the apply may have reached the API server
	// applied is the policy as the apply left it, and when: what "done"
	// is checked against.
	applied     *securityv1.PeerAuthentication
	alsoApplied []*securityv1.PeerAuthentication
	appliedAt   time.Time
	// syncMark is what istiod had sent the proxies before the change
	// (nil: no istiod, or a resumed run); syncErr why it could not be read.
	syncMark *istiosync.Mark
	syncErr  error
	// phase is what this run last wrote; fenced is set once a write found
	// the stage taken over, and every later write is refused.
	phase  state.Phase
	fenced *state.FencedError
	// record is the stage's state as this run wrote it: a rollback still
	// has the snapshot if the state's ConfigMap is gone.
	record *state.StageState
}

// rollbackTimeout bounds the rollback after an interruption, when the run's
// own context is already cancelled.
const rollbackTimeout = 2 * time.Minute

// Run executes one stage. Its error says how it ended: a *RefusedError
// (nothing touched), *RolledBackError, *RollbackFailedError, or any other
// error (nothing left changed, or the state says what is).
func Run(ctx context.Context, d Deps, o Options) (*Result, error) {
	o.defaults()
	d.defaults()
	if d.Events == nil || o.DryRun {
		d.Events = events.Discard{}
	}
	stage, err := o.Plan.Stage(o.Stage)
	if err != nil {
		return nil, &RefusedError{Reason: err.Error()}
	}
	r := &run{d: d, o: o, ref: stageRef{Digest: o.PlanDigest, Number: stage.Number, Namespace: stage.Namespace}, stage: stage,
		res: &Result{Stage: stage.Number, Namespace: stage.Namespace}}
	if o.Force {
		r.res.Forced = o.Reason
	}
	err = r.execute(ctx)
	return r.res, err
}

func (r *run) note(s string) {
	r.res.Notes = append(r.res.Notes, s)
	r.d.Progress.Step("note", s)
}

func (r *run) execute(ctx context.Context) error {
	ns := r.stage.Namespace
	r.d.Progress.Step("preflight", "checking", "stage", r.stage.Number, "namespace", ns)
	if err := r.preflight(ctx); err != nil {
		return err
	}
	if r.o.DryRun {
		return r.dryRun(ctx)
	}
	if err := r.precheckProbes(ctx); err != nil {
		return err
	}

	r.d.Progress.Step("baseline", "measuring gates before the change")
	if err := r.baseline(ctx); err != nil {
		return err
	}

	r.d.Progress.Step("snapshot", "recording the namespace's PeerAuthentications in the migration state")
	if err := r.snapshot(ctx); err != nil {
		return err
	}
	r.event(ctx, corev1.EventTypeNormal, events.StageApplying, fmt.Sprintf("stage %d of plan %s: applying mTLS %s", r.stage.Number, r.o.Plan.Metadata.Name, r.stage.TargetMode))

	what := fmt.Sprintf("PeerAuthentication %s/%s", ns, r.stage.Policy.Metadata.Name)
	if len(r.also) > 0 {
		what = fmt.Sprintf("PeerAuthentications %s/%s and %s", ns, r.stage.Policy.Metadata.Name, strings.Join(r.stage.Policy.AlsoUpdates, ", "))
	}
	r.d.Progress.Step("apply", fmt.Sprintf("server-side apply of %s mode %s", what, r.stage.TargetMode))
	if err := r.apply(ctx); err != nil {
		if IsRefused(err) {
			// Someone else changed the policy: nothing of ours landed.
			return err
		}
		return r.fail(ctx, "apply failed: "+err.Error(), err)
	}
	return r.verify(ctx)
}

// verify runs everything after the change: settle, probes, the soak with
// its gates, then done or roll back. Resume enters here too.
func (r *run) verify(ctx context.Context) error {
	ns := r.stage.Namespace
	if err := r.propagate(ctx); err != nil {
		return r.fail(ctx, "interrupted while waiting for the proxies to get the change", nil)
	}

	r.d.Progress.Step("probes", "checking probes")
	if reason := r.probes(ctx); reason != "" {
		return r.fail(ctx, reason, nil)
	}

	soak := r.stage.Soak.Std()
	if r.o.Soak > 0 {
		soak = r.o.Soak
	}
	if err := r.setPhase(ctx, state.Soaking, "", func(st *state.StageState) { st.Probes, st.Propagation = r.res.Probes, r.res.Propagation }); err != nil {
		return r.fail(ctx, "record soaking: "+err.Error(), err)
	}
	r.event(ctx, corev1.EventTypeNormal, events.StageSoaking, fmt.Sprintf("stage %d: probes passed; soaking %s with %d gates", r.stage.Number, soak, len(r.stage.Gates)+1))
	r.d.Progress.Step("soak", fmt.Sprintf("evaluating gates every %s for %s", r.o.GateInterval, soak))
	out := r.soak(ctx, soak)
	if !out.Healthy {
		return r.fail(ctx, out.Reason, nil)
	}
	// Done is never written from memory: the policy must still be what the
	// apply left, and plaintext must still be refused.
	r.d.Progress.Step("confirm", "re-reading the policy and re-probing before recording done")
	if err := r.stillTrue(ctx); err != nil {
		var nv *NotVerifiedError
		if !errors.As(err, &nv) {
			return r.fail(ctx, "could not confirm the stage before recording done: "+err.Error(), err)
		}
		r.res.Reason, r.res.Outcome = nv.Reason, OutcomeNotVerified
		r.event(ctx, corev1.EventTypeWarning, events.StageFailed, fmt.Sprintf("stage %d: %s", r.stage.Number, nv.Reason))
		if werr := r.setPhase(ctx, state.Failed, nv.Reason, nil); werr != nil {
			return errors.Join(err, fmt.Errorf("and recording the stage as failed: %w", werr))
		}
		return err
	}
	if reason := r.reprobe(ctx); reason != "" {
		return r.fail(ctx, reason, nil)
	}
	if err := r.recordDone(ctx); err != nil {
		return r.fail(ctx, "record done: "+err.Error(), err)
	}
	r.res.Outcome = OutcomeDone
	r.event(ctx, corev1.EventTypeNormal, events.StageDone, fmt.Sprintf("stage %d: mTLS %s verified through a %s soak", r.stage.Number, r.stage.TargetMode, soak))
	r.d.Progress.Step("done", fmt.Sprintf("stage %d (%s) is %s", r.stage.Number, ns, r.stage.TargetMode))
	return nil
}

// propagate waits until the change has reached the proxies: measured on
// istiod's sync status when the run can read it (every meshed pod's proxy
// has acknowledged a listener configuration sent after the write), else
// the settle time, saying why. Probing before the proxies have the change
// would read the old mode. The outcome goes to the result and, with the
// next phase, to the state.
func (r *run) propagate(ctx context.Context) error {
	settle := func(why string) error {
		r.res.Propagation = fmt.Sprintf("not measured (%s): waited the settle time, %s", why, r.o.Settle)
		r.d.Progress.Step("settle", fmt.Sprintf("waiting %s for the proxies to get the change (%s)", r.o.Settle, why))
		return r.d.Clock.Sleep(ctx, r.o.Settle)
	}
	if r.d.Sync == nil {
		return settle("istiod's sync status is not read: no --istiod-url")
	}
	if r.syncErr != nil {
		return settle("istiod's sync status could not be read before the change: " + r.syncErr.Error())
	}
	ns := r.stage.Namespace
	if r.stage.Scope == plans.ScopeMesh {
		ns = ""
	}
	expected, err := meshedPods(ctx, r.d.Kube, ns)
	if err != nil {
		return settle("counting the meshed pods: " + err.Error())
	}
	mark := r.syncMark
	if mark == nil {
		// Resumed after the change: what istiod sent before it is unknown;
		// configuration sent after the write time is the next best test.
		mark = &istiosync.Mark{Namespace: ns, At: r.appliedAt}
	}
	r.d.Progress.Step("propagation", "waiting for every proxy to acknowledge the change (istiod sync status)", "proxies", expected, "timeout", r.o.SyncTimeout)
	p, err := r.d.Sync.Wait(ctx, r.d.Clock, *mark, expected, r.o.SyncTimeout, 200*time.Millisecond)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		r.note("istiod sync status: " + err.Error())
		return settle("istiod's sync status could not confirm it: " + err.Error())
	}
	r.res.PropagatedIn = p.Took
	r.res.Propagation = fmt.Sprintf("%d proxies acknowledged the change %s after the write", p.Proxies, p.Took.Round(10*time.Millisecond))
	r.d.Progress.Step("propagation", r.res.Propagation)
	return nil
}

// markSync records what istiod has sent the proxies right before the
// change, so the wait after it knows a new push from an old one. A failure
// is only noted: the wait then falls back as it does without istiod.
func (r *run) markSync(ctx context.Context) {
	if r.d.Sync == nil {
		return
	}
	ns := r.stage.Namespace
	if r.stage.Scope == plans.ScopeMesh {
		ns = ""
	}
	m, err := r.d.Sync.Mark(ctx, r.d.Clock, ns)
	if err != nil {
		r.note("istiod sync status before the change: " + err.Error())
		r.syncErr = err
		return
	}
	r.syncMark = &m
}

// meshedPods counts the running pods with a sidecar in ns ("" for all):
// the proxies istiod must report before the change counts as everywhere.
func meshedPods(ctx context.Context, kc kubernetes.Interface, ns string) (int, error) {
	var pods *corev1.PodList
	err := kuberetry.Do(ctx, func() error {
		var err error
		pods, err = kc.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range pods.Items {
		if ip := inventory.PodFrom(&pods.Items[i]); ip.Running && ip.Sidecar {
			n++
		}
	}
	return n, nil
}

func (r *run) dryRun(ctx context.Context) error {
	r.d.Progress.Step("apply", "dry run: sending the change through the API server's validation; nothing is persisted and no state is written")
	var obj *securityv1.PeerAuthentication
	var err error
	if r.target == nil {
		obj, err = r.d.Writer.Create(ctx, r.newPolicy(), true)
	} else {
		obj, err = r.d.Writer.Apply(ctx, r.applyConfig(), true)
	}
	if err != nil {
		return fmt.Errorf("dry run of PeerAuthentication %s/%s: %w", r.stage.Namespace, r.stage.Policy.Metadata.Name, err)
	}
	r.res.Applied = appliedObject(obj)
	for _, pa := range r.also {
		obj, err := r.d.Writer.Apply(ctx, r.applyConfigFor(pa.Name, pa), true)
		if err != nil {
			return fmt.Errorf("dry run of PeerAuthentication %s/%s: %w", r.stage.Namespace, pa.Name, err)
		}
		r.res.AlsoApplied = append(r.res.AlsoApplied, appliedObject(obj))
	}
	r.res.Outcome = OutcomeDryRun
	return nil
}

func (r *run) stageAnnotation() string {
	return r.stageAnnotationOf(r.stage.Number)
}

// stageAnnotationOf is the stage annotation stage n of the plan writes.
func (r *run) stageAnnotationOf(n int) string {
	return fmt.Sprintf("%s/%d", r.o.Plan.Metadata.Name, n)
}

// ours reports whether live is exactly what the stage writes over snap (the
// object as pre-flight read it): same UID, the snapshot's spec with the
// target mode, our annotation.
func (r *run) ours(live, snap *securityv1.PeerAuthentication) bool {
	return snap != nil && live.UID == snap.UID &&
		proto.Equal(&live.Spec, rollback.AppliedSpec(&snap.Spec, string(r.stage.TargetMode))) &&
		live.Annotations[peerauth.StageAnnotation] == r.stageAnnotation()
}

// afterConflict decides after a 409 on the stage's first write. If the
// live object is exactly what the stage writes, the write was ours and
// landed. Otherwise someone else changed the policy after the snapshot:
// the stage is put back to pending and refused, their change left alone.
func (r *run) afterConflict(ctx context.Context, conflict error) (*securityv1.PeerAuthentication, error) {
	name := r.stage.Policy.Metadata.Name
	live, err := peerauth.Get(ctx, r.d.Istio, r.stage.Namespace, name)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("re-read PeerAuthentication %s/%s after a conflict (%w): %w", r.stage.Namespace, name, conflict, err)
	}
	if err == nil && r.ours(live, r.target) {
		return live, nil
	}
	r.changed = false
	reason := fmt.Sprintf("PeerAuthentication %s/%s changed after the snapshot (someone else wrote it: %v); not overwriting their change; re-run plan", r.stage.Namespace, name, conflict)
	if perr := r.setPhase(ctx, state.Pending, reason, nil); perr != nil {
		return nil, fmt.Errorf("%s; and recording it in the state failed: %w", reason, perr)
	}
	return nil, &RefusedError{Reason: reason}
}

// applyConfig is what the stage server-side applies to the policy Istio
// will use (the plan's policy).
func (r *run) applyConfig() *applyv1.PeerAuthenticationApplyConfiguration {
	return r.applyConfigFor(r.stage.Policy.Metadata.Name, r.target)
}

// newPolicy is the policy the stage creates (the plan's labels plus the
// managed-by label, the stage annotation, the target mode). It is created,
// not applied: a create fails on an existing name, where server-side apply
// would silently adopt someone else's object (and rollback would later
// delete it).
func (r *run) newPolicy() *securityv1.PeerAuthentication {
	pol := r.stage.Policy
	labels := map[string]string{}
	for k, v := range pol.Metadata.Labels {
		labels[k] = v
	}
	labels[peerauth.ManagedByLabel] = peerauth.ManagedByValue
	return &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: pol.Metadata.Name, Namespace: pol.Metadata.Namespace, Labels: labels,
			Annotations: map[string]string{peerauth.StageAnnotation: r.stageAnnotation()}},
		Spec: apisecurity.PeerAuthentication{Mtls: &apisecurity.PeerAuthentication_MutualTLS{
			Mode: apisecurity.PeerAuthentication_MutualTLS_Mode(apisecurity.PeerAuthentication_MutualTLS_Mode_value[string(r.stage.TargetMode)]),
		}},
	}
}

// afterAlreadyExists decides after the create found the name taken: our
// own create whose answer was lost (our label, our stage annotation, the
// target mode) is accepted; anything else is someone else's object, left
// alone, and the stage goes back to pending, refused.
func (r *run) afterAlreadyExists(ctx context.Context, exists error) (*securityv1.PeerAuthentication, error) {
	name := r.stage.Policy.Metadata.Name
	live, err := peerauth.Get(ctx, r.d.Istio, r.stage.Namespace, name)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("re-read PeerAuthentication %s/%s after the create found it (%w): %w", r.stage.Namespace, name, exists, err)
	}
	if err == nil && live.Labels[peerauth.ManagedByLabel] == peerauth.ManagedByValue &&
		live.Annotations[peerauth.StageAnnotation] == r.stageAnnotation() &&
		proto.Equal(&live.Spec, rollback.AppliedSpec(nil, string(r.stage.TargetMode))) {
		return live, nil
	}
	r.changed = false
	who := ""
	if live != nil {
		who = changedBy(live, time.Time{})
	}
	reason := fmt.Sprintf("PeerAuthentication %s/%s was created%s after the snapshot, by someone else: the stage does not adopt it (a rollback would delete their object); re-run plan", r.stage.Namespace, name, who)
	if perr := r.setPhase(ctx, state.Pending, reason, nil); perr != nil {
		return nil, fmt.Errorf("%s; and recording it in the state failed: %w", reason, perr)
	}
	return nil, &RefusedError{Reason: reason}
}

// applyConfigFor is what the stage server-side applies to the object name
// (snap: as pre-flight read it, nil when the stage creates it): on an
// object it creates, the plan's labels plus the managed-by label; on a
// pre-existing one only the mode and the stage annotation (its labels stay
// its owner's).
func (r *run) applyConfigFor(name string, snap *securityv1.PeerAuthentication) *applyv1.PeerAuthenticationApplyConfiguration {
	pol := r.stage.Policy
	cfg := applyv1.PeerAuthentication(name, pol.Metadata.Namespace)
	if snap == nil {
		labels := map[string]string{}
		for k, v := range pol.Metadata.Labels {
			labels[k] = v
		}
		labels[peerauth.ManagedByLabel] = peerauth.ManagedByValue
		cfg.WithLabels(labels)
	} else {
		cfg.WithAnnotations(map[string]string{peerauth.StageAnnotation: r.stageAnnotation()})
		// Optimistic concurrency: the API server refuses (409) the apply if
		// the object is no longer the version the snapshot holds.
		cfg.WithResourceVersion(snap.ResourceVersion)
	}
	cfg.Spec = &apisecurity.PeerAuthentication{Mtls: &apisecurity.PeerAuthentication_MutualTLS{
		Mode: apisecurity.PeerAuthentication_MutualTLS_Mode(apisecurity.PeerAuthentication_MutualTLS_Mode_value[string(r.stage.TargetMode)]),
	}}
	return cfg
}

func (r *run) baseline(ctx context.Context) error {
	now := r.d.Clock.Now()
	r.gates = nil
	for _, g := range r.stage.Gates {
		b, err := health.MeasureBaseline(ctx, r.d.Prom, g, now, r.d.PromTimeout)
		if err != nil {
			return fmt.Errorf("%w; nothing was changed", err)
		}
		r.gates = append(r.gates, r.promGate(g, &b))
		gv := state.GateValue{Name: g.Name, Verdict: "baseline", Value: state.Float(b.Value), Samples: state.Float(b.Samples), At: now.UTC()}
		if g.Relative != plans.Absolute && !b.HasValue() {
			gv.Message = "no baseline data (no traffic before?): this relative gate cannot judge"
			r.note(fmt.Sprintf("gate %s: %s", g.Name, gv.Message))
		}
		r.res.Baseline = append(r.res.Baseline, gv)
		r.d.Progress.Step("baseline", "gate baseline", "gate", g.Name, "value", b.Value, "samples", b.Samples)
	}
	if err := r.checkNotBlind(); err != nil {
		return err
	}
	pods, err := health.NewPodCheck(ctx, r.d.Kube, r.stage.Namespace)
	if err != nil {
		return fmt.Errorf("baseline: %w; nothing was changed", err)
	}
	r.pods = pods
	return nil
}

// checkNotBlind refuses a stage that would verify nothing: a kind of
// traffic the plan saw (HTTP requests, TCP connections) that no probe of
// the stage exercises and no gate could judge on the baseline just
// measured (each would be Inconclusive or an error: no samples, no value).
// A soak would judge nothing and end "done". The rule is gates.Unjudged,
// the one the planner blocks stages with (UNVERIFIABLE), here on measured
// baselines instead of the plan's estimates. Pre-flight's checkTelemetry
// already refuses when the Istio series are missing; this catches the
// series being there with nothing in the gates' window (traffic stopped
// since the plan, or the gates' own queries match nothing). A gate that
// can judge without traffic (an absolute gate on the application's own
// errors, `or vector(0)`) keeps the stage going. A forced stage goes on,
// and the result says what nobody verified.
func (r *run) checkNotBlind() error {
	byGate := make(map[string]health.Result, len(r.gates))
	for _, g := range r.gates {
		b := g.Baseline
		byGate[g.Gate.Name] = health.Evaluate(g.Gate, b, health.Measurement{Value: b.Value, Samples: b.Samples})
	}
	judges := func(g plans.Gate) bool {
		v := byGate[g.Name].Verdict
		return v == health.Successful || v == health.Failed
	}
	gaps := gates.Unjudged(r.stage, judges)
	if b := gates.Blind(r.stage, judges); b != "" {
		gaps = append(gaps, b)
	}
	if len(gaps) == 0 {
		return nil
	}
	why := make([]string, 0, len(r.gates))
	for _, g := range r.gates {
		if res := byGate[g.Gate.Name]; res.Verdict != health.Successful && res.Verdict != health.Failed {
			why = append(why, fmt.Sprintf("%s: %s", g.Gate.Name, res.Message))
		}
	}
	where := fmt.Sprintf("namespace %q", r.stage.Namespace)
	if r.stage.Scope == plans.ScopeMesh {
		where = "the mesh"
	}
	if r.o.Force {
		r.note(fmt.Sprintf("forced: stage %d cannot judge what the plan saw in %s: %s (%s); the soak verifies nothing about it", r.stage.Number, where, strings.Join(gaps, "; "), strings.Join(why, "; ")))
		return nil
	}
	return refusef("baseline: stage %d cannot judge what the plan saw in %s before the change: %s (%s); a soak would verify nothing, so nothing was changed: "+
		"apply when there is traffic again, add a probe or a gate that can judge without it (e.g. the application's own error rate), re-run plan if the traffic is gone for good, or --force --reason",
		r.stage.Number, where, strings.Join(gaps, "; "), strings.Join(why, "; "))
}

// snapshot re-reads the namespace's policies right before the change,
// checks they are still what pre-flight saw, and writes the stage as
// applying with the snapshot: after this, the state can undo anything.
func (r *run) snapshot(ctx context.Context) error {
	live, err := peerauth.List(ctx, r.d.Istio, r.stage.Namespace)
	if err != nil {
		return err
	}
	if len(live) != len(r.live) {
		return refusef("the PeerAuthentications in %q changed during pre-flight; run again", r.stage.Namespace)
	}
	for i := range live {
		if live[i].Name != r.live[i].Name || live[i].ResourceVersion != r.live[i].ResourceVersion {
			return refusef("PeerAuthentication %s/%s changed during pre-flight; run again", r.stage.Namespace, live[i].Name)
		}
	}
	raw, err := rollback.Encode(live)
	if err != nil {
		return err
	}
	now := r.d.Clock.Now()
	err = r.d.Store.Update(ctx, func(s *state.State) error {
		if err := checkNotInProgress(s, r.o.PlanDigest, r.stage.Number); err != nil {
			return err
		}
		st := s.EnsurePlan(r.o.Plan.Metadata.Name, r.o.PlanDigest, now).EnsureStage(r.stage.Number, r.stage.Namespace)
		*st = state.StageState{Number: st.Number, Namespace: st.Namespace, Phase: st.Phase, History: st.History}
		st.TargetMode = string(r.stage.TargetMode)
		st.AppliedBy = r.o.Actor
		if r.o.Force {
			st.ForceReason = r.o.Reason
		}
		st.Snapshot = raw
		st.Target = &state.Target{Name: r.stage.Policy.Metadata.Name, Created: r.target == nil, Mode: string(r.stage.TargetMode)}
		for _, pa := range r.also {
			st.AlsoTargets = append(st.AlsoTargets, state.Target{Name: pa.Name, Mode: string(r.stage.TargetMode)})
		}
		st.Baseline = r.res.Baseline
		st.Owner = r.o.RunID
		if err := st.Move(state.Applying, now, ""); err != nil {
			return err
		}
		r.record = st.DeepCopy()
		return nil
	})
	if err == nil {
		r.phase = state.Applying
	}
	return err
}

func (r *run) apply(ctx context.Context) error {
	r.markSync(ctx)
	r.changed = true
	var obj *securityv1.PeerAuthentication
	err := kuberetry.Do(ctx, func() (err error) {
		if r.target == nil {
			obj, err = r.d.Writer.Create(ctx, r.newPolicy(), false)
		} else {
			obj, err = r.d.Writer.Apply(ctx, r.applyConfig(), false)
		}
		return err
	})
	if apierrors.IsAlreadyExists(err) {
		// Created with the precondition "must not exist": someone else
		// created this name between the snapshot and now (or our own create
		// landed and its answer was lost). Theirs is never adopted.
		obj, err = r.afterAlreadyExists(ctx, err)
	}
	if apierrors.IsConflict(err) {
		// The apply carries the snapshot's resourceVersion: a 409 means the
		// object changed since. Re-read and decide again: our own write
		// (a retry after a lost response) is fine; anyone else's change is
		// not overwritten.
		obj, err = r.afterConflict(ctx, err)
	}
	if err != nil {
		return err
	}
	if r.target != nil && obj.UID != r.target.UID {
		return fmt.Errorf("the applied object has UID %s, not %s as snapshotted: it was recreated meanwhile", obj.UID, r.target.UID)
	}
	r.res.Applied = appliedObject(obj)
	r.applied, r.appliedAt = obj, r.d.Clock.Now()
	if r.record != nil && r.record.Target != nil {
		r.record.Target.UID, r.record.Target.ResourceVersion = string(obj.UID), obj.ResourceVersion
	}
	if err := r.setPhase(ctx, state.Applying, "applied", func(st *state.StageState) {
		st.Target.UID = string(obj.UID)
		st.Target.ResourceVersion = obj.ResourceVersion
	}); err != nil {
		return err
	}
	// The namespace-wide policies Istio ignores today, each against its own
	// snapshot version. The change is live already: a conflict here is an
	// error the caller rolls back, not a refusal.
	for i, pa := range r.also {
		obj, err := r.applyAlso(ctx, pa)
		if err != nil {
			return err
		}
		r.res.AlsoApplied = append(r.res.AlsoApplied, appliedObject(obj))
		r.alsoApplied = append(r.alsoApplied, obj)
		if r.record != nil && i < len(r.record.AlsoTargets) {
			r.record.AlsoTargets[i].UID, r.record.AlsoTargets[i].ResourceVersion = string(obj.UID), obj.ResourceVersion
		}
		if err := r.setPhase(ctx, state.Applying, "", func(st *state.StageState) {
			if i < len(st.AlsoTargets) && st.AlsoTargets[i].Name == pa.Name {
				st.AlsoTargets[i].UID = string(obj.UID)
				st.AlsoTargets[i].ResourceVersion = obj.ResourceVersion
			}
		}); err != nil {
			return err
		}
	}
	return nil
}

// applyAlso writes one of the other namespace-wide policies.
func (r *run) applyAlso(ctx context.Context, snap *securityv1.PeerAuthentication) (*securityv1.PeerAuthentication, error) {
	var obj *securityv1.PeerAuthentication
	err := kuberetry.Do(ctx, func() (err error) {
		obj, err = r.d.Writer.Apply(ctx, r.applyConfigFor(snap.Name, snap), false)
		return err
	})
	if apierrors.IsConflict(err) {
		live, gerr := peerauth.Get(ctx, r.d.Istio, r.stage.Namespace, snap.Name)
		if gerr == nil && r.ours(live, snap) {
			return live, nil
		}
		return nil, fmt.Errorf("PeerAuthentication %s/%s changed after the snapshot (someone else wrote it: %w); not overwriting their change", r.stage.Namespace, snap.Name, err)
	}
	if err != nil {
		return nil, err
	}
	if obj.UID != snap.UID {
		return nil, fmt.Errorf("the applied object %s/%s has UID %s, not %s as snapshotted: it was recreated meanwhile", r.stage.Namespace, snap.Name, obj.UID, snap.UID)
	}
	return obj, nil
}

// probes checks every probe after the change; it returns why one failed.
func (r *run) probes(ctx context.Context) string {
	// Until STRICT reaches the proxy a refusal probe is answered: those
	// answers are plaintext requests too.
	defer r.markProbes(ctx, "probes")()
	for _, p := range r.stage.Probes {
		res := r.d.Prober.Expect(ctx, p, r.o.ProbeWithin)
		r.res.Probes = append(r.res.Probes, state.ProbeResult{Name: p.Name, OK: res.OK, Observed: res.Observed.String(), At: r.d.Clock.Now().UTC()})
		r.d.Progress.Step("probes", "probe", "probe", p.Name, "observed", res.Observed.String(), "ok", res.OK, "attempts", res.Attempts)
		if !res.OK {
			return fmt.Sprintf("probe %s: expected %s, got %s after %d attempts", p.Name, p.Expect, res.Observed, res.Attempts)
		}
	}
	return ""
}

// promGate is gate g of the stage, judged against baseline b.
func (r *run) promGate(g plans.Gate, b *health.Baseline) *health.PromGate {
	return &health.PromGate{Gate: g, Baseline: b, Querier: r.d.Prom, Timeout: r.d.PromTimeout}
}

func (r *run) soak(ctx context.Context, d time.Duration) health.Outcome {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	checks := []health.Check{r.pods}
	for _, g := range r.gates {
		checks = append(checks, g)
	}
	runner := &health.Runner{
		Checks:   checks,
		Interval: r.o.GateInterval, MaxConsecutiveErrors: r.o.MaxConsecutiveErrors, Clock: r.d.Clock,
		OnTick: func(t health.Tick) {
			r.d.Progress.Tick(t)
			r.res.Gates = gateValues(t.Results, r.d.Clock.Now())
			// Last gate values go to the state each round (status shows them);
			// a failed write is logged, not fatal: the verdict does not need it.
			if err := r.setPhase(ctx, "", "", func(st *state.StageState) { st.Gates = r.res.Gates }); err != nil {
				r.d.Progress.Step("soak", "could not record gate values: "+err.Error())
				if r.fenced != nil {
					stop(r.fenced) // taken over: soaking on would judge someone else's stage
				}
			}
		},
	}
	return runner.Soak(ctx, d)
}

func gateValues(rs []health.Result, now time.Time) []state.GateValue {
	out := make([]state.GateValue, 0, len(rs))
	for _, g := range rs {
		out = append(out, state.GateValue{Name: g.Gate, Verdict: string(g.Verdict), Value: state.Float(g.Value),
			Threshold: state.Float(g.Threshold), Samples: state.Float(g.Samples), Message: g.Message, At: now.UTC()})
	}
	return out
}

// appliedObject is the policy as the API server returned it, for output,
// without managedFields (bookkeeping, and the bulk of the object).
func appliedObject(obj *securityv1.PeerAuthentication) *securityv1.PeerAuthentication {
	c := obj.DeepCopy()
	c.ManagedFields = nil
	return c
}
