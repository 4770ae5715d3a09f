package executor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	applyv1 "istio.io/client-go/pkg/applyconfiguration/security/v1"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

var errDead = errors.New("the process was killed")

// dyingStore simulates a SIGKILL: once a write matching dieAfter is
// persisted, nothing the run does afterwards reaches the cluster (state
// writes and policy writes fail).
type dyingStore struct {
	state.Store
	dieAfter func(*state.StageState) bool
	dead     bool
}

func (s *dyingStore) Update(ctx context.Context, fn func(*state.State) error) error {
	if s.dead {
		return errDead
	}
	return s.Store.Update(ctx, func(st *state.State) error {
		if err := fn(st); err != nil {
			return err
		}
		if p := st.Current(); p != nil && len(p.Stages) > 0 && s.dieAfter(&p.Stages[0]) {
			s.dead = true
		}
		return nil
	})
}

type dyingWriter struct {
	PolicyWriter
	s *dyingStore
}

func (w dyingWriter) Apply(ctx context.Context, cfg *applyv1.PeerAuthenticationApplyConfiguration, dry bool) (*securityv1.PeerAuthentication, error) {
	if w.s.dead {
		return nil, errDead
	}
	return w.PolicyWriter.Apply(ctx, cfg, dry)
}

func (w dyingWriter) Create(ctx context.Context, pa *securityv1.PeerAuthentication, dry bool) (*securityv1.PeerAuthentication, error) {
	if w.s.dead {
		return nil, errDead
	}
	return w.PolicyWriter.Create(ctx, pa, dry)
}

func crashAt(phase state.Phase, applied bool) func(*state.StageState) bool {
	return func(st *state.StageState) bool {
		return st.Phase == phase && (st.Target != nil && st.Target.UID != "") == applied
	}
}

func failingSuccessGateAfter(at time.Time) func(string, time.Time) (model.Value, error) {
	return func(q string, ts time.Time) (model.Value, error) {
		if ts.After(at) && q == "success" {
			return model.Vector{&model.Sample{Value: 0.1}}, nil
		}
		return healthyProm(q, ts)
	}
}

func TestResumeAfterACrashNeverLeavesTheChangeUnverified(t *testing.T) {
	tests := []struct {
		name        string
		crash       func(*state.StageState) bool
		failingGate bool // the first run's soak fails (to crash during the rollback)
		resumeProm  func(string, time.Time) (model.Value, error)
		forgetPlan  bool
		wantPhase   state.Phase
		wantMode    apisecurity.PeerAuthentication_MutualTLS_Mode
		wantErr     bool
	}{
		{name: "after the snapshot: back to pending, nothing changed", crash: crashAt(state.Applying, false),
			wantPhase: state.Pending, wantMode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE},
		{name: "after the apply: verified and done", crash: crashAt(state.Applying, true),
			wantPhase: state.Done, wantMode: apisecurity.PeerAuthentication_MutualTLS_STRICT},
		{name: "during the soak: fresh soak, done", crash: crashAt(state.Soaking, true),
			wantPhase: state.Done, wantMode: apisecurity.PeerAuthentication_MutualTLS_STRICT},
		{name: "during the soak, unhealthy on resume: rolled back", crash: crashAt(state.Soaking, true),
			resumeProm: failingSuccessGateAfter(time.Time{}),
			wantPhase:  state.RolledBack, wantMode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, wantErr: true},
		{name: "during the rollback: rollback finished", crash: crashAt(state.RollingBack, true), failingGate: true,
			wantPhase: state.RolledBack, wantMode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, wantErr: true},
		{name: "plan changed since: rolled back from the state alone", crash: crashAt(state.Soaking, true), forgetPlan: true,
			wantPhase: state.RolledBack, wantMode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			if tt.failingGate {
				e.prom = failingSuccessGateAfter(t0.Add(20 * time.Second))
			}
			ds := &dyingStore{Store: e.store, dieAfter: tt.crash}
			// A killed process reaches nothing: after the crash point every
			// API call of the first run fails too (its rollback included).
			firstRun := true
			e.istio.PrependReactor("*", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
				if ds.dead && firstRun {
					return true, nil, errDead
				}
				return false, nil, nil
			})
			_, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) {
				d.Store = ds
				d.Writer = dyingWriter{PolicyWriter: d.Writer, s: ds}
			})
			if !ds.dead {
				t.Fatalf("the crash point was never reached (err %v)", err)
			}
			if e.phase() != state.Applying && e.phase() != state.Soaking && e.phase() != state.RollingBack {
				t.Fatalf("after the crash the stage is %s", e.phase())
			}
			// The next run: a healthy (or the given) Prometheus, a fresh clock.
			firstRun = false
			e.prom = healthyProm
			if tt.resumeProm != nil {
				e.prom = tt.resumeProm
			}
			e.clock.now = e.clock.now.Add(5 * time.Minute)
			var res *Result
			e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, o *Options) {
				ro := *o
				if tt.forgetPlan {
					ro.Plan = nil
				}
				res, err = Resume(context.Background(), *d, ro)
				// The run that follows is refused (nothing is left in
				// progress only if the resume ended the stage); its result
				// is ignored.
				o.DryRun = true
			})
			if res == nil {
				t.Fatalf("no result: %v", err)
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("resume error %v, want error %v", err, tt.wantErr)
			}
			if e.phase() != tt.wantPhase {
				t.Fatalf("phase %s, want %s", e.phase(), tt.wantPhase)
			}
			pa := e.policy()
			if pa.Spec.GetMtls().GetMode() != tt.wantMode || pa.UID != "uid-old" || pa.Labels["team"] != "cart" || pa.Annotations["note"] != "x" {
				t.Fatalf("policy %+v", pa)
			}
			if tt.wantPhase == state.RolledBack && len(pa.Annotations) != 1 {
				t.Fatalf("annotations not restored exactly: %v", pa.Annotations)
			}
			if tt.wantPhase == state.Pending {
				// The stage can then run afresh.
				if _, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), nil); err != nil || e.phase() != state.Done {
					t.Fatalf("fresh run after pending: %v, phase %s", err, e.phase())
				}
			}
		})
	}
}

