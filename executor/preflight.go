package executor

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/gitops"
	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/internal/meshconfig"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/probe"
	"github.com/mtls-migrate/mtls-migrate/internal/probetarget"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// preflight runs every check that needs no change; it returns the live
// PeerAuthentications and the one the stage targets (nil when it will be
// created).
func (r *run) preflight(ctx context.Context) error {
	ns := r.stage.Namespace
	if _, err := r.d.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return refusef("namespace %q does not exist in this cluster (is --context the cluster the plan was made for?)", ns)
		}
		return fmt.Errorf("read namespace %q: %w", ns, err)
	}

	if r.stage.Status == plans.StatusBlocked && !r.o.Force {
		var why []string
		for _, rk := range r.stage.Risks {
			if rk.Severity == plans.SeverityBlock {
				why = append(why, rk.Code+": "+rk.Message)
			}
		}
		return refusef("stage %d (%s) is blocked by the plan: %s; fix that and re-run plan, or pass --force --reason \"...\" (recorded)", r.stage.Number, ns, strings.Join(why, "; "))
	}
	if r.stage.Status == plans.StatusBlocked {
		r.note(fmt.Sprintf("blocked stage forced: %s", r.o.Reason))
	}
	if err := r.checkRootNamespace(ctx); err != nil {
		return err
	}
	if !r.o.AllowExec {
		for _, p := range r.stage.Probes {
			if p.Kind == plans.ProbeExec {
				return refusef("probe %s runs curl inside pod %s (exec): pass --allow-exec-probes to let it (the Job's RBAC must allow pods/exec there), or replace it with an http probe", p.Name, p.Pod)
			}
		}
	}

	if err := r.checkProbeTargets(ctx); err != nil {
		return err
	}

	st, err := r.d.Store.Load(ctx)
	if err != nil {
		return err
	}
	if err := checkNotInProgress(st, r.o.PlanDigest, r.stage.Number); err != nil {
		return err
	}

	live, err := peerauth.List(ctx, r.d.Istio, ns)
	if err != nil {
		return err
	}
	r.live = live
	if err := r.checkPolicies(st); err != nil {
		return err
	}
	if err := r.checkTarget(); err != nil {
		return err
	}
	if err := r.checkPlaintext(ctx, st); err != nil {
		return err
	}
	if err := r.checkTelemetry(ctx); err != nil {
		return err
	}
	r.noteOwnership()
	return nil
}

// checkRootNamespace refuses unless the live mesh config's root namespace
// (meshconfig.Read, the planner's own reader) is the plan's. Istio reads a
// namespace-wide policy in the root namespace as the mesh-wide one
// (https://istio.io/latest/docs/reference/config/security/peer_authentication/):
// with another root, the mesh stage would write an ordinary namespace
// policy, a namespace stage in the real root a mesh-wide one, and every
// stage's modes and probes were worked out with the wrong mesh-wide
// policy; so every stage checks, not only the mesh one (one GET). Not
// overridden by --force.
func (r *run) checkRootNamespace(ctx context.Context) error {
	mc, err := meshconfig.Read(ctx, r.d.Kube)
	if err != nil {
		return fmt.Errorf("pre-flight: %w; every stage checks the mesh's root namespace against the plan's first (the Job's RBAC grants get on that one ConfigMap): fix the access or the ConfigMap, then run again", err)
	}
	live, planned := mc.RootNamespace, r.o.Plan.Metadata.RootNamespace
	how := "meshConfig.rootNamespace in " + meshconfig.Source()
	if !mc.Found {
		how = fmt.Sprintf("Istio's default: %s does not exist", meshconfig.Source())
	}
	switch {
	case live != planned:
		return refusef("the mesh's root namespace is %q (%s), but the plan was made for %q (metadata.rootNamespace): the plan's mesh-wide policy and every stage's modes follow from the root namespace, so none of its stages applies here; is --context the cluster the plan was made for? Otherwise re-run plan", live, how, planned)
	case r.stage.Scope != plans.ScopeMesh && r.stage.Namespace == live:
		return refusef("stage %d is a namespace stage in %q, the mesh's root namespace (%s): a namespace-wide policy there applies to the whole mesh; only the mesh-scope stage may write there: re-run plan", r.stage.Number, live, how)
	}
	return nil
}

