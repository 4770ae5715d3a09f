package e2e

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
)

// TestE2EStageTargetsDeadEnds: three stages a plan once offered and then
// could not carry out (pre-flight refused, or the stage's own probe rolled
// it back, and a new plan was the same plan). Each must now apply, verify
// to done, and roll back to exactly the objects it found.
func TestE2EStageTargetsDeadEnds(t *testing.T) {
	s := startScenario(t, "dead-ends-stage-targets.yaml", nil)
	p := &product{t: t, bin: buildProduct(t), s: s}
	ctx := context.Background()
	waitTelemetry(t, s, 8*time.Second)
	plan, planPath := p.plan(t.TempDir())
	createStateNamespace(t, s)

	tests := []struct {
		namespace string
		// checkPlan judges the stage as planned, checkApplied the cluster
		// after the stage is done.
		checkPlan    func(*testing.T, plans.Stage)
		checkApplied func(*testing.T, map[string]policySnapshot)
	}{
		{"orders", func(t *testing.T, st plans.Stage) {
			if st.Policy.Metadata.Name != "a-legacy" || !st.Policy.UpdatesExisting || !reflect.DeepEqual(st.Policy.AlsoUpdates, []string{"b-team"}) {
				t.Errorf("policy %+v, want a-legacy (the oldest) updated and b-team too", st.Policy)
			}
		}, func(t *testing.T, after map[string]policySnapshot) {
			for _, name := range []string{"a-legacy", "b-team"} {
				if m := specMode(after[name]); m != "STRICT" {
					t.Errorf("%s is %q after the stage, want STRICT (every namespace-wide policy)", name, m)
				}
			}
			checkStrict(t, s, "orders")
		}},
		{"shop", func(t *testing.T, st plans.Stage) {
			if st.Policy.Metadata.Name != "mtls-migrate-default" || st.Policy.UpdatesExisting {
				t.Errorf("policy %+v, want a new mtls-migrate-default (default is a workload policy)", st.Policy)
			}
		}, func(t *testing.T, after map[string]policySnapshot) {
			if after["mtls-migrate-default"].Labels["app.kubernetes.io/managed-by"] != "mtls-migrate" {
				t.Errorf("mtls-migrate-default after the stage: %+v", after["mtls-migrate-default"])
			}
			checkStrict(t, s, "shop")
		}},
		{"api", func(t *testing.T, st plans.Stage) {
			var refused, answered bool
			for _, pr := range st.Probes {
				refused = refused || (strings.HasSuffix(pr.URL, ":8080/") && pr.Expect.Refused)
				answered = answered || (strings.HasSuffix(pr.URL, ":9090/") && pr.Expect.Status == 200)
				if strings.HasSuffix(pr.URL, ":9090/") && pr.Expect.Refused {
					t.Errorf("probe %s expects the carve-out port 9090 to refuse plaintext", pr.Name)
				}
			}
			if !refused || !answered {
				t.Errorf("probes %+v, want 8080 refused and 9090 answered", st.Probes)
			}
		}, func(t *testing.T, _ map[string]policySnapshot) {
			if out := s.ProbePod(ctx, "api", "api", 8080, false); out == dataplane.OutcomeSuccess {
				t.Errorf("api:8080 accepts plaintext after its stage")
			}
			if out := s.ProbePod(ctx, "api", "api", 8080, true); out != dataplane.OutcomeSuccess {
				t.Errorf("api:8080 refuses mTLS after its stage: %s", out)
			}
			if out := s.ProbePod(ctx, "api", "api", 9090, false); out != dataplane.OutcomeSuccess {
				t.Errorf("the carve-out api:9090 refuses plaintext after the stage: %s", out)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.namespace, func(t *testing.T) {
			p.t = t
			st, ok := stageOf(plan, tc.namespace)
			if !ok || st.Status == plans.StatusBlocked {
				t.Fatalf("stage for %s: %+v (risks %v), want one offered", tc.namespace, st.Status, codes(st))
			}
			tc.checkPlan(t, st)
			before := policies(t, s, tc.namespace)
			modes := effectiveModes(s, tc.namespace)

			s.ResetFlowStats()
			r := p.run(ctx, applyArgs(planPath, st.Number, 10*time.Second)...)
			if r.code != exitDone || !strings.Contains(r.stdout, ": done") {
				t.Fatalf("apply stage %d (%s): %s", st.Number, tc.namespace, r)
			}
			tc.checkApplied(t, policies(t, s, tc.namespace))
			if f := failures(s); len(f) > 0 {
				t.Errorf("flows failed during the stage (ground truth): %v", f)
			}

			r = p.run(ctx, "rollback", "--plan", planPath, "--stage", itoa(st.Number), "--state-namespace", stateNamespace)
			if r.code != exitDone {
				t.Fatalf("rollback stage %d: %s", st.Number, r)
			}
			if got := policies(t, s, tc.namespace); !reflect.DeepEqual(got, before) {
				t.Errorf("PeerAuthentications of %s after the rollback:\n got %v\nwant %v", tc.namespace, got, before)
			}
			if got := effectiveModes(s, tc.namespace); !reflect.DeepEqual(got, modes) {
				t.Errorf("the sidecars of %s enforce %v after the rollback, %v before the stage", tc.namespace, got, modes)
			}
		})
	}
}

func specMode(p policySnapshot) string {
	spec, _ := p.Spec.(map[string]any)
	mtls, _ := spec["mtls"].(map[string]any)
	m, _ := mtls["mode"].(string)
	return m
}

// effectiveModes is what every sidecar of ns enforces per port now.
func effectiveModes(s *sandbox.Sandbox, ns string) map[string]dataplane.Mode {
	out := map[string]dataplane.Mode{}
	for w, ports := range workloadPorts(s, ns) {
		for _, port := range ports {
			m, _ := s.EffectiveMode(ns, w, port)
			out[w+":"+itoa(port)] = m
		}
	}
	return out
}
