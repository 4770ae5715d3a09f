package executor

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	apisecurity "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// disablePolicy is cart's namespace-wide policy, DISABLE today.
func disablePolicy() *securityv1.PeerAuthentication {
	pa := existingPolicy()
	pa.Spec.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_DISABLE
	return pa
}

// twoStepPlan is what the planner writes for a namespace that is DISABLE
// today: stage 1 to PERMISSIVE (its digest: today's policies), stage 2 to
// STRICT starting from exactly what stage 1 leaves.
func twoStepPlan() *plans.Plan {
	p := testPlan(true, policyDigest(disablePolicy()))
	permissive := p.Stages[0]
	permissive.CurrentMode, permissive.TargetMode = plans.ModeDisable, plans.ModePermissive
	permissive.Policy.Spec.MTLS.Mode = plans.ModePermissive
	permissive.Probes = []plans.Probe{{Name: "plaintext-answered", Kind: plans.ProbeExec, URL: "http://cartservice.cart:7070/", Pod: "cart/cart-1", Expect: plans.Expect{Status: 200}}}
	strict := p.Stages[0]
	strict.Number, strict.PolicyDigest = 2, plans.AfterStage(1)
	p.Stages = []plans.Stage{permissive, strict}
	return p
}

func stageRecord(t *testing.T, e *env, digest string, n int) *state.StageState {
	t.Helper()
	s, err := e.store.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Plan(digest) == nil {
		return nil
	}
	return s.Plan(digest).Stage(n)
}

// TestDisableNamespaceGoesPermissiveThenStrictWithoutANewPlan: the STRICT
// stage of a namespace that is DISABLE today applies from the same plan once
// its PERMISSIVE stage is done, and only while the namespace's
// PeerAuthentications are exactly what that stage left.
func TestDisableNamespaceGoesPermissiveThenStrictWithoutANewPlan(t *testing.T) {
	ctx := context.Background()
	editedBy := func(e *env, name string, edit func(*securityv1.PeerAuthentication)) {
		pa, err := e.istio.SecurityV1().PeerAuthentications("cart").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		edit(pa)
		at := metav1.NewTime(e.clock.now)
		pa.ManagedFields = append(pa.ManagedFields, metav1.ManagedFieldsEntry{Manager: "kubectl-edit", Operation: metav1.ManagedFieldsOperationUpdate, Time: &at})
		if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Update(ctx, pa, metav1.UpdateOptions{}); err != nil {
			e.t.Fatal(err)
		}
	}
	workloadPolicy := func(e *env) {
		pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "redis-open", Namespace: "cart", UID: "uid-redis",
			CreationTimestamp: metav1.NewTime(e.clock.now.Add(time.Second))}}
		pa.Spec.Mtls = &apisecurity.PeerAuthentication_MutualTLS{Mode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE}
		pa.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "redis-cart"}}
		if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Create(ctx, pa, metav1.CreateOptions{}); err != nil {
			e.t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		// skipFirst: stage 2 is run without stage 1.
		skipFirst bool
		// duringFirstSoak runs during stage 1's soak; between runs after it.
		duringFirstSoak, between func(*env)
		// firstDigest is the plan digest stage 1 runs under (default
		// sha256:p); another one is carried over as `apply --next --replan`
		// does.
		firstDigest string
		wantDone    bool
		wantRefusal []string
	}{
		{name: "stage 1 done, nothing else changed: stage 2 applies", wantDone: true},
		{name: "stage 1 done under the previous plan, carried over by --replan", firstDigest: "sha256:old", wantDone: true},
		{name: "stage 1 not applied yet", skipFirst: true,
			wantRefusal: []string{"stage 2 (cart) starts from what stage 1 of this plan leaves", "stage 1 is pending", "apply stage 1 first"}},
		{name: "the policy was edited after stage 1",
			between: func(e *env) {
				editedBy(e, "default", func(pa *securityv1.PeerAuthentication) { pa.Labels["team"] = "payments" })
			},
			wantRefusal: []string{`PeerAuthentications in "cart" changed since stage 1 left them`, "modified default (by kubectl-edit"}},
		{name: "a workload policy was added during stage 1's soak",
			duringFirstSoak: workloadPolicy,
			wantRefusal:     []string{"changed since stage 1 left them", "added redis-open"}},
		{name: "stage 1 recorded done by a version that kept no digest",
			between: func(e *env) {
				if err := e.store.Update(ctx, func(s *state.State) error {
					s.Plan("sha256:p").Stage(1).PolicyDigest = ""
					return nil
				}); err != nil {
					e.t.Fatal(err)
				}
			},
			wantRefusal: []string{"recorded done without the digest", "re-run plan"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, false)
			if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Create(ctx, disablePolicy(), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			p := twoStepPlan()
			first := tt.firstDigest
			if first == "" {
				first = "sha256:p"
			}
			soaking := false
			e.prom = func(q string, ts time.Time) (model.Value, error) {
				if q == "success" && tt.duringFirstSoak != nil && !soaking {
					if st := stageRecord(t, e, first, 1); st != nil && st.Phase == state.Soaking {
						soaking = true
						tt.duringFirstSoak(e)
					}
				}
				return healthyProm(q, ts)
			}
			if !tt.skipFirst {
				res, err, _ := e.run(p, func(_ *Deps, o *Options) { o.Stage, o.PlanDigest = 1, first })
				if err != nil || res.Outcome != OutcomeDone {
					t.Fatalf("stage 1: outcome %s, %v", res.Outcome, err)
				}
				if got := e.policy().Spec.GetMtls().GetMode(); got != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE {
					t.Fatalf("after stage 1 the policy is %s, want PERMISSIVE", got)
				}
				if st := stageRecord(t, e, first, 1); st.PolicyDigest == "" {
					t.Fatalf("stage 1 was recorded done without the digest of what it left: %+v", st)
				}
			}
			if first != "sha256:p" {
				if err := e.store.Update(ctx, func(s *state.State) error {
					old := *s.Plan(first)
					CarryOver(&old, s.EnsurePlan("p", "sha256:p", e.clock.now), p, e.clock.now)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
			if tt.between != nil {
				tt.between(e)
			}
			before := e.policy()
			res, err, w := e.run(p, func(_ *Deps, o *Options) { o.Stage = 2 })
			if tt.wantDone {
				if err != nil || res.Outcome != OutcomeDone {
					t.Fatalf("stage 2: outcome %s, %v", res.Outcome, err)
				}
				if got := e.policy().Spec.GetMtls().GetMode(); got != apisecurity.PeerAuthentication_MutualTLS_STRICT {
					t.Fatalf("after stage 2 the policy is %s, want STRICT", got)
				}
				if st := stageRecord(t, e, "sha256:p", 2); st == nil || st.Phase != state.Done {
					t.Fatalf("stage 2 record %+v, want done", st)
				}
				return
			}
			if !IsRefused(err) {
				t.Fatalf("stage 2: err = %v, want a refusal", err)
			}
			for _, want := range tt.wantRefusal {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("refusal %q lacks %q", err, want)
				}
			}
			if len(w.dry) != 0 || e.policy().ResourceVersion != before.ResourceVersion {
				t.Errorf("a refused stage wrote the policy")
			}
		})
	}
}
