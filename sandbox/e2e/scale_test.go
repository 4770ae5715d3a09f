package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scale"
)

// scaleNamespaces is the mesh TestE2EScale plans: 200 namespaces (2,000
// pods and Services, 20,000 flows), or the first size of $MTLS_SCALE_NS.
const scaleNamespaces = 200

// TestE2EScale is the scale benchmark run once (BenchmarkScale in
// ../scale runs it at several sizes): the real kube-apiserver holding a
// 200-namespace mesh, the synthetic Prometheus answering from the same
// world, the built binary's plan and status. It fails when the plan
// disagrees with the world (blocked exactly where plaintext reached a
// namespace in the window) and logs the numbers the issue tracks. It runs
// last (Go runs test files in name order) and stops the shared sandbox
// first, as the product tests do.
func TestE2EScale(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	if _, err := cluster.FindAPIServerBinary(""); err != nil {
		why := "no kube-apiserver binary: run scripts/build-kube-apiserver.sh (" + err.Error() + ")"
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	if shared != nil {
		if err := shared.Stop(); err != nil {
			t.Logf("stop the dataplane tests' sandbox: %v", err)
		}
		shared, why = nil, "stopped: the scale test needed the machine"
	}
	n := scaleNamespaces
	if env := os.Getenv("MTLS_SCALE_NS"); env != "" {
		first, _, _ := strings.Cut(env, ",")
		v, err := strconv.Atoi(strings.TrimSpace(first))
		if err != nil || v < 1 {
			t.Fatalf("MTLS_SCALE_NS=%q: want a positive number of namespaces", env)
		}
		n = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r, err := scale.Run(ctx, scale.Config{Namespaces: n, Binary: buildProduct(t), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", scale.FormatTable([]*scale.Result{r}))
	for _, m := range r.Mismatches {
		t.Errorf("the plan disagrees with the world: %s", m)
	}
	if r.Checked != n {
		t.Errorf("checked %d namespaces' stages, want %d", r.Checked, n)
	}
	// Issue 11's goal: a fixed number of queries whatever the size.
	if r.PlanProm.Queries > 6 {
		t.Errorf("plan sent %d Prometheus queries, want at most 6", r.PlanProm.Queries)
	}
}
