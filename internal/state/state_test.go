package state

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestConfigMapStoreCreatesThenUpdates(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mtls-migrate"}})
	s := NewConfigMapStore(c, "mtls-migrate")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 1; i <= 2; i++ {
		err := s.Update(ctx, func(st *State) error {
			p := st.EnsurePlan("p", "sha256:1", now)
			seedPhase(p.EnsureStage(i, "ns"), Done, now, "")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Plans) != 1 || len(got.Plans[0].Stages) != 2 || got.Plans[0].Stages[1].Phase != Done {
		t.Fatalf("unexpected state %+v", got)
	}
}

func TestConfigMapStoreRetriesOnConflictRereading(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	s := NewConfigMapStore(c, "mtls-migrate")
	if err := s.Update(ctx, func(st *State) error { st.EnsurePlan("p", "d1", time.Now()); return nil }); err != nil {
		t.Fatal(err)
	}
	conflicts := 1
	c.PrependReactor("update", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts > 0 {
			conflicts--
			// Someone else wrote in between: the store must re-read, not overwrite.
			return true, nil, apierrors.NewConflict(corev1.Resource("configmaps"), ConfigMapName, errors.New("changed"))
		}
		return false, nil, nil
	})
	calls := 0
	if err := s.Update(ctx, func(st *State) error { calls++; st.EnsurePlan("p2", "d2", time.Now()); return nil }); err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Fatalf("fn called %d times, want 2 (re-read after the conflict)", calls)
	}
	got, _ := s.Load(ctx)
	if len(got.Plans) != 2 {
		t.Fatalf("want both plans, got %+v", got.Plans)
	}
}

func TestConfigMapStoreSaysWhenNamespaceIsMissing(t *testing.T) {
	c := fake.NewClientset()
	c.PrependReactor("create", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(corev1.Resource("namespaces"), "mtls-migrate")
	})
	err := NewConfigMapStore(c, "mtls-migrate").Update(context.Background(), func(*State) error { return nil })
	var nm *NamespaceMissingError
	if !errors.As(err, &nm) || !strings.Contains(err.Error(), "--state-namespace") {
		t.Fatalf("want a NamespaceMissingError naming --state-namespace, got %v", err)
	}
}

func TestUpdateFnErrorWritesNothing(t *testing.T) {
	m := NewMemory()
	boom := errors.New("boom")
	if err := m.Update(context.Background(), func(st *State) error { st.EnsurePlan("p", "d", time.Now()); return boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	got, _ := m.Load(context.Background())
	if len(got.Plans) != 0 || m.Writes != 0 {
		t.Fatalf("state written despite error: %+v", got)
	}
}

func TestEnsureStageKeepsOrderAndInProgress(t *testing.T) {
	var s State
	p := s.EnsurePlan("p", "d", time.Now())
	p.EnsureStage(3, "c")
	seedPhase(p.EnsureStage(1, "a"), Soaking, time.Now(), "")
	p.EnsureStage(2, "b")
	if p.Stages[0].Number != 1 || p.Stages[1].Number != 2 || p.Stages[2].Number != 3 {
		t.Fatalf("stages out of order: %+v", p.Stages)
	}
	if _, st := s.InProgress(); st == nil || st.Number != 1 {
		t.Fatalf("InProgress = %+v", st)
	}
	if Float(0.0/zero()) != nil {
		t.Fatal("NaN must have no JSON value")
	}
}

func zero() float64 { return 0 }

// seedPhase writes a stage's phase as a stored state document could hold
// it, bypassing the phase machine: test set-up only.
func seedPhase(st *StageState, ph Phase, at time.Time, reason string) {
	st.Phase, st.Reason = ph, reason
	st.History = append(st.History, Transition{Phase: ph, At: at.UTC(), Reason: reason})
	if ph == Done || ph == RolledBack || ph == Failed {
		st.FinishedAt = at.UTC()
	}
}

func TestPhaseMachineRefusesIllegalTransitions(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		from, to Phase
		ok       bool
	}{
		{Pending, Applying, true},
		{Pending, Done, false},
		{Pending, Soaking, false},
		{Applying, Soaking, true},
		{Applying, Done, false}, // done only after the soak
		{Applying, Pending, true},
		{Soaking, Done, true},
		{Soaking, RollingBack, true},
		{Done, RollingBack, true},
		{Done, Applying, false}, // roll back first
		{Done, Soaking, false},
		{RollingBack, Done, false},       // a rollback in progress never ends "done"
		{RollingBack, RollingBack, true}, // a rollback takes over a dead one's
		{RollingBack, RolledBack, true},
		{RollingBack, Failed, true},
		{RolledBack, Done, false},
		{RolledBack, Failed, true},
		{RolledBack, Applying, true},
		{Failed, Done, false},
		{Failed, RollingBack, true},
	}
	for _, tt := range tests {
		t.Run(string(tt.from)+"->"+string(tt.to), func(t *testing.T) {
			st := &StageState{Number: 4, Phase: tt.from, Reason: "before"}
			err := st.Move(tt.to, at, "why")
			if tt.ok {
				if err != nil || st.Phase != tt.to || len(st.History) != 1 || st.Reason != "why" {
					t.Fatalf("Move: %v, stage %+v", err, st)
				}
				return
			}
			var ill *IllegalTransitionError
			if !errors.As(err, &ill) || ill.From != tt.from || ill.To != tt.to {
				t.Fatalf("err = %v, want an IllegalTransitionError", err)
			}
			if st.Phase != tt.from || len(st.History) != 0 || st.Reason != "before" {
				t.Fatalf("a refused move changed the stage: %+v", st)
			}
		})
	}
}
