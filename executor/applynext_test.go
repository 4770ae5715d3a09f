package executor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/internal/window"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// stageCalls records what ApplyNext asked the stage runner to do; the stage
// "runs" by writing the phase it is told to end in.
type stageCalls struct {
	store    state.Store
	ran      []string
	endPhase state.Phase
	err      error
}

func (s *stageCalls) Run(ctx context.Context, p *plans.Plan, digest string, n int) (*Result, error) {
	s.ran = append(s.ran, fmt.Sprintf("run %s/%d", digest, n))
	st, _ := p.Stage(n)
	_ = s.store.Update(ctx, func(x *state.State) error {
		ss := x.EnsurePlan(p.Metadata.Name, digest, t0).EnsureStage(n, st.Namespace)
		ss.Phase = s.endPhase
		return nil
	})
	return &Result{Stage: n, Namespace: st.Namespace, Outcome: OutcomeDone}, s.err
}

func (s *stageCalls) Resume(_ context.Context, p *plans.Plan, digest string, n int, ns string) (*Result, error) {
	s.ran = append(s.ran, fmt.Sprintf("resume %s/%d %s plan=%v", digest, n, ns, p != nil))
	return &Result{Stage: n, Namespace: ns}, s.err
}

type nextEnv struct {
	store  *state.Memory
	stages *stageCalls
	locked int
	said   []string
	now    time.Time
}

func newNextEnv() *nextEnv {
	m := state.NewMemory()
	return &nextEnv{store: m, stages: &stageCalls{store: m, endPhase: state.Done}, now: t0}
}

func (e *nextEnv) deps() NextDeps {
	return NextDeps{
		Store: e.store, Stages: e.stages, Now: func() time.Time { return e.now },
		Say: func(s string) { e.said = append(e.said, s) },
		Lock: func(ctx context.Context) (context.Context, func(), error) {
			e.locked++
			return ctx, func() {}, nil
		},
	}
}