// checkProbeTargets refuses a probe whose target a plan's probe may not
// have (probetarget: a running pod or a Service of the stage's namespace,
// or the ingress gateway): a plan is input, and its probes are requests
// made from the tool's network position or inside pods. The stage's
// namespace is read first; the whole cluster (gateway pods live elsewhere,
// and the mesh-wide stage may probe any meshed namespace) only when that
// is not enough: a scope of fewer objects only refuses more.
func (r *run) checkProbeTargets(ctx context.Context) error {
	if len(r.stage.Probes) == 0 {
		return nil
	}
	ns, mesh := r.stage.Namespace, r.stage.Scope == plans.ScopeMesh
	if !mesh {
		local := probetarget.New(ns, false)
		if err := local.Load(ctx, r.d.Kube, ns); err != nil {
			return fmt.Errorf("pre-flight: read what the probes of stage %d may target: %w", r.stage.Number, err)
		}
		if local.CheckAll(r.stage.Probes) == nil {
			return nil
		}
	}
	all := probetarget.New(ns, mesh)
	if err := all.Load(ctx, r.d.Kube, ""); err != nil {
		return fmt.Errorf("pre-flight: read what the probes of stage %d may target: %w", r.stage.Number, err)
	}
	if err := all.CheckAll(r.stage.Probes); err != nil {
		return refusef("pre-flight: %v", err)
	}
	return nil
}

// noteOwnership says, before the change, when the policy the stage patches
// belongs to a GitOps controller or Helm: server-side apply with force takes
// spec.mtls.mode's ownership away from it, and its self-heal may revert
// the stage (the plan's GITOPS_MANAGED risk says the same for review).
func (r *run) noteOwnership() {
	if r.target == nil {
		return
	}
	var mgrs []string
	for _, mf := range r.target.ManagedFields {
		if mf.Manager != peerauth.FieldManager {
			mgrs = append(mgrs, mf.Manager)
		}
	}
	if who := gitops.ManagedBy(r.target.Labels, r.target.Annotations, mgrs); len(who) > 0 {
		r.note(fmt.Sprintf("PeerAuthentication %s/%s is managed by %s: the stage's server-side apply (force) takes ownership of spec.mtls.mode from it, and its self-heal may revert the change; the check before done will tell", r.target.Namespace, r.target.Name, strings.Join(who, ", ")))
	}
}

