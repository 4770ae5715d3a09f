package scale

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	flagPromNamespaces = flag.Int("scale.prom-namespaces", 200, "BenchmarkRealPrometheus: namespaces of the backfilled mesh")
	flagPromFlows      = flag.Int("scale.prom-flows", 10, "BenchmarkRealPrometheus: inbound flows per namespace")
	flagPromRes        = flag.Duration("scale.prom-resolution", 30*time.Second, "BenchmarkRealPrometheus: scrape interval of the backfilled samples")
	flagPromLean       = flag.Bool("scale.prom-lean", true, "BenchmarkRealPrometheus: backfill only the labels the product reads and those that make series unique")
	flagPromPlan       = flag.Bool("scale.prom-plan", true, "BenchmarkRealPrometheus: also run plan and status against it (a cluster holding the same mesh)")
)

// TestE2ESyntheticPrometheusMatchesRealPrometheus backfills a real
// Prometheus with a small world (10 namespaces, 7 days every 5 minutes,
// every label) and checks that the synthetic Prometheus answers the
// product's queries as it does: the same series, the same values up to
// sampling, and the same bytes where the values are exact.
func TestE2ESyntheticPrometheusMatchesRealPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	requireSandbox(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := RunRealPrometheus(ctx, RealPromConfig{
		Namespaces: 10, Flows: 10, Resolution: 5 * time.Minute, End: testEnd, Metrics: metricNames,
		Dir: t.TempDir(), Repeats: 1, Logf: t.Logf,
		While: func(realURL, synthURL string) {
			// Exact values, so the bytes must be the same too.
			for _, q := range []string{`count(istio_build)`, `sum by (namespace, tag) (istio_build{namespace="mesh-0001"}) / 3`, `count by (component) (istio_build{component="pilot"}) * 1e-7`} {
				a, b := rawAnswer(t, realURL, q, testEnd), rawAnswer(t, synthURL, q, testEnd)
				if a != b || !strings.HasPrefix(a, `{"status":"success"`) {
					t.Errorf("%s:\n     real %s\nsynthetic %s", q, a, b)
				}
				t.Logf("%s: %s", q, a)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range r.Queries {
		if q.Err != "" || q.Series == 0 {
			t.Errorf("%s: %d series, error %q", q.Name, q.Series, q.Err)
		}
	}
	for _, d := range r.Differences {
		t.Error(d)
	}
}

// rawAnswer is the body of an instant query.
func rawAnswer(t *testing.T, base, q string, at time.Time) string {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?" + url.Values{"query": {q}, "time": {fmt.Sprint(at.Unix())}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// BenchmarkRealPrometheus times the product's queries against the
// sandbox's real Prometheus holding 7 days of a mesh's Istio series,
// backfilled with promtool; by default 200 namespaces of 10 flows each
// every 30s (about 100M samples, some minutes to generate and backfill):
//
//	cd sandbox && go test ./scale -run '^$' -bench BenchmarkRealPrometheus -benchtime 1x -timeout 2h -scale.dir /tmp/mtls-realprom
//
// It also runs plan and status against that Prometheus, with a cluster
// holding the same mesh (-scale.prom-plan=false skips them).
func BenchmarkRealPrometheus(b *testing.B) {
	requireSandbox(b, true)
	dir := *flagKeep
	if dir == "" {
		dir = b.TempDir()
	} else if err := os.RemoveAll(filepath.Join(dir, "tsdb")); err != nil {
		b.Fatal(err)
	}
	var bin string
	if *flagPromPlan {
		var err error
		if bin, err = BuildProduct(b.TempDir()); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < b.N; i++ {
		r, err := RunRealPrometheus(context.Background(), RealPromConfig{
			Namespaces: *flagPromNamespaces, Flows: *flagPromFlows, Resolution: *flagPromRes, Lean: *flagPromLean,
			Dir: dir, Binary: bin, Logf: b.Logf,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(float64(r.Backfill.Samples)/1e6, "Msamples")
		b.ReportMetric((r.Backfill.Generate + r.Backfill.Promtool).Seconds(), "backfill-s")
		var tbl strings.Builder
		fmt.Fprintf(&tbl, "%-44s %-32s %8s %8s\n", "QUERY", "TIMES (first, then cached)", "SERIES", "MB")
		for k, q := range r.Queries {
			fmt.Fprintf(&tbl, "%-44s %-32s %8d %8.2f %s\n", q.Name, fmt.Sprint(q.Times), q.Series, float64(q.Bytes)/(1<<20), q.Err)
			if len(q.Times) > 0 {
				b.ReportMetric(q.Times[0].Seconds(), fmt.Sprintf("q%d-s", k+1))
			}
		}
		b.Logf("backfill: %s\n%s", r.Backfill, tbl.String())
		for _, d := range r.Differences {
			b.Errorf("synthetic and real Prometheus differ: %s", d)
		}
		if r.Plan != nil {
			b.ReportMetric(r.Plan.Plan.Wall.Seconds(), "plan-wall-s")
			b.ReportMetric(r.Plan.Status.Wall.Seconds(), "status-wall-s")
			b.Logf("plan and status against the real Prometheus:\n%s", FormatTable([]*Result{r.Plan}))
			for _, m := range r.Plan.Mismatches {
				b.Errorf("the plan disagrees with the world: %s", m)
			}
		}
	}
}
