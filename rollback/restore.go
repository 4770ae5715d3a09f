package rollback

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"google.golang.org/protobuf/proto"
	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istio "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/kuberetry"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
)

// Action is one thing the restore did (or found already done).
type Action struct {
	Object  string `json:"object"`
	Did     string `json:"did"`
	Changed bool   `json:"changed"`
	// WouldChange is set by a dry run that found something to restore.
	WouldChange bool `json:"wouldChange,omitempty"`
}

// ConflictError says an object changed since the stage applied it, so the
// restore would overwrite someone else's change: it is left alone and a
// person must decide.
type ConflictError struct {
	Object string
	Reason string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("cannot restore %s safely: %s; it was left as it is, compare it with the snapshot in the migration state and fix it by hand", e.Object, e.Reason)
}

// Options tune a restore.
type Options struct {
	// DryRun sends the restore through the API server's validation without
	// persisting it.
	DryRun bool
}

// maxAttempts bounds re-read-and-re-decide rounds after write conflicts.
const maxAttempts = 5

// Restore puts the namespace's PeerAuthentications back as the stage's
// snapshot recorded them: every object the stage wrote (its target, and
// the other namespace-wide policies it set too), each deleted if the stage
// created it or restored in place if it patched it. It is idempotent:
// objects already as before are reported unchanged. A write conflict
// (someone wrote in between) makes it re-read and decide again, never
// overwrite. An object it cannot restore safely does not stop the others:
// they are restored, and the errors are returned together.
func Restore(ctx context.Context, c istio.Interface, st *state.StageState, o Options) ([]Action, error) {
	targets := st.Targets()
	if len(targets) == 0 {
		return []Action{{Object: "-", Did: "nothing was applied in this stage"}}, nil
	}
	snap, err := Decode(st.Snapshot)
	if err != nil {
		return nil, fmt.Errorf("stage %d: %w", st.Number, err)
	}
	var acts []Action
	var errs []error
	for _, t := range targets {
		a, err := restoreOne(ctx, c, st, t, snap, o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		acts = append(acts, a)
	}
	return acts, errors.Join(errs...)
}

// restoreOne puts back one object the stage wrote.
func restoreOne(ctx context.Context, c istio.Interface, st *state.StageState, t *state.Target, snap []*securityv1.PeerAuthentication, o Options) (Action, error) {
	var before *securityv1.PeerAuthentication
	for _, s := range snap {
		if s.Name == t.Name {
			before = s
		}
	}
	obj := fmt.Sprintf("PeerAuthentication %s/%s", st.Namespace, t.Name)
	if t.Created && before != nil {
		return Action{}, &ConflictError{Object: obj, Reason: "the state says the stage created it but the snapshot holds it: the state is inconsistent"}
	}
	if !t.Created && before == nil {
		return Action{}, &ConflictError{Object: obj, Reason: "the state says the stage patched it but the snapshot does not hold it"}
	}
	for attempt := 1; ; attempt++ {
		var a Action
		var err error
		if t.Created {
			a, err = restoreCreated(ctx, c, st.Namespace, t, obj, o)
		} else {
			a, err = restorePatched(ctx, c, st.Namespace, t, before, obj, o)
		}
		if apierrors.IsConflict(err) && attempt < maxAttempts {
			continue
		}
		if apierrors.IsConflict(err) {
			return Action{}, &ConflictError{Object: obj, Reason: fmt.Sprintf("it kept changing while being restored (%d attempts)", attempt)}
		}
		return a, err
	}
}

func verb(dry bool, s string) string {
	if dry {
		return "would be " + s + " (dry run)"
	}
	return s
}

func dryRun(dry bool) []string {
	if dry {
		return []string{metav1.DryRunAll}
	}
	return nil
}

func restoreCreated(ctx context.Context, c istio.Interface, ns string, t *state.Target, obj string, o Options) (Action, error) {
	pas := c.SecurityV1().PeerAuthentications(ns)
	var live *securityv1.PeerAuthentication
	err := kuberetry.DoUntil(ctx, func() (err error) {
		live, err = peerauth.Get(ctx, c, ns, t.Name)
		return err
	})
	if apierrors.IsNotFound(err) {
		return Action{Object: obj, Did: "already absent (it did not exist before the stage)"}, nil
	}
	if err != nil {
		return Action{}, fmt.Errorf("read %s: %w", obj, err)
	}
	if live.Labels[peerauth.ManagedByLabel] != peerauth.ManagedByValue {
		return Action{}, &ConflictError{Object: obj, Reason: "it lacks the label " + peerauth.ManagedByLabel + "=" + peerauth.ManagedByValue + ", so it is not the object the stage created"}
	}
	if t.UID != "" && string(live.UID) != t.UID {
		return Action{}, &ConflictError{Object: obj, Reason: fmt.Sprintf("its UID is %s, not %s: it was deleted and created again by someone else", live.UID, t.UID)}
	}
	if want := appliedSpec(nil, t.Mode); !proto.Equal(&live.Spec, want) {
		return Action{}, &ConflictError{Object: obj, Reason: fmt.Sprintf("its spec changed since the stage created it (now %s)", specString(&live.Spec))}
	}
	// Preconditions: the API server deletes only this UID at this version;
	// anything newer is a conflict, and Restore re-reads and decides again.
	uid, rv := live.UID, live.ResourceVersion
	// A retried delete that had landed finds it absent (404, below).
	err = kuberetry.DoUntil(ctx, func() error {
		return pas.Delete(ctx, live.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv},
			DryRun:        dryRun(o.DryRun),
		})
	})
	if apierrors.IsNotFound(err) {
		return Action{Object: obj, Did: "already absent"}, nil
	}
	if err != nil {
		return Action{}, fmt.Errorf("delete %s: %w", obj, err)
	}
	return Action{Object: obj, Did: verb(o.DryRun, "deleted (the stage created it)"), Changed: !o.DryRun, WouldChange: o.DryRun}, nil
}

