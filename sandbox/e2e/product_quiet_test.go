package e2e

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// TestE2EQuietNamespaceCutOffIsRolledBack: a stage that cuts off every
// client of a quiet namespace once passed. Its rate gate had a baseline,
// then too few samples after the change (Inconclusive), and a gate that is
// never judged never fails: the soak ended "done" with the namespace
// unreachable. The stage here keeps only that gate (a reviewer may trim a
// plan; the plaintext-request-rate gate would catch this case on its own)
// and loosens it, so nothing but the vanishing-traffic rule can see the
// cut-off.
func TestE2EQuietNamespaceCutOffIsRolledBack(t *testing.T) {
	s := startScenario(t, "quiet-namespace.yaml", nil)
	p := &product{t: t, bin: buildProduct(t), s: s}
	ctx := context.Background()
	waitTelemetry(t, s, 12*time.Second)
	plan, planPath := p.plan(t.TempDir())
	createStateNamespace(t, s)

	st, ok := stageOf(plan, "archive")
	if !ok || st.Status != plans.StatusBlocked {
		t.Fatalf("archive stage %+v (risks %v), want blocked by the reader's plaintext", st.Status, codes(st))
	}
	i := st.Number - 1
	var kept []plans.Gate
	for _, g := range plan.Stages[i].Gates {
		if g.Name == "inbound-request-rate" {
			kept = append(kept, g)
		}
	}
	if len(kept) != 1 || kept[0].MinSamples == 0 {
		t.Fatalf("no inbound-request-rate gate with minSamples in %+v", plan.Stages[i].Gates)
	}
	// Loosened as a reviewer might for a bursty namespace (a 90% drop is
	// tolerated): the rate then never falls below the threshold while the
	// gate still has minSamples to judge by, so only the vanishing-traffic
	// rule can fail it. At 0.8 the falling rate fails it first, with or
	// without that rule.
	kept[0].Threshold = 0.1
	plan.Stages[i].Gates = kept
	if err := plans.SaveFile(planPath, plan); err != nil {
		t.Fatal(err)
	}

	old := policies(t, s, "archive")
	s.ResetFlowStats()
	r := p.run(ctx, applyArgs(planPath, st.Number, 40*time.Second, "--force", "--reason", "e2e: cut off every client")...)
	if r.code != exitRolledBack {
		t.Fatalf("a stage that cut off every client: want exit 3 (rolled back), got %s", r)
	}
	if reason := firstLine(r.stdout, "reason:"); !strings.Contains(reason, "inbound-request-rate") || !strings.Contains(reason, "vanished") {
		t.Errorf("the rollback reason does not say the traffic vanished: %q", reason)
	}
	if f := failures(s)["reader-archive"]; len(f) == 0 {
		t.Errorf("the reader was never cut off: the test proves nothing")
	}
	if got := policies(t, s, "archive"); !reflect.DeepEqual(got, old) {
		t.Errorf("archive PeerAuthentications after the rollback:\n got %v\nwant %v", got, old)
	}
}
