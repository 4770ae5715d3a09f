package executor

import (
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

func threeStages() *plans.Plan {
	p := testPlan(true, policyDigest(existingPolicy()))
	s1 := p.Stages[0]
	s2, s3 := s1, s1
	s2.Number, s2.Namespace = 2, "payments"
	s3.Number, s3.Namespace, s3.Status = 3, "frontend", plans.StatusBlocked
	s3.Risks = []plans.Risk{{Code: "PLAINTEXT_FROM_OUTSIDE_MESH", Severity: plans.SeverityBlock, Message: "ingress without sidecar"}}
	p.Stages = []plans.Stage{s1, s2, s3}
	return p
}

func TestPickNext(t *testing.T) {
	p := threeStages()
	set := func(phases ...state.Phase) *state.State {
		s := &state.State{}
		r := s.EnsurePlan("p", "d", t0)
		for i, ph := range phases {
			seedPhase(r.EnsureStage(i+1, p.Stages[i].Namespace), ph, t0, "gate success-rate failed")
		}
		return s
	}
	tests := []struct {
		name  string
		s     *state.State
		kind  NextKind
		stage int
		msg   string
	}{
		{"nothing applied: stage 1", &state.State{}, NextRun, 1, "next stage 1 (cart)"},
		{"first done: stage 2", set(state.Done), NextRun, 2, "stage 2"},
		{"blocked stage stops the sequence", set(state.Done, state.Done), NextBlocked, 3, "is blocked: PLAINTEXT_FROM_OUTSIDE_MESH: ingress without sidecar"},
		{"rolled back stage is not retried", set(state.Done, state.RolledBack), NextRolledBack, 2, "not retried on a schedule"},
		{"failed rollback needs a person", set(state.Failed), NextFailed, 1, "a person must look"},
		{"all done", set(state.Done, state.Done, state.Done), NextAllDone, 0, "all 3 stages"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := PickNext(tt.s, p, "d")
			if n.Kind != tt.kind || (tt.stage != 0 && n.Stage.Number != tt.stage) || !strings.Contains(n.Message, tt.msg) {
				t.Fatalf("got %s %+v %q", n.Kind, n.Stage, n.Message)
			}
		})
	}
}

func TestDiffOutlinesNamesChangedStages(t *testing.T) {
	old := threeStages()
	rec := &state.PlanRecord{Outline: Outline(old)}
	p := threeStages()
	p.Stages[0].Soak = plans.Duration(time.Hour)            // changed
	p.Stages[1].Namespace = "checkout"                      // other namespace
	p.Stages[2].Status = plans.StatusReady                  // unblocked
	p.Stages = append(p.Stages, p.Stages[0])                // added
	p.Stages[3].Number, p.Stages[3].Namespace = 4, "emails" //
	got := strings.Join(DiffOutlines(rec, Outline(p)), "\n")
	for _, want := range []string{"stage 1 (cart): policy, probes, gates or soak changed", "stage 2: namespace payments → checkout", "stage 3 (frontend): status blocked → ready", "stage 4 (emails): added"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	if same := DiffOutlines(rec, Outline(old)); len(same) != 1 || !strings.Contains(same[0], "no stage changed") {
		t.Errorf("same plan: %v", same)
	}
}

func TestCarryOverKeepsDoneStagesAndTheirSnapshots(t *testing.T) {
	var s state.State
	old := s.EnsurePlan("old", "d1", t0)
	st := old.EnsureStage(1, "cart")
	st.TargetMode = "STRICT"
	st.Snapshot = nil
	st.Target = &state.Target{Name: "default", Mode: "STRICT"}
	seedPhase(st, state.Done, t0, "")
	p := threeStages()
	p.Stages[0].Number, p.Stages[1].Number = 2, 1 // cart is now stage 2
	p.Stages[0], p.Stages[1] = p.Stages[1], p.Stages[0]
	rec := s.EnsurePlan("new", "d2", t0)
	notes := CarryOver(s.Plan("d1"), rec, p, t0)
	if len(notes) != 1 || rec.Stage(2) == nil || rec.Stage(2).Phase != state.Done || rec.Stage(2).Target == nil {
		t.Fatalf("notes %v stage %+v", notes, rec.Stage(2))
	}
	if n := PickNext(&s, p, "d2"); n.Kind != NextRun || n.Stage.Number != 1 {
		t.Fatalf("next %+v", n)
	}
}
