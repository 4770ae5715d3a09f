package scale

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/telemetry"
	"github.com/mtls-migrate/mtls-migrate/status"
)

var testEnd = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func startServer(t *testing.T, w *World) v1.API {
	t.Helper()
	_, a := startServerReplaying(t, w, false)
	return a
}

func startServerReplaying(t *testing.T, w *World, replay bool) (*PromServer, v1.API) {
	t.Helper()
	p := NewPromServer(w)
	p.Now = func() time.Time { return w.Opts.End }
	p.SetReplay(replay)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	c, err := api.NewClient(api.Config{Address: p.URL()})
	if err != nil {
		t.Fatal(err)
	}
	return p, v1.NewAPI(c)
}

// TestSyntheticPrometheusAnswersThePlannersQueriesFromTheWorld runs the
// product's own Fetch (its queries, client_golang, its parsing) against
// the synthetic Prometheus and compares the result with the world.
func TestSyntheticPrometheusAnswersThePlannersQueriesFromTheWorld(t *testing.T) {
	const window = 7 * 24 * time.Hour
	w := NewWorld(WorldOptions{Namespaces: 20, End: testEnd})
	promAPI := startServer(t, w)
	for _, steps := range []int{1, 7} {
		res, err := telemetry.Fetch(context.Background(), promAPI, telemetry.Options{Window: window, Now: testEnd, Steps: steps})
		if err != nil {
			t.Fatalf("steps=%d: %v", steps, err)
		}
		if res.IstioVersion != ProxyVersion {
			t.Errorf("steps=%d: Istio version %q, want %s", steps, res.IstioVersion, ProxyVersion)
		}
		// Totals per destination namespace from the world.
		wantMTLS := map[string]float64{}
		for k := range w.Flows {
			f := &w.Flows[k]
			if !f.Plain && !f.TCP {
				wantMTLS[w.Names[f.DstNS]] += f.Rate * window.Seconds()
			}
		}
		for ns, want := range wantMTLS {
			got := res.Inbound[ns]
			if got == nil || math.Abs(got.MTLSRequests-want) > 1e-6*want {
				t.Errorf("steps=%d: %s mTLS requests %v, want %v", steps, ns, got, want)
			}
			if !res.Reporting[ns] {
				t.Errorf("steps=%d: %s not reporting", steps, ns)
			}
		}
		exp := w.Expected(window)
		flowsInto := map[string]int{}
		for _, f := range res.Plaintext {
			flowsInto[f.DestinationNamespace]++
			e := exp[f.DestinationNamespace]
			if !e.Blocked {
				t.Errorf("steps=%d: plaintext flow %+v into %s, a %s namespace", steps, f, f.DestinationNamespace, e.Class)
			}
			if !e.LastSeen.IsZero() && steps == 1 {
				if f.LastSeen.Before(e.LastSeen) || f.LastSeen.After(e.LastSeen.Add(telemetry.Step(window)+5*time.Minute)) {
					t.Errorf("%s: last seen %s, want within step+5m after %s", f.DestinationNamespace, f.LastSeen, e.LastSeen)
				}
			}
		}
		want := map[Class]int{ClassExternal: 3, ClassStopped: 1, ClassMeshedPlaintext: 2}
		for i, ns := range w.Names {
			if got := flowsInto[ns]; got != want[ClassOf(i)] {
				t.Errorf("steps=%d: %d plaintext flows into %s (%s), want %d", steps, got, ns, ClassOf(i), want[ClassOf(i)])
			}
		}
	}
}

func TestSyntheticPrometheusAnswersStatusQuery(t *testing.T) {
	w := NewWorld(WorldOptions{Namespaces: 10, End: testEnd})
	promAPI := startServer(t, w)
	v, _, _, err := promAPI.Query(context.Background(), status.PlaintextQuery(5*time.Minute), testEnd)
	if err != nil {
		t.Fatal(err)
	}
	vec := v.(model.Vector)
	got := map[string]float64{}
	for _, s := range vec {
		got[string(s.Metric["destination_workload_namespace"])] += float64(s.Value)
	}
	for i, ns := range w.Names {
		switch ClassOf(i) {
		case ClassExternal, ClassMeshedPlaintext:
			if got[ns] <= 0 {
				t.Errorf("%s: no plaintext rate", ns)
			}
		default:
			if got[ns] != 0 {
				t.Errorf("%s (%s): plaintext rate %v, want none", ns, ClassOf(i), got[ns])
			}
		}
	}
}

func TestPromQLSubset(t *testing.T) {
	w := NewWorld(WorldOptions{Namespaces: 3, Workloads: 5, Flows: 10, End: testEnd})
	promAPI := startServer(t, w)
	for _, tc := range []struct {
		q    string
		want string // the answer's String(), or an error's substring
	}{
		{`count by (component, tag) (istio_build)`, `{component="pilot", tag="1.28.0"} => 1 @[1748779200]` + "\n" + `{component="proxy", tag="1.28.0"} => 15 @[1748779200]`},
		{`sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="mesh-0000"}[5m])) * 2 > 1`, ``},
		{`vector(1) + 2`, `{} => 3 @[1748779200]`},
		{`label_replace(vector(1), "a", "x-$1", "b", "(.*)")`, `{a="x-"} => 1 @[1748779200]`},
		{`istio_build{pod=~"wl-00.*", namespace="mesh-0001"}`, `istio_build{app="wl-00", component="proxy", instance="10.64.0.6:15090", job="envoy-stats", namespace="mesh-0001", pod="` + w.PodName(1, 0) + `", tag="1.28.0"} => 1 @[1748779200]`},
		{`topk(3, istio_build)`, `not supported`},
		{`sum(foo`, `parse error`},
		{`holt_winters(istio_build[5m], 0.1, 0.1)`, `not supported`},
	} {
		v, _, _, err := promAPI.Query(context.Background(), tc.q, testEnd)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = v.String()
		}
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.q, err)
			}
			continue
		}
		if err != nil && !strings.Contains(got, tc.want) || err == nil && got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.q, got, tc.want)
		}
	}
}

// TestReplayServesTheFirstAnswer: with replay on, a repeated query is
// answered from memory (no evaluation) with the first answer's series,
// even at another evaluation time; a new query is evaluated.
func TestReplayServesTheFirstAnswer(t *testing.T) {
	w := NewWorld(WorldOptions{Namespaces: 10, End: testEnd})
	p, promAPI := startServerReplaying(t, w, true)
	q := status.PlaintextQuery(5 * time.Minute)
	first, _, _, err := promAPI.Query(context.Background(), q, testEnd)
	if err != nil {
		t.Fatal(err)
	}
	again, _, _, err := promAPI.Query(context.Background(), q, testEnd.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := promAPI.Query(context.Background(), "sum("+q+")", testEnd); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if len(st) != 3 || st[1].Eval != 0 || st[1].Series != st[0].Series || st[2].Eval == 0 {
		t.Fatalf("stats %+v: want the repeat answered without evaluation, the new query evaluated", st)
	}
	if first.String() != again.String() {
		t.Errorf("replayed answer differs:\n%s\n%s", first, again)
	}
}
