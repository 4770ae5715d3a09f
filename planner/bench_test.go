package planner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry/telemetrytest"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// syntheticMesh builds nsCount namespaces of wlPerNS workloads (one pod and
// one Service each) and flowsPerWL inbound flows per workload from other
// namespaces; one flow in plaintextEvery is plaintext (half of those from
// outside the mesh).
func syntheticMesh(nsCount, wlPerNS, flowsPerWL, plaintextEvery int) (*inventory.Inventory, *telemetrytest.Fake) {
	inv := &inventory.Inventory{RootNamespace: "istio-system", MeshConfigFound: true}
	fake := &telemetrytest.Fake{Versions: map[string]string{"proxy": "1.26.2"}}
	step := time.Hour.Seconds()
	n := 0
	for i := 0; i < nsCount; i++ {
		ns := fmt.Sprintf("ns-%04d", i)
		inv.Namespaces = append(inv.Namespaces, inventory.Namespace{Name: ns, Labels: map[string]string{"istio-injection": "enabled"}})
		if i%10 == 0 {
			inv.PeerAuthentications = append(inv.PeerAuthentications, mtlsmode.Policy{Namespace: ns, Name: "default", UID: ns, Mode: plans.ModePermissive, CreationTimestamp: time.Unix(int64(i), 0)})
		}
		for j := 0; j < wlPerNS; j++ {
			wl := fmt.Sprintf("wl-%02d", j)
			labels := map[string]string{"app": wl}
			inv.Pods = append(inv.Pods, inventory.Pod{Namespace: ns, Name: wl + "-x1", Workload: wl, WorkloadKind: "Deployment", Labels: labels,
				IP: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j), Running: true, Sidecar: true, Ports: []inventory.ContainerPort{{Name: "http", Port: 8080}}})
			inv.Services = append(inv.Services, inventory.Service{Namespace: ns, Name: wl, Type: "ClusterIP", Selector: labels,
				Ports: []inventory.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: "TCP"}}})
			for k := 0; k < flowsPerWL; k++ {
				src := (i + k + 1) % nsCount
				srcNS, srcWL, csp := fmt.Sprintf("ns-%04d", src), fmt.Sprintf("wl-%02d", (j+k)%wlPerNS), "mutual_tls"
				n++
				if n%plaintextEvery == 0 {
					csp = "none"
					if n%(2*plaintextEvery) == 0 {
						srcNS, srcWL = "unknown", "unknown"
					}
				}
				fake.Flows = append(fake.Flows, telemetrytest.Flow{DstNS: ns, DstWorkload: wl, SrcNS: srcNS, SrcWorkload: srcWL, CSP: csp, PerStep: step})
			}
		}
	}
	return inv, fake
}

// BenchmarkPlan runs what a real plan runs after the network: parsing the
// Prometheus answers (prepared in memory) and deciding 2,000 namespaces,
// 20,000 workloads, 200,000 flows.
func BenchmarkPlan(b *testing.B) {
	inv, fake := syntheticMesh(2000, 10, 10, 5)
	window := 7 * 24 * time.Hour
	now := testNow
	for _, q := range telemetry.Queries(telemetry.Options{Window: window}) {
		if err := fake.Prepare(q, now); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tel, err := telemetry.Fetch(context.Background(), fake, telemetry.Options{Window: window, Now: now})
		if err != nil {
			b.Fatal(err)
		}
		p, err := Decide(inv, tel, now, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if len(p.Stages) != 2001 {
			b.Fatalf("%d stages", len(p.Stages))
		}
	}
	b.StopTimer()
	if calls := len(fake.Calls()); calls/b.N > 6 {
		b.Fatalf("%d queries per plan", calls/b.N)
	}
}

// benchPlan is the 2,000-namespace plan of BenchmarkPlan, decided once.
func benchPlan(b *testing.B) *plans.Plan { return syntheticPlan(b, 2000) }

// syntheticPlan decides the plan of syntheticMesh(nsCount, 10, 10, 5).
func syntheticPlan(b testing.TB, nsCount int) *plans.Plan {
	b.Helper()
	inv, fake := syntheticMesh(nsCount, 10, 10, 5)
	window := 7 * 24 * time.Hour
	for _, q := range telemetry.Queries(telemetry.Options{Window: window}) {
		if err := fake.Prepare(q, testNow); err != nil {
			b.Fatal(err)
		}
	}
	tel, err := telemetry.Fetch(context.Background(), fake, telemetry.Options{Window: window, Now: testNow})
	if err != nil {
		b.Fatal(err)
	}
	p, err := Decide(inv, tel, testNow, Options{})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// peakHeap samples the live heap while f runs and returns its peak above
// the heap before: what writing or loading a plan costs in memory, which
// B/op (everything allocated, garbage included) does not say.
func peakHeap(f func()) uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	peak := base
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				runtime.ReadMemStats(&m)
				peak = max(peak, m.HeapAlloc)
			}
		}
	}()
	f()
	close(stop)
	<-done
	runtime.ReadMemStats(&ms)
	return max(peak, ms.HeapAlloc) - base
}

// BenchmarkSavePlan writes the 2,000-namespace plan to a file, as `plan
// --out` does: wall time, and the peak heap above the plan itself.
func BenchmarkSavePlan(b *testing.B) {
	p := benchPlan(b)
	path := filepath.Join(b.TempDir(), "plan.yaml")
	save := func() {
		if err := plans.SaveFile(path, p); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		save()
	}
	b.StopTimer()
	// Sampling the heap stops the world; measured apart from the time.
	peak := peakHeap(save)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(peak)/1e6, "peak-MB")
	b.ReportMetric(float64(fi.Size())/1e6, "file-MB")
}

// BenchmarkLoadPlan reads the 2,000-namespace plan back (strict decode,
// validation, digest), as every apply does.
func BenchmarkLoadPlan(b *testing.B) {
	path := filepath.Join(b.TempDir(), "plan.yaml")
	if err := plans.SaveFile(path, benchPlan(b)); err != nil {
		b.Fatal(err)
	}
	load := func() {
		q, err := plans.LoadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := plans.Digest(q); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		load()
	}
	b.StopTimer()
	peak := peakHeap(load)
	b.ReportMetric(float64(peak)/1e6, "peak-MB")
}
