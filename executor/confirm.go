package executor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

// NotVerifiedError says the stage's policy was changed by someone else
// while the stage was verified: the tool cannot say the stage holds, and it
// leaves their change alone. A person must look (exit 4).
type NotVerifiedError struct{ Reason string }

func (e *NotVerifiedError) Error() string {
	return "stage not recorded done: " + e.Reason
}

// stillTrue re-reads what the stage applied, right before "done" is
// written: done is never written from memory. It returns a
// *NotVerifiedError when the policy is no longer the object and version the
// apply left (a GitOps controller's self-heal, a colleague's kubectl edit),
// naming who changed it as managedFields tell.
func (r *run) stillTrue(ctx context.Context) error {
	if r.applied == nil {
		return &NotVerifiedError{Reason: "the run does not know what it applied"}
	}
	for _, applied := range append([]*securityv1.PeerAuthentication{r.applied}, r.alsoApplied...) {
		if err := r.stillAsApplied(ctx, applied); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) stillAsApplied(ctx context.Context, applied *securityv1.PeerAuthentication) error {
	ns, name := applied.Namespace, applied.Name
	live, err := peerauth.Get(ctx, r.d.Istio, ns, name)
	if apierrors.IsNotFound(err) {
		return &NotVerifiedError{Reason: fmt.Sprintf("PeerAuthentication %s/%s was deleted during the soak; its namespace is no longer at %s by this stage; left as it is: find out who deleted it (the audit log) before applying the stage again", ns, name, r.stage.TargetMode)}
	}
	if err != nil {
		return fmt.Errorf("re-read PeerAuthentication %s/%s before recording done: %w", ns, name, err)
	}
	switch {
	case live.UID != applied.UID:
		return &NotVerifiedError{Reason: fmt.Sprintf("PeerAuthentication %s/%s was deleted and created again during the soak (UID %s, the stage applied %s)%s; left as it is", ns, name, live.UID, applied.UID, changedBy(live, r.appliedAt))}
	case live.ResourceVersion != applied.ResourceVersion:
		what := "its metadata changed"
		if !proto.Equal(&live.Spec, &applied.Spec) {
			what = fmt.Sprintf("its spec changed (mode %s, the stage applied %s)", live.Spec.GetMtls().GetMode(), applied.Spec.GetMtls().GetMode())
		}
		return &NotVerifiedError{Reason: fmt.Sprintf("PeerAuthentication %s/%s was changed during the soak: %s%s; their change is left alone: if a GitOps controller manages it, make the change in the repository it syncs from, then run the stage again", ns, name, what, changedBy(live, r.appliedAt))}
	}
	return nil
}

// recordDone writes the stage done, with the last gate values and the
// digest of the namespace's PeerAuthentications as the stage left them
// (leftDigest): a later stage whose policyDigest is after-stage:N starts
// only from exactly those.
func (r *run) recordDone(ctx context.Context) error {
	left, err := r.leftDigest()
	if err != nil {
		return err
	}
	return r.setPhase(ctx, state.Done, "", func(st *state.StageState) {
		st.Gates = r.res.Gates
		st.PolicyDigest = left
	})
}

// leftDigest is the digest of the namespace's PeerAuthentications as the
// stage left them: the snapshot taken right before the change, with the
// objects the stage wrote as the API server returned them (stillTrue has
// just found each unchanged since). It is computed, not listed: a policy
// someone else added, changed or deleted in the namespace meanwhile is not
// what the stage left, and a later after-stage:N stage, planned for exactly
// what it left, must refuse it rather than take it as the starting point.
func (r *run) leftDigest() (string, error) {
	if r.record == nil || r.applied == nil {
		return "", errors.New("the run holds no snapshot or applied policy to digest")
	}
	snap, err := rollback.Decode(r.record.Snapshot)
	if err != nil {
		return "", fmt.Errorf("digest the PeerAuthentications the stage left: %w", err)
	}
	byName := map[string]*securityv1.PeerAuthentication{}
	for _, pa := range snap {
		byName[pa.Name] = pa
	}
	for _, pa := range append([]*securityv1.PeerAuthentication{r.applied}, r.alsoApplied...) {
		byName[pa.Name] = pa
	}
	return peerauth.PolicyDigest(slices.Collect(maps.Values(byName))), nil
}

// changedBy names the field managers other than the tool's that wrote the
// object after t, latest first, as " by NAME (OPERATION at TIME), ...".
func changedBy(pa *securityv1.PeerAuthentication, t time.Time) string {
	type w struct {
		who string
		at  time.Time
	}
	var ws []w
	for _, mf := range pa.ManagedFields {
		if mf.Manager == peerauth.FieldManager || mf.Time == nil || mf.Time.Time.Before(t.Truncate(time.Second)) {
			continue
		}
		ws = append(ws, w{fmt.Sprintf("%s (%s at %s)", mf.Manager, mf.Operation, mf.Time.UTC().Format(time.RFC3339)), mf.Time.Time})
	}
	if len(ws) == 0 {
		return ""
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].at.After(ws[j].at) })
	out := " by " + ws[0].who
	for _, x := range ws[1:] {
		out += ", " + x.who
	}
	return out
}

// reprobe makes the stage's refusal probes once more after the soak: the
// policy may be intact while something else (a newer workload policy, a
// sidecar that lost its configuration) lets plaintext in again.
func (r *run) reprobe(ctx context.Context) string {
	defer r.markProbes(ctx, "confirm")()
	for _, p := range r.stage.Probes {
		if !p.Expect.Refused {
			continue
		}
		res := r.d.Prober.Expect(ctx, p, r.o.ProbeWithin)
		r.d.Progress.Step("confirm", "probe after the soak", "probe", p.Name, "observed", res.Observed.String(), "ok", res.OK)
		if !res.OK {
			return fmt.Sprintf("after the soak, probe %s gets %s instead of a refusal: plaintext is accepted again although the stage's policy is unchanged", p.Name, res.Observed)
		}
	}
	return ""
}

// markProbes marks the stage's probes as under way (see probing) and
// returns the function that marks their real end; a failed mark is said,
// not fatal: it only makes the next pre-flight stricter.
func (r *run) markProbes(ctx context.Context, step string) func() {
	if err := r.probing(ctx, len(r.stage.Probes), r.o.ProbeWithin, 0); err != nil {
		r.d.Progress.Step(step, "could not mark the probes in the state: "+err.Error())
	}
	return func() {
		if err := r.markProbed(ctx, r.d.Clock.Now()); err != nil {
			r.d.Progress.Step(step, "could not mark the probes' end in the state: "+err.Error())
		}
	}
}