// checkNotInProgress refuses when a stage is mid-way (a run is going on, or
// died: `apply --next` resumes those) or this stage is done.
func checkNotInProgress(s *state.State, digest string, n int) error {
	if p, st := s.InProgress(); st != nil {
		return refusef("stage %d (%s) of plan %q is %s since %s (by %s): another run is in progress or died; roll it back with `mtls-migrate rollback --plan FILE --stage %d`",
			st.Number, st.Namespace, p.Name, st.Phase, st.StartedAt.Format(time.RFC3339), orUnknown(st.AppliedBy), st.Number)
	}
	if p := s.Plan(digest); p != nil {
		if st := p.Stage(n); st != nil && st.Phase == state.Done {
			return refusef("stage %d (%s) is already done (at %s by %s); roll it back first to apply it again",
				n, st.Namespace, st.FinishedAt.Format(time.RFC3339), orUnknown(st.AppliedBy))
		}
	}
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// checkPolicies refuses when the namespace's PeerAuthentications are not
// what the stage's policyDigest says they must be, naming what changed as
// far as the objects tell: their digest when the plan was made (the planner
// computed it with the same peerauth.PolicyDigest), or, for after-stage:N,
// the digest the state recorded when stage N of this plan was done. An empty
// policyDigest (the plan's validation requires one) refuses too: a check
// that cannot compare never passes.
func (r *run) checkPolicies(st *state.State) error {
	ns := r.stage.Namespace
	want := r.stage.PolicyDigest
	ref := changeRef{since: r.o.Plan.Metadata.GeneratedAt, what: "the plan"}
	what := fmt.Sprintf("since the plan was made (%s)", ref.since.UTC().Format(time.RFC3339))
	if n, ok := r.stage.PolicyAfterStage(); ok {
		prev, err := r.afterStage(st, n)
		if err != nil {
			return err
		}
		want = prev.PolicyDigest
		// Changes are looked for from stage n's change on, its own
		// writes left out: what it left is the reference.
		ref = changeRef{since: prev.StartedAt, what: fmt.Sprintf("stage %d's change", n), own: r.stageAnnotationOf(n)}
		what = fmt.Sprintf("since stage %d left them (done at %s)", n, prev.FinishedAt.UTC().Format(time.RFC3339))
	}
	if want == "" {
		return refusef("stage %d (%s) has no policyDigest, so nothing can tell whether its PeerAuthentications changed since the plan; re-run plan (it writes one for every stage)", r.stage.Number, ns)
	}
	if peerauth.PolicyDigest(r.live) == want {
		return nil
	}
	return refusef("the PeerAuthentications in %q changed %s: %s; re-run plan", ns, what, describeChanges(r.live, ref))
}

// afterStage returns the state's record of stage n, the earlier stage whose
// result this stage's policyDigest (after-stage:n) names, refusing unless
// it is done under this plan (or was carried over to it by --replan) with
// the digest of what it left.
func (r *run) afterStage(st *state.State, n int) (*state.StageState, error) {
	ns := r.stage.Namespace
	var prev *state.StageState
	if rec := st.Plan(r.o.PlanDigest); rec != nil {
		prev = rec.Stage(n)
	}
	phase := state.Pending
	if prev != nil {
		phase = prev.Phase
	}
	switch {
	case phase != state.Done:
		return nil, refusef("stage %d (%s) starts from what stage %d of this plan leaves (policyDigest after-stage:%d), and stage %d is %s: apply stage %d first", r.stage.Number, ns, n, n, n, phase, n)
	case prev.Namespace != ns:
		return nil, refusef("stage %d (%s) starts from what stage %d leaves, but the migration state has stage %d on namespace %q: the state does not belong to this plan; check --plan and --state-namespace", r.stage.Number, ns, n, n, prev.Namespace)
	case prev.PolicyDigest == "":
		return nil, refusef("stage %d (%s) starts from what stage %d leaves, but stage %d was recorded done without the digest of the PeerAuthentications it left (by an earlier mtls-migrate), so nothing can tell whether they are still as it left them; re-run plan: the new plan's stage for %q carries their digest", r.stage.Number, ns, n, n, ns)
	}
	return prev, nil
}

// changeRef is what describeChanges compares with: objects written after
// since, other than by the tool for the stage own (a stage annotation,
// "PLAN/N"; empty: none left out), are named; what says what since is.
type changeRef struct {
	since time.Time
	what  string
	own   string
}

// describeChanges names objects created or modified after ref.since, from
// their creation time and managedFields times; with none, one was deleted
// (the plan and the state hold only a digest, so a deleted name cannot be
// told).
func describeChanges(live []*securityv1.PeerAuthentication, ref changeRef) string {
	var parts []string
	for _, pa := range live {
		ours := ref.own != "" && pa.Annotations[peerauth.StageAnnotation] == ref.own
		switch {
		case pa.CreationTimestamp.After(ref.since):
			if !ours || pa.Labels[peerauth.ManagedByLabel] != peerauth.ManagedByValue {
				parts = append(parts, "added "+pa.Name)
			}
		default:
			for _, mf := range pa.ManagedFields {
				if ours && mf.Manager == peerauth.FieldManager {
					continue
				}
				if mf.Time != nil && mf.Time.After(ref.since) {
					parts = append(parts, fmt.Sprintf("modified %s (by %s at %s)", pa.Name, mf.Manager, mf.Time.UTC().Format(time.RFC3339)))
					break
				}
			}
		}
	}
	if len(parts) == 0 {
		names := make([]string, 0, len(live))
		for _, pa := range live {
			names = append(names, pa.Name)
		}
		return fmt.Sprintf("none of the current ones (%s) is newer than %s, so one was deleted", strings.Join(names, ", "), ref.what)
	}
	return strings.Join(parts, "; ")
}

// checkTarget decides again, on the live objects, what the stage writes
// (peerauth.TargetOf: the same decision the planner recorded in the
// stage's policy) and refuses only when it differs from the plan's. So a
// stage the plan offers is accepted on the cluster the plan was made for:
// with several namespace-wide policies the plan writes every one of them
// (Istio uses the oldest, https://istio.io/latest/docs/reference/config/security/peer_authentication/),
// and it never writes into a workload policy that holds the name it would
// otherwise create.
func (r *run) checkTarget() error {
	pol := r.stage.Policy
	want := peerauth.RecordedTarget(pol)
	live := peerauth.TargetOf(r.stage.Namespace, r.live)
	if d := want.Diff(live); d != "" {
		return refusef("%s; re-run plan", d)
	}
	byName := map[string]*securityv1.PeerAuthentication{}
	for _, pa := range r.live {
		byName[pa.Name] = pa
	}
	r.target = nil
	if !want.Create {
		r.target = byName[want.Name]
	}
	r.also = nil
	for _, name := range want.AlsoUpdates {
		r.also = append(r.also, byName[name])
	}
	return nil
}

// probeScrapeGrace is how long after the tool's own probes a series they
// created may wait for its first scrape (a generous scrape interval). A
// plaintext series first seen within it cannot be told from one of our
// probes', so it is counted from its second scrape on only (by increase).
const probeScrapeGrace = 2 * time.Minute

// checkPlaintext re-queries Prometheus for plaintext into the namespace (the
// whole mesh for the mesh-wide stage) since the plan was made, at most one
// plan window back, and since the tool's own last probes there. Two
// queries per metric: the increase of every plaintext series, and the
// count of plaintext series new in that time (a client whose first scrape
// already holds its requests has no increase to see).
func (r *run) checkPlaintext(ctx context.Context, st *state.State) error {
	now := r.d.Clock.Now()
	since := r.o.Plan.Metadata.GeneratedAt
	if w := r.o.Plan.Metadata.Window.Std(); w > 0 && now.Sub(since) > w {
		since = now.Add(-w)
	}
	absentAt := since // a series existing then is old, seen by increase
	probed := false
	if t, ok := st.ProbedAt[r.stage.Namespace]; ok && t.After(since) {
		if t.After(now) {
			// A run that stopped among its own probes marked how long they
			// could last (see probing): until then its plaintext requests
			// may still be arriving and cannot be told from a client's.
			return refusef("the tool's own plaintext probes into %q may still be under way until %s (a run stopped among them); run again after that", r.stage.Namespace, t.UTC().Format(time.RFC3339))
		}
		since, probed = t.Add(time.Second), true
		absentAt = t.Add(probeScrapeGrace)
	}
	rng := now.Sub(since)
	switch {
	case rng <= 0 && probed:
		// Our own probes ended less than a second ago: nothing since.
		rng = time.Second
	case rng <= 0:
		// The plan lies in the future (a skewed clock): look back an hour
		// rather than not at all. Stricter, never laxer.
		rng = time.Hour
		absentAt = now.Add(-rng)
	}
	rng = max(rng.Round(time.Second), time.Second)
	ns := ""
	if r.stage.Scope != plans.ScopeMesh {
		ns = r.stage.Namespace
	}
	sel := istiometrics.DestinationPlaintext(ns)
	by := istiometrics.Grouping(istiometrics.LabelSourceWorkload, istiometrics.LabelSourceWorkloadNamespace)
	window := model.Duration(rng).String()
	type check struct{ what, query, unit string }
	var checks []check
	for _, m := range []struct{ metric, what string }{{istiometrics.RequestsTotal, "requests"}, {istiometrics.TCPConnectionsOpened, "connections"}} {
		checks = append(checks, check{m.what, istiometrics.IncreaseBy(m.metric, sel, by, window), "plaintext " + m.what})
		if absent := now.Sub(absentAt).Round(time.Second); absent > 0 {
			checks = append(checks, check{m.what, istiometrics.NewSeriesBy(m.metric, sel, by, window, model.Duration(absent).String()),
				"plaintext " + m.what + " in series that began since"})
		}
	}
	var found []string
	for _, c := range checks {
		vec, err := r.promVector(ctx, c.query, now, "plaintext "+c.what+" into "+strconv.Quote(r.stage.Namespace))
		if err != nil {
			return err
		}
		for _, s := range vec {
			if s.Value > 0 {
				found = append(found, fmt.Sprintf("%s/%s (%.0f %s)", s.Metric[istiometrics.LabelSourceWorkloadNamespace], s.Metric[istiometrics.LabelSourceWorkload], float64(s.Value), c.unit))
			}
		}
	}
	if len(found) == 0 {
		return nil
	}
	sort.Strings(found)
	msg := fmt.Sprintf("plaintext traffic into %q in the last %s (since the plan or the tool's last probes there): %s", r.stage.Namespace, window, strings.Join(found, ", "))
	if r.o.Force {
		r.note("forced despite " + msg)
		return nil
	}
	return refusef("%s; STRICT would cut these clients off: re-run plan, or pass --force --reason \"...\"", msg)
}

// checkTelemetry refuses when the plan saw traffic into the namespace (the
// whole mesh for the mesh-wide stage) and Prometheus has none of its Istio
// series now: a wrong tenant, metrics relabelled away, a fresh Prometheus
// or a partial Thanos answer all look like that, and against them the
// plaintext check finds nothing, every baseline is empty and every gate
// stays Inconclusive, so the stage would pass unverified. Series, not
// traffic: a namespace quiet right now still has its counters. Not
// overridden by --force: no reason makes a blind check see.
func (r *run) checkTelemetry(ctx context.Context) error {
	ev := r.stage.Evidence
	ns, where := r.stage.Namespace, fmt.Sprintf("namespace %q", r.stage.Namespace)
	if r.stage.Scope == plans.ScopeMesh {
		ns, where = "", "the mesh"
	}
	var metrics []string
	if ev.MTLSRequestRate > 0 || ev.PlaintextRequestRate > 0 {
		metrics = append(metrics, istiometrics.RequestsTotal)
	}
	if ev.MTLSConnectionRate > 0 || ev.PlaintextConnectionRate > 0 {
		metrics = append(metrics, istiometrics.TCPConnectionsOpened)
	}
	now := r.d.Clock.Now()
	var missing []string
	for _, m := range metrics {
		q := istiometrics.SeriesCount(m, istiometrics.Destination(ns))
		vec, err := r.promVector(ctx, q, now, "the Istio series of "+where)
		if err != nil {
			return err
		}
		if len(vec) == 0 || !(vec[0].Value > 0) {
			missing = append(missing, q)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	planProm := ""
	if u := r.o.Plan.Metadata.PrometheusURL; u != "" {
		planProm = fmt.Sprintf(" (the plan read %s)", u)
	}
	return refusef("pre-flight: the plan saw traffic into %s (%.4g requests/s, %.4g connections/s), but Prometheus has no Istio series for it now (empty: %s), so no check could see anything: "+
		"check that --prometheus-url is the Prometheus the plan used%s, the tenant (--prometheus-header X-Scope-OrgID=...), relabelling that renames or drops Istio's metrics or their %s/%s labels, and retention; if %s really has no traffic any more, re-run plan",
		where, ev.MTLSRequestRate+ev.PlaintextRequestRate, ev.MTLSConnectionRate+ev.PlaintextConnectionRate, strings.Join(missing, ", "), planProm,
		istiometrics.LabelReporter, istiometrics.LabelDestinationWorkloadNamespace, where)
}

// promVector runs one of pre-flight's instant queries. A query error is an
// error; an answer that cannot be judged by (warnings: a partial answer; a
// result that is not a vector) refuses the stage, since reading it as
// "nothing found" could hide what the check looks for.
func (r *run) promVector(ctx context.Context, query string, now time.Time, what string) (model.Vector, error) {
	vec, err := istiometrics.InstantVector(ctx, r.d.Prom, query, now, r.d.PromTimeout)
	var ue *istiometrics.UnusableAnswerError
	switch {
	case errors.As(err, &ue):
		return nil, refusef("pre-flight: Prometheus's answer to the query for %s cannot be judged by: it %s; check --prometheus-url and the tenant (--prometheus-header X-Scope-OrgID=...), or retry when every store answers (query: %s)", what, ue, query)
	case err != nil:
		return nil, fmt.Errorf("pre-flight: query Prometheus for %s: %w; it must answer before a stage is applied (check --prometheus-url)", what, err)
	}
	return vec, nil
}

// precheckProbes makes every probe once before the change. A probe that
// expects a refusal must get an HTTP answer now, or it proves nothing (a
// stale address refuses too); a probe that expects a status must get it.
func (r *run) precheckProbes(ctx context.Context) error {
	if len(r.stage.Probes) == 0 {
		return nil
	}
	within := min(r.o.ProbeWithin, 10*time.Second)
	if err := r.probing(ctx, len(r.stage.Probes), within, 0); err != nil {
		return err
	}
	for _, p := range r.stage.Probes {
		want := func(o probe.Observation) bool { return probe.Satisfied(p.Expect, o) }
		what := p.Expect.String()
		if p.Expect.Refused {
			want, what = probe.Answered, "an HTTP answer (plaintext accepted before the change)"
			if p.Kind == plans.ProbeTCP {
				what = "an open connection (plaintext accepted before the change)"
			}
		}
		res := r.d.Prober.Until(ctx, p, want, within)
		r.d.Progress.Step("preflight", "probe before the change", "probe", p.Name, "observed", res.Observed.String(), "ok", res.OK)
		if !res.OK {
			return refusef("probe %s cannot reach its target now (expected %s, got %s); re-run plan", p.Name, what, res.Observed)
		}
	}
	return r.markProbed(ctx, r.d.Clock.Now())
}

// markProbed records, for the namespace, the moment after which the tool
// sends no more plaintext probes of its own: the next pre-flight's
// plaintext check starts after it, so the tool's probes (plaintext requests
// from outside the mesh, recorded like any client's) are not taken for a
// client STRICT would cut off.
func (r *run) markProbed(ctx context.Context, at time.Time) error {
	return r.d.Store.Update(ctx, func(s *state.State) error {
		if s.ProbedAt == nil {
			s.ProbedAt = map[string]time.Time{}
		}
		s.ProbedAt[r.ref.Namespace] = at.UTC()
		return nil
	})
}

// probing marks, before n probes that may each retry for within, the
// latest moment they can still be sent. A run killed among its probes then
// leaves a mark past them: otherwise the next pre-flight (and every one
// after, back to the plan) would see the dead run's probes as a plaintext
// client and refuse, a dead end only a new plan would leave. The mark is
// moved back to the real end when the probes finish.
func (r *run) probing(ctx context.Context, n int, within, extra time.Duration) error {
	per := within + r.d.Prober.Timeout + time.Second
	return r.markProbed(ctx, r.d.Clock.Now().Add(time.Duration(n)*per+extra))
}
