package executor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	apisecurity "istio.io/api/security/v1beta1"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

// TestRollbackDuringTheSoakWinsOverTheRunningApply: a person's rollback
// (TakeOver, as `rollback --preempt` does) while the apply soaks takes the
// stage; the apply's next state write is fenced off, it stops, and it never
// writes done over the rollback.
func TestRollbackDuringTheSoakWinsOverTheRunningApply(t *testing.T) {
	e := newEnv(t, true)
	ticks := 0
	var rbErr error
	e.prom = func(q string, ts time.Time) (model.Value, error) {
		if q == "success" && e.phase() == state.Soaking {
			if ticks++; ticks == 2 {
				person := &rollback.Runner{Istio: e.istio, Store: e.store, Now: e.clock.Now, Owner: "alice-cli", TakeOver: true}
				_, rbErr = person.Stages(context.Background(), "sha256:p", []int{1}, "rolled back by hand", rollback.Options{})
			}
		}
		return healthyProm(q, ts)
	}
	res, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(_ *Deps, o *Options) { o.RunID = "cronjob-abc" })
	if rbErr != nil {
		t.Fatalf("the person's rollback: %v", rbErr)
	}
	var fenced *state.FencedError
	if !errors.As(err, &fenced) || res.Outcome != OutcomeTakenOver {
		t.Fatalf("apply ended with %v (outcome %s), want it fenced off", err, res.Outcome)
	}
	s, _ := e.store.Load(context.Background())
	st := s.Plan("sha256:p").Stage(1)
	if st.Phase != state.RolledBack || st.Owner != "alice-cli" || st.Reason != "rolled back by hand" {
		t.Fatalf("the rollback's record was overwritten: phase %s owner %s reason %q", st.Phase, st.Owner, st.Reason)
	}
	for _, h := range st.History[len(st.History)-2:] {
		if h.Phase == state.Done {
			t.Fatalf("done written after the rollback: %+v", st.History)
		}
	}
	if pa := e.policy(); pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE {
		t.Fatalf("policy %s after the rollback", pa.Spec.GetMtls().GetMode())
	}
	if ticks > 3 {
		t.Errorf("the apply kept soaking %d ticks after it lost the stage", ticks)
	}
}

// TestStaleRunCannotWriteAStageAnotherRunTookOver: fencing without the
// soak: a run whose lock expired and whose stage a new run resumed is
// refused on its next write.
func TestStaleRunCannotWriteAStageAnotherRunTookOver(t *testing.T) {
	st := &state.StageState{Number: 1, Phase: state.Soaking, Owner: "new-run"}
	if err := st.Fence("old-run", state.Soaking); err == nil {
		t.Fatal("a write from the old run was accepted")
	}
	if err := st.Fence("new-run", state.Applying); err == nil {
		t.Fatal("a write expecting another phase was accepted")
	}
	if err := st.Fence("new-run", state.Soaking); err != nil {
		t.Fatalf("the owner's own write was refused: %v", err)
	}
}

// vanishingStore loses the whole state document (someone deleted the
// ConfigMap) once the stage is soaking.
type vanishingStore struct {
	*recordingStore
	gone bool
}

func (v *vanishingStore) Load(ctx context.Context) (*state.State, error) {
	if v.gone {
		return &state.State{}, nil
	}
	return v.recordingStore.Load(ctx)
}

func (v *vanishingStore) Update(ctx context.Context, fn func(*state.State) error) error {
	if v.gone {
		return fn(&state.State{})
	}
	return v.recordingStore.Update(ctx, fn)
}

// TestStateDeletedMidSoakStillEndsRolledBack: the rollback uses the
// snapshot the run holds in memory when the state's record is gone.
func TestStateDeletedMidSoakStillEndsRolledBack(t *testing.T) {
	e := newEnv(t, true)
	vs := &vanishingStore{recordingStore: e.store}
	e.prom = func(q string, ts time.Time) (model.Value, error) {
		if q == "success" && !vs.gone && e.phase() == state.Soaking {
			vs.gone = true
		}
		if q == "success" && vs.gone {
			return model.Vector{&model.Sample{Value: 0.1}}, nil // the stage degrades
		}
		return healthyProm(q, ts)
	}
	res, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) { d.Store = vs })
	var rb *RolledBackError
	if !errors.As(err, &rb) {
		t.Fatalf("err = %v, want rolled back", err)
	}
	if pa := e.policy(); pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE || pa.Annotations["note"] != "x" {
		t.Fatalf("policy not restored: %+v", pa)
	}
	if len(res.Rollback) != 1 || !strings.Contains(res.Rollback[0].Note, "could not record") {
		t.Fatalf("rollback report %+v", res.Rollback)
	}
}

// markCheckingExec checks, at each probe, that the state already marks a
// moment after it: a run killed right then leaves its probes covered.
type markCheckingExec struct {
	fakeExec
	t      *testing.T
	probes int
}

func (m *markCheckingExec) Exec(ctx context.Context, ns, pod, c string, cmd []string) (string, int, error) {
	m.probes++
	s, _ := m.e.store.Load(ctx)
	if mark := s.ProbedAt["cart"]; !mark.After(m.e.clock.now) {
		m.t.Errorf("probe %d at %s with the state's mark at %s: a run killed now would leave its probes looking like a plaintext client", m.probes, m.e.clock.now, mark)
	}
	return m.fakeExec.Exec(ctx, ns, pod, c, cmd)
}

// TestOwnProbesAreMarkedBeforeTheyAreSent: the pre-check and the rollback's
// confirmation probes are covered by the state's probe mark while they run.
func TestOwnProbesAreMarkedBeforeTheyAreSent(t *testing.T) {
	e := newEnv(t, true)
	e.prom = failingSuccessGateAfter(t0.Add(20 * time.Second)) // roll back: confirmation probes too
	ex := &markCheckingExec{fakeExec: fakeExec{e: e}, t: t}
	_, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) { d.Prober.Exec = ex })
	if !IsRolledBack(err) {
		t.Fatalf("err = %v, want rolled back", err)
	}
	if ex.probes < 3 {
		t.Fatalf("%d probes, want the pre-check, the check after the change and the confirmation", ex.probes)
	}
	s, _ := e.store.Load(context.Background())
	if mark := s.ProbedAt["cart"]; mark.After(e.clock.now) {
		t.Errorf("the mark stays in the future (%s, now %s) after the probes ended", mark, e.clock.now)
	}
}