// TestResumedRunRechecksEveryPolicyTheStageWrote: before done, a resumed
// run re-reads the other namespace-wide policies the stage wrote
// (policy.alsoUpdates) as a fresh run does, not only the one Istio uses.
func TestResumedRunRechecksEveryPolicyTheStageWrote(t *testing.T) {
	tests := []struct {
		name       string
		changed    string // the policy someone sets back to PERMISSIVE during the resumed soak
		wantPhase  state.Phase
		wantReason string
	}{
		{name: "the other namespace-wide policy changed", changed: "team", wantPhase: state.Failed, wantReason: "PeerAuthentication cart/team was changed during the soak"},
		{name: "the policy Istio uses changed", changed: "default", wantPhase: state.Failed, wantReason: "PeerAuthentication cart/default was changed during the soak"},
		{name: "nothing changed", wantPhase: state.Done},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, true)
			if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Create(ctx, teamPolicy(), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			plan := func() *plans.Plan {
				p := testPlan(true, policyDigest(existingPolicy(), teamPolicy()))
				p.Stages[0].Policy.AlsoUpdates = []string{"team"}
				return p
			}
			ds := &dyingStore{Store: e.store, dieAfter: crashAt(state.Soaking, true)}
			firstRun := true
			e.istio.PrependReactor("*", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
				if ds.dead && firstRun {
					return true, nil, errDead
				}
				return false, nil, nil
			})
			e.run(plan(), func(d *Deps, _ *Options) {
				d.Store = ds
				d.Writer = dyingWriter{PolicyWriter: d.Writer, s: ds}
			})
			if !ds.dead || e.phase() != state.Soaking {
				t.Fatalf("the first run did not die soaking (phase %s)", e.phase())
			}
			firstRun = false
			e.clock.now = e.clock.now.Add(5 * time.Minute)
			ticks := 0
			e.prom = func(q string, ts time.Time) (model.Value, error) {
				if q == "success" && e.phase() == state.Soaking && tt.changed != "" {
					if ticks++; ticks == 2 {
						pa, err := e.istio.SecurityV1().PeerAuthentications("cart").Get(ctx, tt.changed, metav1.GetOptions{})
						if err != nil {
							t.Fatal(err)
						}
						pa.Spec.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE
						pa.ResourceVersion = "99"
						if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Update(ctx, pa, metav1.UpdateOptions{}); err != nil {
							t.Fatal(err)
						}
					}
				}
				return healthyProm(q, ts)
			}
			var res *Result
			var err error
			e.run(plan(), func(d *Deps, o *Options) {
				res, err = Resume(ctx, *d, *o)
				o.DryRun = true
			})
			if e.phase() != tt.wantPhase {
				t.Fatalf("phase %s, want %s (err %v)", e.phase(), tt.wantPhase, err)
			}
			if tt.wantReason == "" {
				if err != nil || res.Outcome != OutcomeDone {
					t.Fatalf("outcome %s, %v", res.Outcome, err)
				}
				return
			}
			var nv *NotVerifiedError
			if !errors.As(err, &nv) || !strings.Contains(nv.Reason, tt.wantReason) {
				t.Fatalf("err = %v, want a NotVerifiedError saying %q", err, tt.wantReason)
			}
			if pa, _ := e.istio.SecurityV1().PeerAuthentications("cart").Get(ctx, tt.changed, metav1.GetOptions{}); pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE {
				t.Errorf("%s is %s: their change was not left alone", tt.changed, pa.Spec.GetMtls().GetMode())
			}
		})
	}
}
