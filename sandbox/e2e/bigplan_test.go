package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// bigPlanStages is how many stages TestE2EApplyNextFromAPublishedPlanOf2000Stages
// puts before the real ones: the 2,000-namespace mesh.
const bigPlanStages = 2000

// TestE2EApplyNextFromAPublishedPlanOf2000Stages: the scheduled Job's path
// at the scale, through the real API server and the real store
// code. A plan of 2,000 stages (copies of a real stage of this cluster,
// each on its own namespace, with the real stages after them) is published
// with `plan publish`; the state records 2,000 of them done, as full
// records (snapshot, target, baselines, gate values, history); then
// `apply --next` reads the plan from its ConfigMaps and the state, skips
// the 2,000 done stages and carries out the first real one to done. Every
// ConfigMap written stays under the store's limit, and the root (the one
// object that grows with the number of stages' shards) leaves room for
// 10,000 namespaces.
func TestE2EApplyNextFromAPublishedPlanOf2000Stages(t *testing.T) {
	s := startScenario(t, "trap-existing-policy.yaml", meshedOnly)
	createStateNamespace(t, s)
	p := &product{t: t, bin: buildProduct(t), s: s}
	ctx := context.Background()
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	waitTelemetry(t, s, 10*time.Second)
	real, _ := p.plan(t.TempDir())
	first, ok := stageOf(real, "inventory")
	if !ok || first.Status == plans.StatusBlocked {
		t.Fatalf("inventory has no ready stage (risks %v)", codes(first))
	}

	big := *real
	big.Stages = nil
	for i := 0; i < bigPlanStages; i++ {
		big.Stages = append(big.Stages, renamed(t, first, fmt.Sprintf("bulk-%04d", i), i+1))
	}
	next := first
	next.Number = bigPlanStages + 1
	big.Stages = append(big.Stages, next)
	dir := t.TempDir()
	planPath := filepath.Join(dir, "big.yaml")
	saved, digest := savePlan(t, planPath, &big)

	source := "configmap:" + stateNamespace + "/big-plan"
	r := p.run(ctx, "plan", "publish", "--plan", planPath, "--to", source)
	if r.code != 0 {
		t.Fatalf("plan publish of %d stages: %s", len(big.Stages), r)
	}
	t.Logf("publish: %s (%s)", strings.TrimSpace(r.stdout), r.took.Round(time.Millisecond))

	// 2,000 done records, written by the store in one update (new shards
	// first, the root last), then one more update of a single shard, as a
	// run does.
	store := state.NewConfigMapStore(kc, stateNamespace)
	began := time.Now()
	if err := store.Update(ctx, func(st *state.State) error {
		rec := st.EnsurePlan(big.Metadata.Name, digest, began)
		for i := 0; i < bigPlanStages; i++ {
			if err := doneRecord(rec.EnsureStage(i+1, saved.Stages[i].Namespace), &saved.Stages[i], began); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("write %d done stages: %v", bigPlanStages, err)
	}
	t.Logf("%d done records written in %s", bigPlanStages, time.Since(began).Round(time.Millisecond))

	r = p.run(ctx, "apply", "--next", "--plan", source, "--state-namespace", stateNamespace,
		"--soak", "12s", "--settle", "3s", "--gate-interval", "2s", "--probe-retry", "10s")
	t.Logf("apply --next: exit %d in %s\n%s", r.code, r.took.Round(time.Millisecond), tail(r.stdout+r.stderr, 12))
	if r.code != exitDone {
		t.Fatalf("apply --next from the published %d-stage plan: %s", len(big.Stages), r)
	}
	st, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec := st.Plan(digest)
	if rec == nil || rec.Stage(next.Number) == nil || rec.Stage(next.Number).Phase != state.Done {
		t.Fatalf("stage %d after apply --next: %+v", next.Number, rec.Stage(next.Number))
	}
	checkStrict(t, s, "inventory")
	done := 0
	for _, ss := range rec.Stages {
		if ss.Phase == state.Done {
			done++
		}
	}
	if done != bigPlanStages+1 {
		t.Errorf("%d stages done in the state, want %d", done, bigPlanStages+1)
	}

	// Sizes: every object under the store's limit; the root, which names a
	// shard per group of stages, must have room for 10,000 namespaces.
	cms, err := kc.CoreV1().ConfigMaps(stateNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var total, largest int
	var root int
	for i := range cms.Items {
		n := state.ObjectBytes(&cms.Items[i])
		total += n
		largest = max(largest, n)
		if cms.Items[i].Name == state.ConfigMapName {
			root = n
		}
		if n > state.MaxObjectBytes {
			t.Errorf("ConfigMap %s holds %d KiB, over the store's %d KiB", cms.Items[i].Name, n>>10, state.MaxObjectBytes>>10)
		}
	}
	if root == 0 {
		t.Fatal("no state root ConfigMap")
	}
	perStage := float64(root) / float64(bigPlanStages+1)
	at10k := perStage * 10000
	t.Logf("%d ConfigMaps in %s, %d KiB in all; largest %d KiB; state root %d KiB (%.0f B a stage: %.0f KiB at 10,000 stages)",
		len(cms.Items), stateNamespace, total>>10, largest>>10, root>>10, perStage, at10k/1024)
	if at10k > float64(state.MaxObjectBytes) {
		t.Errorf("the state root grows %.0f B a stage: %.0f KiB at 10,000 stages, over %d KiB", perStage, at10k/1024, state.MaxObjectBytes>>10)
	}
}

// renamed is stage st moved onto namespace ns as stage number n: its
// policy, probes and gates name ns instead.
func renamed(t *testing.T, st plans.Stage, ns string, n int) plans.Stage {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.ReplaceAll(string(b), `"`+st.Namespace+`"`, `"`+ns+`"`))
	b = []byte(strings.ReplaceAll(string(b), `\"`+st.Namespace+`\"`, `\"`+ns+`\"`))
	var out plans.Stage
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	out.Number = n
	return out
}

// doneRecord fills ss as a run leaves a done stage: the snapshot of one
// policy, the target, a baseline and a final value per gate, the history.
func doneRecord(ss *state.StageState, st *plans.Stage, at time.Time) error {
	snap, err := json.Marshal(map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
		"metadata": map[string]any{"name": "default", "namespace": st.Namespace, "uid": "00000000-0000-0000-0000-000000000000", "resourceVersion": "12345"},
		"spec":     map[string]any{"mtls": map[string]any{"mode": "PERMISSIVE"}},
	})
	if err != nil {
		return err
	}
	for _, ph := range []state.Phase{state.Applying, state.Soaking, state.Done} {
		if err := ss.Move(ph, at, ""); err != nil {
			return err
		}
	}
	ss.TargetMode, ss.StartedAt, ss.FinishedAt = string(st.TargetMode), at, at
	ss.Snapshot = []json.RawMessage{snap}
	ss.Target = &state.Target{Name: "default", UID: "11111111-1111-1111-1111-111111111111", ResourceVersion: "12346", Mode: string(st.TargetMode)}
	ss.PolicyDigest = st.PolicyDigest
	for _, g := range st.Gates {
		v, th, n := 0.999, g.Threshold, 1200.0
		ss.Baseline = append(ss.Baseline, state.GateValue{Name: g.Name, Verdict: "pass", Value: &v, Threshold: &th, Samples: &n, At: at})
		ss.Gates = append(ss.Gates, state.GateValue{Name: g.Name, Verdict: "pass", Value: &v, Threshold: &th, Samples: &n, At: at})
	}
	return nil
}
