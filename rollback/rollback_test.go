package rollback

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
)

var created = metav1.NewTime(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))

func existing() *securityv1.PeerAuthentication {
	return &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{
			Name: "default", Namespace: "cart", UID: "uid-old", CreationTimestamp: created, ResourceVersion: "5",
			Labels:      map[string]string{"team": "cart"},
			Annotations: map[string]string{"note": "keep me"},
		},
		Spec: apisecurity.PeerAuthentication{Mtls: &apisecurity.PeerAuthentication_MutualTLS{Mode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE}},
	}
}

// applyStage does to the fake what the executor does, and returns the state.
func applyStage(t *testing.T, c *istiofake.Clientset, createdByUs bool) (*state.Memory, string) {
	t.Helper()
	ctx := context.Background()
	snap, err := peerauth.List(ctx, c, "cart")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := Encode(snap)
	if err != nil {
		t.Fatal(err)
	}
	pas := c.SecurityV1().PeerAuthentications("cart")
	var after *securityv1.PeerAuthentication
	if createdByUs {
		after, err = pas.Create(ctx, &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "cart", UID: "uid-new", Labels: map[string]string{peerauth.ManagedByLabel: peerauth.ManagedByValue}},
			Spec:       apisecurity.PeerAuthentication{Mtls: &apisecurity.PeerAuthentication_MutualTLS{Mode: apisecurity.PeerAuthentication_MutualTLS_STRICT}},
		}, metav1.CreateOptions{})
	} else {
		live, _ := pas.Get(ctx, "default", metav1.GetOptions{})
		live.Spec.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_STRICT
		live.Annotations[peerauth.StageAnnotation] = "p/1"
		after, err = pas.Update(ctx, live, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	m := state.NewMemory()
	const digest = "sha256:p"
	err = m.Update(ctx, func(s *state.State) error {
		st := s.EnsurePlan("p", digest, time.Now()).EnsureStage(1, "cart")
		st.Snapshot = raw
		st.Target = &state.Target{Name: "default", Created: createdByUs, UID: string(after.UID), ResourceVersion: after.ResourceVersion, Mode: "STRICT"}
		seedPhase(st, state.Done, time.Now(), "")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m, digest
}

func TestRollbackRestoresPreExistingExactlyAndIsIdempotent(t *testing.T) {
	ctx := context.Background()
	c := istiofake.NewSimpleClientset(existing())
	store, digest := applyStage(t, c, false)
	r := &Runner{Istio: c, Store: store}

	reps, err := r.Stages(ctx, digest, []int{1}, "test", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !reps[0].Changed {
		t.Fatalf("first rollback changed nothing: %+v", reps)
	}
	live, _ := c.SecurityV1().PeerAuthentications("cart").Get(ctx, "default", metav1.GetOptions{})
	want := existing()
	if !proto.Equal(&live.Spec, &want.Spec) || !mapsEqual(live.Labels, want.Labels) || !mapsEqual(live.Annotations, want.Annotations) ||
		live.UID != want.UID || !live.CreationTimestamp.Equal(&want.CreationTimestamp) {
		t.Fatalf("not restored exactly: %+v", live)
	}
	s, _ := store.Load(ctx)
	if ph := s.Plan(digest).Stage(1).Phase; ph != state.RolledBack {
		t.Fatalf("phase %s", ph)
	}

	writes := store.Writes
	c.ClearActions()
	reps, err = r.Stages(ctx, digest, []int{1}, "again", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if reps[0].Changed || reps[0].Note == "" || store.Writes != writes {
		t.Fatalf("second rollback not a no-op: %+v, writes %d→%d", reps, writes, store.Writes)
	}
	for _, a := range c.Actions() {
		if a.GetVerb() != "get" {
			t.Fatalf("second rollback wrote: %v", a)
		}
	}
}

func TestRollbackDeletesOnlyWhatItCreated(t *testing.T) {
	ctx := context.Background()
	c := istiofake.NewSimpleClientset()
	store, digest := applyStage(t, c, true)
	r := &Runner{Istio: c, Store: store}
	if _, err := r.Stages(ctx, digest, []int{1}, "test", Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SecurityV1().PeerAuthentications("cart").Get(ctx, "default", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("created object not deleted: %v", err)
	}
	reps, err := r.Stages(ctx, digest, []int{1}, "again", Options{})
	if err != nil || reps[0].Changed {
		t.Fatalf("second rollback: %+v %v", reps, err)
	}
}

func TestRollbackRefusesToOverwriteSomeoneElsesChange(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		created bool
		change  func(*securityv1.PeerAuthentication)
	}{
		{"spec changed on a patched policy", false, func(p *securityv1.PeerAuthentication) {
			p.Spec.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_DISABLE
		}},
		{"label added on a patched policy", false, func(p *securityv1.PeerAuthentication) { p.Labels["new"] = "x" }},
		{"created policy lost our label", true, func(p *securityv1.PeerAuthentication) { p.Labels = nil }},
		{"created policy recreated by someone (other UID)", true, func(p *securityv1.PeerAuthentication) { p.UID = "someone-else" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c *istiofake.Clientset
			if tt.created {
				c = istiofake.NewSimpleClientset()
			} else {
				c = istiofake.NewSimpleClientset(existing())
			}
			store, digest := applyStage(t, c, tt.created)
			live, _ := c.SecurityV1().PeerAuthentications("cart").Get(ctx, "default", metav1.GetOptions{})
			tt.change(live)
			if _, err := c.SecurityV1().PeerAuthentications("cart").Update(ctx, live, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			before, _ := c.SecurityV1().PeerAuthentications("cart").Get(ctx, "default", metav1.GetOptions{})
			_, err := (&Runner{Istio: c, Store: store}).Stages(ctx, digest, []int{1}, "test", Options{})
			if !IsConflict(err) {
				t.Fatalf("want a ConflictError, got %v", err)
			}
			after, _ := c.SecurityV1().PeerAuthentications("cart").Get(ctx, "default", metav1.GetOptions{})
			if !proto.Equal(&after.Spec, &before.Spec) || !mapsEqual(after.Labels, before.Labels) {
				t.Fatal("someone else's change was overwritten")
			}
			s, _ := store.Load(ctx)
			if ph := s.Plan(digest).Stage(1).Phase; ph != state.Failed {
				t.Fatalf("phase %s, want failed", ph)
			}
		})
	}
}

func TestRollbackRereadsAfterAWriteConflict(t *testing.T) {
	ctx := context.Background()
	c := istiofake.NewSimpleClientset(existing())
	store, digest := applyStage(t, c, false)
	conflicts := 1
	c.PrependReactor("update", "peerauthentications", func(k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts > 0 {
			conflicts--
			return true, nil, apierrors.NewConflict(schema.GroupResource{Group: "security.istio.io", Resource: "peerauthentications"}, "default", errors.New("modified"))
		}
		return false, nil, nil
	})
	if _, err := (&Runner{Istio: c, Store: store}).Stages(ctx, digest, []int{1}, "t", Options{}); err != nil {
		t.Fatal(err)
	}
	gets := 0
	for _, a := range c.Actions() {
		if a.GetVerb() == "get" {
			gets++
		}
	}
	if gets < 2 {
		t.Fatalf("did not re-read after the conflict (%d gets)", gets)
	}
}

func TestAppliedStagesLatestFirst(t *testing.T) {
	var s state.State
	p := s.EnsurePlan("p", "d", time.Now())
	seedPhase(p.EnsureStage(1, "a"), state.Done, time.Now(), "")
	p.EnsureStage(2, "b")
	seedPhase(p.EnsureStage(3, "c"), state.RolledBack, time.Now(), "")
	got, err := AppliedStages(&s, "d")
	if err != nil || len(got) != 2 || got[0] != 3 || got[1] != 1 {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := AppliedStages(&s, "other"); !errors.Is(err, ErrNoRecord) {
		t.Fatal(err)
	}
}

// seedPhase writes a stage's phase as a stored state document could hold
// it, bypassing the phase machine: test set-up only.
func seedPhase(st *state.StageState, ph state.Phase, at time.Time, reason string) {
	st.Phase, st.Reason = ph, reason
	st.History = append(st.History, state.Transition{Phase: ph, At: at.UTC(), Reason: reason})
	if ph == state.Done || ph == state.RolledBack || ph == state.Failed {
		st.FinishedAt = at.UTC()
	}
}

// TestRollbackAllGoesOnPastADeletedNamespace: `rollback --all` over stages
// whose namespace was deleted since reports it and rolls the others back.
func TestRollbackAllGoesOnPastADeletedNamespace(t *testing.T) {
	ctx := context.Background()
	c := istiofake.NewSimpleClientset(existing())
	m, digest := applyStage(t, c, false)
	// Stage 2 was in namespace "gone", deleted since (with its policies).
	if err := m.Update(ctx, func(s *state.State) error {
		st := s.Plan(digest).EnsureStage(2, "gone")
		st.Target = &state.Target{Name: "default", Created: false, UID: "uid-gone", Mode: "STRICT"}
		gone := existing()
		gone.Namespace, gone.UID = "gone", "uid-gone"
		raw, err := Encode([]*securityv1.PeerAuthentication{gone})
		st.Snapshot = raw
		seedPhase(st, state.Done, time.Now(), "")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	kube := kubefake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cart"}})
	r := &Runner{Istio: c, Kube: kube, Store: m}
	s, _ := m.Load(ctx)
	numbers, _ := AppliedStages(s, digest)
	reps, err := r.Stages(ctx, digest, numbers, "all", Options{})
	if err != nil {
		t.Fatalf("rollback --all stopped: %v (%+v)", err, reps)
	}
	if len(reps) != 2 || reps[0].Number != 2 || !strings.Contains(reps[0].Note, `namespace "gone" no longer exists`) {
		t.Fatalf("reports %+v", reps)
	}
	pa, _ := c.SecurityV1().PeerAuthentications("cart").Get(ctx, "default", metav1.GetOptions{})
	if pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE {
		t.Fatalf("stage 1 not rolled back: %s", pa.Spec.GetMtls().GetMode())
	}
	s, _ = m.Load(ctx)
	if ph := s.Plan(digest).Stage(2).Phase; ph != state.RolledBack {
		t.Fatalf("stage 2 is %s", ph)
	}
}

// second is a younger namespace-wide policy, which Istio ignores.
func second() *securityv1.PeerAuthentication {
	pa := existing()
	pa.Name, pa.UID, pa.CreationTimestamp = "team", "uid-team", metav1.NewTime(created.Add(time.Hour))
	pa.Labels, pa.Annotations = map[string]string{"owner": "team"}, nil
	return pa
}

func TestRollbackRestoresEveryNamespaceWidePolicyTheStageWrote(t *testing.T) {
	ctx := context.Background()
	c := istiofake.NewSimpleClientset(existing(), second())
	store, digest := applyStage(t, c, false)
	// The stage also set the ignored one to STRICT.
	pas := c.SecurityV1().PeerAuthentications("cart")
	live, _ := pas.Get(ctx, "team", metav1.GetOptions{})
	live.Spec.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_STRICT
	live.Annotations = map[string]string{peerauth.StageAnnotation: "p/1"}
	if _, err := pas.Update(ctx, live, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := store.Update(ctx, func(s *state.State) error {
		s.Plan(digest).Stage(1).AlsoTargets = []state.Target{{Name: "team", UID: "uid-team", Mode: "STRICT"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r := &Runner{Istio: c, Store: store}
	reps, err := r.Stages(ctx, digest, []int{1}, "test", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(reps[0].Actions) != 2 || !reps[0].Actions[0].Changed || !reps[0].Actions[1].Changed {
		t.Fatalf("want both restored, got %+v", reps[0].Actions)
	}
	for _, want := range []*securityv1.PeerAuthentication{existing(), second()} {
		got, _ := pas.Get(ctx, want.Name, metav1.GetOptions{})
		if !proto.Equal(&got.Spec, &want.Spec) || !mapsEqual(got.Labels, want.Labels) || !mapsEqual(got.Annotations, want.Annotations) || got.UID != want.UID {
			t.Errorf("%s not restored exactly: %+v", want.Name, got)
		}
	}
}

// A state document written before alsoTargets existed still rolls back.
func TestRollbackOfAStateWithOnlyOneTarget(t *testing.T) {
	ctx := context.Background()
	c := istiofake.NewSimpleClientset(existing())
	store, digest := applyStage(t, c, false)
	s, _ := store.Load(ctx)
	old := []byte(`{"number":1,"namespace":"cart","phase":"done","target":{"name":"default","created":false,"uid":"uid-old","mode":"STRICT"},"snapshot":` +
		string(mustJSON(t, s.Plan(digest).Stage(1).Snapshot)) + `}`)
	var st state.StageState
	if err := json.Unmarshal(old, &st); err != nil {
		t.Fatal(err)
	}
	if n := len(st.Targets()); n != 1 {
		t.Fatalf("targets of an old document: %d, want 1", n)
	}
	acts, err := Restore(ctx, c, &st, Options{})
	if err != nil || len(acts) != 1 || !acts[0].Changed {
		t.Fatalf("restore: %+v %v", acts, err)
	}
}

// A namespace that was DISABLE gets PERMISSIVE then STRICT: the STRICT
// stage's snapshot holds the PERMISSIVE stage's annotation, and its rollback
// gives that back.
func TestRollbackKeepsAnEarlierStagesAnnotation(t *testing.T) {
	ctx := context.Background()
	pa := existing()
	pa.Annotations[peerauth.StageAnnotation] = "p/0"
	c := istiofake.NewSimpleClientset(pa)
	store, digest := applyStage(t, c, false)
	if _, err := (&Runner{Istio: c, Store: store}).Stages(ctx, digest, []int{1}, "test", Options{}); err != nil {
		t.Fatal(err)
	}
	live, _ := c.SecurityV1().PeerAuthentications("cart").Get(ctx, "default", metav1.GetOptions{})
	if live.Annotations[peerauth.StageAnnotation] != "p/0" || live.Spec.Mtls.Mode != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE {
		t.Fatalf("not restored: %+v", live)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
