package scale

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
)

var (
	flagNamespaces  = flag.String("scale.namespaces", "", "comma-separated mesh sizes in namespaces for BenchmarkScale (default $MTLS_SCALE_NS, else 20,200)")
	flagBaseline    = flag.Bool("scale.baseline", false, "also load each size as the sandbox's scenario loader does (one request at a time, JSON, 200 QPS), in a cluster of its own, to compare")
	flagBaselineFor = flag.Duration("scale.baseline-deadline", 0, "stop the baseline load after this long (0: let it finish); its rate is then that of the part written")
	flagKeep        = flag.String("scale.dir", "", "keep the plans, logs and stderr of each size under this directory")
)

// Sizes reads -scale.namespaces, else $MTLS_SCALE_NS, else def.
func Sizes(flagValue, def string) ([]int, error) {
	s := flagValue
	if s == "" {
		s = os.Getenv("MTLS_SCALE_NS")
	}
	if s == "" {
		s = def
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("mesh size %q: want a positive number of namespaces", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// requireSandbox skips (or, with CI=true, fails) when the apiserver binary
// is missing.
func requireSandbox(tb testing.TB, promtool bool) {
	tb.Helper()
	why := ""
	if _, err := cluster.FindAPIServerBinary(""); err != nil {
		why = "no kube-apiserver binary: run scripts/build-kube-apiserver.sh (" + err.Error() + ")"
	}
	if promtool {
		for _, bin := range []string{"prometheus", "promtool"} {
			if _, err := exec.LookPath(bin); err != nil {
				why = "no " + bin + " on PATH: run scripts/install-prometheus.sh"
			}
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal(why)
	}
	tb.Skip(why)
}

// BenchmarkScale runs the built binary's plan and status against the real
// kube-apiserver holding a synthetic mesh and the synthetic Prometheus
// answering from the same world, at each size of -scale.namespaces:
//
//	cd sandbox && go test ./scale -run '^$' -bench BenchmarkScale -benchtime 1x -timeout 2h -scale.namespaces 20,200,2000 -scale.baseline
//
// One iteration is one whole run (a cluster, a load, plan, status); the
// metrics are those of plan (wall-s, maxrss-MB, prom-MB: the Prometheus
// answers' JSON, plan-MB) and status, and the load's.
func BenchmarkScale(b *testing.B) {
	requireSandbox(b, false)
	sizes, err := Sizes(*flagNamespaces, "20,200")
	if err != nil {
		b.Fatal(err)
	}
	bin, err := BuildProduct(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	var results []*Result
	for _, n := range sizes {
		b.Run(fmt.Sprintf("namespaces=%d", n), func(b *testing.B) {
			var r *Result
			for i := 0; i < b.N; i++ {
				c := Config{Namespaces: n, Binary: bin, Logf: b.Logf}
				if *flagBaseline {
					base := Baseline
					base.Deadline = *flagBaselineFor
					c.Baseline = &base
				}
				if *flagKeep != "" {
					c.Dir = fmt.Sprintf("%s/ns-%d", *flagKeep, n)
				}
				if r, err = Run(context.Background(), c); err != nil {
					b.Fatal(err)
				}
				for _, m := range r.Mismatches {
					b.Errorf("plan disagrees with the world: %s", m)
				}
			}
			report(b, r)
			results = append(results, r)
		})
	}
	b.Logf("\n%s", FormatTable(results))
}

func report(b *testing.B, r *Result) {
	b.ReportMetric(0, "ns/op") // one op is a whole run, cluster and load included
	b.ReportMetric(r.Plan.Wall.Seconds(), "wall-s")
	b.ReportMetric(r.PlanReplayed.Wall.Seconds(), "replayed-wall-s")
	b.ReportMetric(r.StatusInCluster.Wall.Seconds(), "status-job-wall-s")
	b.ReportMetric(float64(r.Plan.MaxRSS)/(1<<20), "maxrss-MB")
	b.ReportMetric(mb(r.PlanProm.JSONBytes), "prom-MB")
	b.ReportMetric(mb(r.PlanBytes), "plan-MB")
	b.ReportMetric(r.Status.Wall.Seconds(), "status-wall-s")
	b.ReportMetric(float64(r.Status.MaxRSS)/(1<<20), "status-maxrss-MB")
	b.ReportMetric(float64(r.State.DataBytes), "state-B")
	b.ReportMetric(r.Load.Took.Seconds(), "load-s")
	b.ReportMetric(r.Load.ServicesPerSec, "load-svc/s")
	if r.Baseline != nil {
		b.ReportMetric(r.Baseline.ServicesPerSec, "baseline-svc/s")
	}
}

// BenchmarkLoad compares ways of writing the world into a fresh API server,
// one change at a time from the sandbox's scenario loader to Fast:
//
//	cd sandbox && go test ./scale -run '^$' -bench BenchmarkLoad -benchtime 1x -scale.namespaces 200
func BenchmarkLoad(b *testing.B) {
	requireSandbox(b, false)
	sizes, err := Sizes(*flagNamespaces, "200")
	if err != nil {
		b.Fatal(err)
	}
	variants := []struct {
		name string
		o    LoadOptions
	}{
		{"baseline", Baseline},
		{"workers=16,qps=200", LoadOptions{Workers: 16, QPS: 200, Burst: 400}},
		{"workers=16,no-qps", LoadOptions{Workers: 16, QPS: -1}},
		{"workers=16,no-qps,protobuf", LoadOptions{Workers: 16, QPS: -1, Protobuf: true}},
		{"workers=16,no-qps,protobuf,status-patch", LoadOptions{Workers: 16, QPS: -1, Protobuf: true, StatusPatch: true}},
		{"fast (the above, Services in etcd)", Fast},
		{"fast,workers=4", LoadOptions{Workers: 4, QPS: -1, Protobuf: true, ServicesInEtcd: true}},
		{"fast,workers=64", LoadOptions{Workers: 64, QPS: -1, Protobuf: true, ServicesInEtcd: true}},
	}
	for _, n := range sizes {
		w := NewWorld(WorldOptions{Namespaces: n})
		for _, v := range variants {
			b.Run(fmt.Sprintf("namespaces=%d/%s", n, v.name), func(b *testing.B) {
				var st *LoadStats
				for i := 0; i < b.N; i++ {
					if st, err = loadOnce(context.Background(), b.TempDir(), w, v.o, func(string, ...any) {}, nil); err != nil {
						b.Fatal(err)
					}
				}
				b.Logf("%s", st)
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(st.Took.Seconds(), "load-s")
				b.ReportMetric(st.ObjectsPerSec, "obj/s")
				b.ReportMetric(st.ServicesPerSec, "svc/s")
			})
		}
	}
}
