package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// TestE2EDisableNamespaceGoesPermissiveThenStrictFromOnePlan: a namespace
// that is DISABLE today gets a PERMISSIVE stage and a later STRICT stage
// in one plan (policyDigest after-stage:N); both apply, in order, from that
// plan, and the client never fails (ground truth). The STRICT stage
// refuses before the PERMISSIVE one is done.
func TestE2EDisableNamespaceGoesPermissiveThenStrictFromOnePlan(t *testing.T) {
	s := startScenario(t, "disable-namespace-two-stages.yaml", nil)
	p := &product{t: t, bin: buildProduct(t), s: s}
	ctx := context.Background()
	waitTelemetry(t, s, 8*time.Second)
	plan, planPath := p.plan(t.TempDir())
	createStateNamespace(t, s)

	var permissive, strict *plans.Stage
	for i := range plan.Stages {
		st := &plan.Stages[i]
		switch {
		case st.Namespace != "legacy":
		case st.TargetMode == plans.ModePermissive:
			permissive = st
		case st.TargetMode == plans.ModeStrict:
			strict = st
		}
	}
	if permissive == nil || strict == nil || permissive.Number >= strict.Number {
		t.Fatalf("want a PERMISSIVE then a STRICT stage for legacy, got %+v and %+v", permissive, strict)
	}
	if permissive.Status == plans.StatusBlocked || strict.Status == plans.StatusBlocked {
		t.Fatalf("stages %d (%s) and %d (%s, risks %v): want both offered", permissive.Number, permissive.Status, strict.Number, strict.Status, codes(*strict))
	}
	if want := plans.AfterStage(permissive.Number); strict.PolicyDigest != want {
		t.Fatalf("STRICT stage policyDigest %q, want %q", strict.PolicyDigest, want)
	}

	r := p.run(ctx, applyArgs(planPath, strict.Number, 5*time.Second)...)
	if r.code != exitRefused || !strings.Contains(r.stderr, "apply stage "+itoa(permissive.Number)+" first") {
		t.Fatalf("STRICT stage before the PERMISSIVE one: %s", r)
	}

	s.ResetFlowStats()
	r = p.run(ctx, applyArgs(planPath, permissive.Number, 10*time.Second)...)
	if r.code != exitDone || !strings.Contains(r.stdout, ": done") {
		t.Fatalf("apply stage %d (PERMISSIVE): %s", permissive.Number, r)
	}
	// Auto mTLS now sends the meshed client mTLS; give the counters a few
	// scrapes to settle before the STRICT stage looks for plaintext.
	time.Sleep(3 * time.Second)
	r = p.run(ctx, applyArgs(planPath, strict.Number, 10*time.Second)...)
	if r.code != exitDone || !strings.Contains(r.stdout, ": done") {
		t.Fatalf("apply stage %d (STRICT) from the same plan: %s", strict.Number, r)
	}
	checkStrict(t, s, "legacy")
	if f := failures(s); len(f) > 0 {
		t.Errorf("flows failed during the stages (ground truth): %v", f)
	}
}