func (e *nextEnv) seed(t *testing.T, name, digest string, phases ...state.Phase) {
	t.Helper()
	p := threeStages()
	if err := e.store.Update(context.Background(), func(s *state.State) error {
		r := s.EnsurePlan(name, digest, t0)
		r.Outline = Outline(p)
		for i, ph := range phases {
			st := r.EnsureStage(i+1, p.Stages[i].Namespace)
			st.TargetMode = string(p.Stages[i].TargetMode)
			st.Phase = ph
			st.StartedAt = t0
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestApplyNext(t *testing.T) {
	// t0 is a Sunday, 12:00 UTC.
	weekdays, err := window.Parse("Mon-Fri 09:00-16:00 UTC")
	if err != nil {
		t.Fatal(err)
	}
	sunday, err := window.Parse("Sun 11:00-13:00 UTC")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		seed   func(*testing.T, *nextEnv)
		opts   NextOptions
		plan   func() *plans.Plan
		kind   NextKind
		ran    []string
		errAs  any
		said   string
		locked int
	}{
		{
			name: "nothing applied: runs stage 1 under the lock",
			kind: NextRun, ran: []string{"run d/1"}, locked: 1, said: "next stage 1 (cart)",
		},
		{
			name: "picks the first stage not done",
			seed: func(t *testing.T, e *nextEnv) { e.seed(t, "p", "d", state.Done) },
			kind: NextRun, ran: []string{"run d/2"}, locked: 1,
		},
		{
			name: "outside the window: nothing, not even the lock",
			opts: NextOptions{Window: weekdays},
			kind: NextOutsideWindow, said: "outside the allowed window", locked: 0,
		},
		{
			name: "inside the window: runs",
			opts: NextOptions{Window: sunday},
			kind: NextRun, ran: []string{"run d/1"}, locked: 1,
		},
		{
			name: "outside the window a stage in progress is still resumed",
			seed: func(t *testing.T, e *nextEnv) { e.seed(t, "p", "d", state.Done, state.Soaking) },
			opts: NextOptions{Window: weekdays},
			kind: NextRun, ran: []string{"resume d/2 payments plan=true"}, locked: 1,
		},
		{
			name:  "a stage left in progress by another plan is refused without --replan",
			seed:  func(t *testing.T, e *nextEnv) { e.seed(t, "old", "d-old", state.Applying) },
			errAs: new(*PlanChangedError), locked: 1,
		},
		{
			name: "with --replan it is rolled back from the state alone (no plan)",
			seed: func(t *testing.T, e *nextEnv) { e.seed(t, "old", "d-old", state.Applying) },
			opts: NextOptions{Replan: true},
			kind: NextRun, ran: []string{"resume d-old/1 cart plan=false"}, locked: 1,
		},
		{
			name: "a changed plan is refused without --replan and names the changed stage",
			seed: func(t *testing.T, e *nextEnv) { e.seed(t, "old", "d-old", state.Done) },
			plan: func() *plans.Plan {
				p := threeStages()
				p.Stages[1].Soak = plans.Duration(time.Hour)
				return p
			},
			errAs: new(*PlanChangedError), locked: 1,
		},
		{
			name: "with --replan done stages carry over and the next one runs",
			seed: func(t *testing.T, e *nextEnv) { e.seed(t, "old", "d-old", state.Done) },
			plan: func() *plans.Plan {
				p := threeStages()
				p.Stages[1].Soak = plans.Duration(time.Hour)
				return p
			},
			opts: NextOptions{Replan: true},
			kind: NextRun, ran: []string{"run d/2"}, said: "stage 1 (cart): already done under the previous plan", locked: 1,
		},
		{
			name: "a blocked stage stops the sequence",
			seed: func(t *testing.T, e *nextEnv) { e.seed(t, "p", "d", state.Done, state.Done) },
			kind: NextBlocked, said: "is blocked", locked: 1,
		},
		{
			name: "a rolled-back stage is not retried",
			seed: func(t *testing.T, e *nextEnv) { e.seed(t, "p", "d", state.RolledBack) },
			kind: NextRolledBack, locked: 1,
		},
		{
			name: "all done",
			seed: func(t *testing.T, e *nextEnv) { e.seed(t, "p", "d", state.Done, state.Done, state.Done) },
			kind: NextAllDone, said: "all 3 stages", locked: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newNextEnv()
			if tt.seed != nil {
				tt.seed(t, e)
			}
			p := threeStages()
			if tt.plan != nil {
				p = tt.plan()
			}
			o := tt.opts
			o.Plan, o.Digest = p, "d"
			out, err := ApplyNext(context.Background(), e.deps(), o)
			if tt.errAs != nil {
				if err == nil || !errors.As(err, tt.errAs) {
					t.Fatalf("err = %v, want %T", err, tt.errAs)
				}
			} else if err != nil {
				t.Fatalf("err = %v", err)
			}
			if tt.errAs == nil && out.Kind != tt.kind {
				t.Errorf("kind = %s, want %s (%s)", out.Kind, tt.kind, out.Message)
			}
			if strings.Join(e.stages.ran, ";") != strings.Join(tt.ran, ";") {
				t.Errorf("stage runner calls = %v, want %v", e.stages.ran, tt.ran)
			}
			if e.locked != tt.locked {
				t.Errorf("lock taken %d times, want %d", e.locked, tt.locked)
			}
			if tt.said != "" && !strings.Contains(strings.Join(e.said, "\n"), tt.said) {
				t.Errorf("said %q, want %q in it", e.said, tt.said)
			}
		})
	}
}

func TestApplyNextRecordsThePlanOutlineOnce(t *testing.T) {
	e := newNextEnv()
	e.stages.endPhase = state.Done
	p := threeStages()
	for range 2 {
		if _, err := ApplyNext(context.Background(), e.deps(), NextOptions{Plan: p, Digest: "d"}); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := e.store.Load(context.Background())
	if len(s.Plans) != 1 || len(s.Plans[0].Outline) != 3 {
		t.Fatalf("plans %+v", s.Plans)
	}
	if got := strings.Join(e.stages.ran, ";"); got != "run d/1;run d/2" {
		t.Fatalf("ran %s", got)
	}
}