func restorePatched(ctx context.Context, c istio.Interface, ns string, t *state.Target, before *securityv1.PeerAuthentication, obj string, o Options) (Action, error) {
	pas := c.SecurityV1().PeerAuthentications(ns)
	var live *securityv1.PeerAuthentication
	err := kuberetry.DoUntil(ctx, func() (err error) {
		live, err = peerauth.Get(ctx, c, ns, before.Name)
		return err
	})
	if apierrors.IsNotFound(err) {
		return Action{}, &ConflictError{Object: obj, Reason: "it was deleted after the stage patched it; recreating it would give it a new creation time and change Istio's precedence"}
	}
	if err != nil {
		return Action{}, fmt.Errorf("read %s: %w", obj, err)
	}
	if live.UID != before.UID {
		return Action{}, &ConflictError{Object: obj, Reason: fmt.Sprintf("its UID is %s, not %s as in the snapshot: it was deleted and created again", live.UID, before.UID)}
	}
	if sameContent(live, before) {
		return Action{Object: obj, Did: "already as before the stage"}, nil
	}
	// Only what the stage wrote may differ from the snapshot: the mode and
	// the stage annotation (which the snapshot may hold too: an earlier
	// stage in the namespace, PERMISSIVE before STRICT, wrote its own).
	// Anything else is someone else's change.
	withoutOurs := maps.Clone(live.Annotations)
	delete(withoutOurs, peerauth.StageAnnotation)
	beforeWithoutOurs := maps.Clone(before.Annotations)
	delete(beforeWithoutOurs, peerauth.StageAnnotation)
	if !proto.Equal(&live.Spec, appliedSpec(&before.Spec, t.Mode)) {
		return Action{}, &ConflictError{Object: obj, Reason: fmt.Sprintf("its spec changed since the stage patched it (now %s, the stage wrote mode %s, before it was %s)", specString(&live.Spec), t.Mode, specString(&before.Spec))}
	}
	if !mapsEqual(live.Labels, before.Labels) || !mapsEqual(withoutOurs, beforeWithoutOurs) {
		return Action{}, &ConflictError{Object: obj, Reason: "its labels or annotations changed since the stage patched it"}
	}
	restored := live.DeepCopy()
	before.Spec.DeepCopyInto(&restored.Spec)
	restored.Labels = maps.Clone(before.Labels)
	restored.Annotations = maps.Clone(before.Annotations)
	// Update carries live's resourceVersion: a write in between is a 409,
	// and Restore re-reads instead of overwriting it.
	// 429/5xx/timeouts are retried; a retried update that had landed is a
	// 409 (stale resourceVersion), re-read as "already as before".
	err = kuberetry.DoUntil(ctx, func() error {
		_, err := pas.Update(ctx, restored, metav1.UpdateOptions{FieldManager: peerauth.FieldManager, DryRun: dryRun(o.DryRun)})
		return err
	})
	if err != nil {
		if apierrors.IsConflict(err) {
			return Action{}, err
		}
		return Action{}, fmt.Errorf("restore %s: %w", obj, err)
	}
	return Action{Object: obj, Did: verb(o.DryRun, "restored in place (spec, labels, annotations; same UID and creation time)"), Changed: !o.DryRun, WouldChange: o.DryRun}, nil
}

// appliedSpec is the spec a stage leaves: before's spec (nil: empty) with
// the namespace-level mode set.
func appliedSpec(before *apisecurity.PeerAuthentication, mode string) *apisecurity.PeerAuthentication {
	out := &apisecurity.PeerAuthentication{}
	if before != nil {
		before.DeepCopyInto(out)
	}
	if out.Mtls == nil {
		out.Mtls = &apisecurity.PeerAuthentication_MutualTLS{}
	}
	out.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_Mode(apisecurity.PeerAuthentication_MutualTLS_Mode_value[mode])
	return out
}

// AppliedSpec is exported for the executor: the spec it writes.
func AppliedSpec(before *apisecurity.PeerAuthentication, mode string) *apisecurity.PeerAuthentication {
	return appliedSpec(before, mode)
}

func sameContent(a, b *securityv1.PeerAuthentication) bool {
	return proto.Equal(&a.Spec, &b.Spec) && mapsEqual(a.Labels, b.Labels) && mapsEqual(a.Annotations, b.Annotations)
}

// mapsEqual treats nil and empty as equal (the API server drops empty maps).
func mapsEqual(a, b map[string]string) bool {
	return len(a) == len(b) && maps.Equal(a, b)
}

func specString(s *apisecurity.PeerAuthentication) string {
	b, err := s.MarshalJSON()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// IsConflict reports whether err is (or wraps) a ConflictError.
func IsConflict(err error) bool {
	var ce *ConflictError
	return errors.As(err, &ce)
}
