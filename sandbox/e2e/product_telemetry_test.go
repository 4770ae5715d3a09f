package e2e

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/sandbox/prometheus"
)

// exitRefused is mtls-migrate's exit code for a stage refused before any
// change (CONVENTIONS.md: bad usage or invalid input, nothing touched).
const exitRefused = 2

// TestE2EEmptyPrometheusIsRefusedBeforeAnyChange: a stage run against a
// Prometheus that answers every query with nothing (here a second, fresh
// Prometheus with no targets; a wrong tenant or relabelled metrics look the
// same) is refused before any change, although the plan, made against the
// sandbox's Prometheus, saw traffic into the namespace. Without the check
// the plaintext check reads "none", every baseline is empty, every gate
// stays Inconclusive and the stage ends "done", verified by nothing.
func TestE2EEmptyPrometheusIsRefusedBeforeAnyChange(t *testing.T) {
	s := startScenario(t, "trap-nightly-batch.yaml", nil)
	p := &product{t: t, bin: buildProduct(t), s: s}
	waitTelemetry(t, s, 5*time.Second)
	plan, planPath := p.plan(t.TempDir())
	st, ok := stageOf(plan, "billing")
	if !ok {
		t.Fatal("no stage for billing")
	}
	if st.Evidence.MTLSRequestRate <= 0 {
		t.Fatalf("the plan saw no traffic into billing (evidence %+v): nothing to test", st.Evidence)
	}
	createStateNamespace(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	empty, err := prometheus.Start(ctx, prometheus.Options{ScrapeInterval: time.Second})
	if err != nil {
		t.Fatalf("start an empty Prometheus: %v", err)
	}
	t.Cleanup(func() {
		if err := empty.Stop(); err != nil {
			t.Errorf("stop the empty Prometheus: %v", err)
		}
	})

	before, rvs := policies(t, s, "billing"), resourceVersions(t, s, "billing")
	s.ResetFlowStats()
	// --force: billing may be blocked by the nightly client's CronJob; a
	// forced stage must be refused all the same (no reason makes a blind
	// check see).
	p.promURL = empty.URL()
	r := p.run(ctx, applyArgs(planPath, st.Number, 20*time.Second, "--force", "--reason", "e2e: an empty Prometheus")...)
	out := r.stdout + r.stderr
	if r.code != exitRefused {
		t.Fatalf("apply against an empty Prometheus: want exit %d (refused), got %s", exitRefused, r)
	}
	for _, want := range []string{
		`the plan saw traffic into namespace "billing"`,
		"Prometheus has no Istio series for it now",
		`count(istio_requests_total{reporter="destination",destination_workload_namespace="billing"})`,
		"--prometheus-url", "X-Scope-OrgID",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, r)
		}
	}
	if strings.Contains(r.stdout, ": done") {
		t.Errorf("a refused stage printed done:\n%s", r)
	}
	// Ground truth: nothing changed. The objects are the same versions, the
	// sidecars still accept plaintext, and no flow failed.
	if got := policies(t, s, "billing"); !reflect.DeepEqual(got, before) {
		t.Errorf("billing PeerAuthentications after the refusal: %v, want %v", got, before)
	}
	if got := resourceVersions(t, s, "billing"); !reflect.DeepEqual(got, rvs) {
		t.Errorf("billing resourceVersions after the refusal: %v, want %v", got, rvs)
	}
	checkPermissive(t, s, "billing")
	if f := failures(s); len(f) > 0 {
		t.Errorf("flows failed (ground truth): %v", f)
	}

	// The same stage against the sandbox's Prometheus is not refused for
	// its telemetry: the refusal came from the empty one.
	p.promURL = ""
	r = p.run(ctx, append(applyArgs(planPath, st.Number, 20*time.Second, "--force", "--reason", "e2e: control"), "--dry-run=server")...)
	if r.code != exitDone {
		t.Errorf("dry run against the sandbox's Prometheus: want exit 0, got %s", r)
	}
}
