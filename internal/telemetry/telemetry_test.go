package telemetry

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry/telemetrytest"
)

const week = 7 * 24 * time.Hour

func TestStepKeepsQueriesSmall(t *testing.T) {
	tests := []struct {
		window, want time.Duration
	}{
		{week, time.Hour},
		{24 * time.Hour, 8*time.Minute + 35*time.Second},
		{time.Hour, time.Minute},
		{30 * time.Second, 30 * time.Second},
	}
	for _, tt := range tests {
		got := Step(tt.window)
		if got != tt.want {
			t.Errorf("Step(%s) = %s, want %s", tt.window, got, tt.want)
		}
		if steps := (tt.window + got - 1) / got; steps > MaxSteps {
			t.Errorf("Step(%s): %d steps > %d", tt.window, steps, MaxSteps)
		}
	}
}

// The queries a plan runs by default, verbatim: totals and last-seen times
// computed by Prometheus, one point per series; mutual TLS read at the
// window's two ends, plaintext over every sample.
func TestQueriesAreInstantTotalsOverTheWindow(t *testing.T) {
	plain := `{reporter="destination",connection_security_policy!="mutual_tls"}`
	flow := "destination_workload_namespace, destination_workload, source_workload, source_workload_namespace, source_principal"
	rose := `sum by (` + flow + `) (increase(istio_requests_total` + plain + `[1h5m])) > 0 or sum by (` + flow + `) (increase(istio_tcp_connections_opened_total` + plain + `[1h5m])) > 0 or sum by (` + flow + `) (increase(istio_tcp_received_bytes_total` + plain + `[1h5m])) > 0`
	growth := func(m, shard string) string {
		s := m + `{reporter="destination",connection_security_policy="mutual_tls",destination_workload_namespace` + shard + `}`
		return `sum by (destination_workload_namespace, source_workload_namespace) (((` + s + ` - ` + s + ` offset 1w) >= 0) or ` + s + `)`
	}
	aggregate := func(shard string) string {
		return `label_replace(` + growth("istio_requests_total", shard) + `, "mm_kind", "requests", "", "")` +
			` or label_replace(` + growth("istio_tcp_connections_opened_total", shard) + `, "mm_kind", "connections", "", "")` +
			` or label_replace(` + growth("istio_tcp_received_bytes_total", shard) + `, "mm_kind", "bytes", "", "")`
	}
	want := []string{
		aggregate(`=~".*[0369cfilorux]"`), aggregate(`=~".*[147adgjmpsvy]"`), aggregate(`!~".*[0369cfilorux147adgjmpsvy]"`),
		`label_replace(sum by (` + flow + `) (increase(istio_requests_total` + plain + `[1w])) > 0, "mm_kind", "requests", "", "")` +
			` or label_replace(sum by (` + flow + `) (increase(istio_tcp_connections_opened_total` + plain + `[1w])) > 0, "mm_kind", "connections", "", "")` +
			` or label_replace(sum by (` + flow + `) (increase(istio_tcp_received_bytes_total` + plain + `[1w])) > 0, "mm_kind", "bytes", "", "")` +
			` or label_replace(timestamp(` + rose + `) or max_over_time(timestamp(` + rose + `)[1w:1h]), "mm_kind", "last_seen", "", "")`,
		`count by (component, tag) (istio_build)`,
		`group by (reporter, destination_workload_namespace, source_workload_namespace) (istio_requests_total{reporter=~"source|destination"} or istio_tcp_connections_opened_total{reporter=~"source|destination"} or istio_tcp_received_bytes_total{reporter=~"source|destination"})`,
	}
	got := Queries(Options{Window: week})
	if len(got) != len(want) {
		t.Fatalf("%d queries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("query %d:\ngot  %s\nwant %s", i, got[i], want[i])
		}
	}
}

func TestQueriesWithStepsSpanOneStepEach(t *testing.T) {
	qs := Queries(Options{Window: week, Steps: 7})
	for _, q := range qs[:AggregateShards] {
		if !strings.Contains(q, "offset 1d)") || strings.Contains(q, "1w") {
			t.Errorf("aggregate does not span a day per step: %s", q)
		}
	}
	if d := qs[AggregateShards]; !strings.Contains(d, "[1d]") || !strings.Contains(d, "[1d:1h]") || !strings.Contains(d, "[1h5m]") {
		t.Errorf("detail does not span a day per step, or last-seen changed resolution: %s", d)
	}
}

// Every destination namespace, whatever its label holds, is in exactly
// one shard of the aggregate.
func TestAggregateShardsPartitionTheNamespaces(t *testing.T) {
	var res []*regexp.Regexp
	var neg []bool
	for _, m := range shardMatchers(AggregateShards) {
		op, quoted, _ := strings.Cut(strings.TrimPrefix(m, istiometrics.LabelDestinationWorkloadNamespace), `"`)
		pat, err := strconv.Unquote(`"` + quoted)
		if err != nil {
			t.Fatal(err)
		}
		res, neg = append(res, regexp.MustCompile("^(?:"+pat+")$")), append(neg, op == "!~")
	}
	for _, ns := range []string{"", "unknown", "mesh-0001", "mesh-0002", "mesh-0003", "default", "istio-system", "a", "9", "x-", "Ü"} {
		n := 0
		for i, re := range res {
			if re.MatchString(ns) != neg[i] {
				n++
			}
		}
		if n != 1 {
			t.Errorf("namespace %q is in %d shards", ns, n)
		}
	}
}

func TestQueriesEscapeNamespaces(t *testing.T) {
	qs := Queries(Options{Window: week, Namespaces: []string{`bad"ns`}})
	if len(qs) != 6 {
		t.Fatalf("%d queries", len(qs))
	}
	for _, q := range []string{qs[0], qs[2], qs[3], qs[5]} {
		if !strings.Contains(q, `=~"bad\"ns"`) {
			t.Errorf("query not escaped: %s", q)
		}
	}
	for _, q := range qs[:4] {
		if !strings.Contains(q, `=~"bad\"ns"`) || !strings.Contains(q, "1w") {
			t.Errorf("query not escaped or not over the window: %s", q)
		}
	}
}

type fake struct {
	val   model.Value
	warns v1.Warnings
	infos v1.Infos
	err   error
}

func (f fake) Query(context.Context, string, time.Time, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return f.val, f.warns, f.infos, f.err
}
func (f fake) QueryRange(context.Context, string, v1.Range, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return f.val, f.warns, f.infos, f.err
}

func TestFetchReportsWarningsAndInfos(t *testing.T) {
	res, err := Fetch(context.Background(), fake{val: model.Vector{}, warns: v1.Warnings{"partial response"}, infos: v1.Infos{"metric might not be a counter"}}, Options{Window: time.Hour, Now: time.Unix(1e9, 0)})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(res.Warnings, "\n")
	if !strings.Contains(joined, "prometheus warning (aggregate traffic 1/3): partial response") || !strings.Contains(joined, "prometheus warning (plaintext flows)") || !strings.Contains(joined, "prometheus info") {
		t.Errorf("warnings = %v", res.Warnings)
	}
}

func TestFetchIsPartialOnlyWhenPrometheusWarns(t *testing.T) {
	tests := []struct {
		name  string
		warns v1.Warnings
		infos v1.Infos
		want  bool
	}{
		{"warning", v1.Warnings{"partial response"}, nil, true},
		{"info only", nil, v1.Infos{"metric might not be a counter"}, false},
		{"neither", nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Fetch(context.Background(), fake{val: model.Vector{}, warns: tt.warns, infos: tt.infos}, Options{Window: time.Hour, Now: time.Unix(1e9, 0)})
			if err != nil {
				t.Fatal(err)
			}
			if res.Partial != tt.want {
				t.Errorf("Partial = %v, want %v", res.Partial, tt.want)
			}
		})
	}
}

func TestFetchRefusesAnswersOfAnotherType(t *testing.T) {
	tests := []struct {
		name  string
		val   model.Value
		steps int
	}{
		{"matrix to an instant query", model.Matrix{}, 1},
		{"scalar to an instant query", &model.Scalar{}, 1},
		{"no value to an instant query", nil, 1},
		{"vector to a range query", model.Vector{}, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Fetch(context.Background(), fake{val: tt.val}, Options{Window: week, Now: time.Unix(1e9, 0), Steps: tt.steps, URL: "http://prom:9090"})
			var ua *istiometrics.UnusableAnswerError
			if !errors.As(err, &ua) || !strings.Contains(err.Error(), "aggregate traffic") || !strings.Contains(err.Error(), "http://prom:9090") {
				t.Errorf("err = %v, want an unusable answer naming the query and Prometheus", err)
			}
		})
	}
}

func TestFetchRefusesStepsOutOfRange(t *testing.T) {
	for _, steps := range []int{-1, MaxSteps + 1} {
		if _, err := Fetch(context.Background(), fake{val: model.Vector{}}, Options{Window: week, Steps: steps}); err == nil {
			t.Errorf("Steps %d accepted", steps)
		}
	}
}

func TestFetchUnreachable(t *testing.T) {
	_, err := Fetch(context.Background(), fake{err: errors.New("connection refused")}, Options{Window: time.Hour, URL: "http://prom:9090"})
	if err == nil || !strings.Contains(err.Error(), "http://prom:9090") || !strings.Contains(err.Error(), "check --prometheus-url") {
		t.Errorf("err = %v", err)
	}
}

// kinds records which kind of query each call was.
// (Fetch sends its queries at once.)
type kinds struct {
	*telemetrytest.Fake
	mu              sync.Mutex
	instant, ranged int
	step            time.Duration
}

func (k *kinds) Query(ctx context.Context, q string, ts time.Time, o ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	k.mu.Lock()
	k.instant++
	k.mu.Unlock()
	return k.Fake.Query(ctx, q, ts, o...)
}

func (k *kinds) QueryRange(ctx context.Context, q string, r v1.Range, o ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	k.mu.Lock()
	k.ranged++
	k.step = r.Step
	k.mu.Unlock()
	return k.Fake.QueryRange(ctx, q, r, o...)
}

// Totals and last-seen times are the same whether Prometheus sums the week
// (the default) or returns a point a day that Fetch sums.
func TestFetchTotalsAndLastSeenWithAndWithoutSteps(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 34, 56, 0, time.UTC)
	flows := []telemetrytest.Flow{
		// 1/s all week, mTLS, both sides reporting.
		{DstNS: "orders", DstWorkload: "orders", SrcNS: "web", SrcWorkload: "web", CSP: "mutual_tls", PerStep: 3600},
		{Reporter: "source", DstNS: "orders", DstWorkload: "orders", SrcNS: "web", SrcWorkload: "web", CSP: "unknown", PerStep: 3600},
		// Plaintext from outside the mesh, 1/s until three hours ago.
		{DstNS: "orders", DstWorkload: "orders", SrcNS: "", SrcWorkload: "", CSP: "none", PerStep: 3600, QuietSteps: 3},
		// A plaintext TCP client that connected once, 10 hours ago, and still sends bytes.
		{DstNS: "orders", DstWorkload: "db", SrcNS: "batch", SrcWorkload: "job", CSP: "none", Kind: "connections", PerStep: 1, LastSteps: 10, QuietSteps: 9},
		{DstNS: "orders", DstWorkload: "db", SrcNS: "batch", SrcWorkload: "job", CSP: "none", Kind: "bytes", PerStep: 100, LastSteps: 10},
	}
	for _, steps := range []int{0, 7} {
		q := &kinds{Fake: &telemetrytest.Fake{Flows: flows, Versions: map[string]string{"proxy": "1.26.2"}}}
		res, err := Fetch(context.Background(), q, Options{Window: week, Now: now, Steps: steps})
		if err != nil {
			t.Fatal(err)
		}
		if steps == 0 && (q.instant != 6 || q.ranged != 0) || steps == 7 && (q.instant != 2 || q.ranged != 4 || q.step != 24*time.Hour) {
			t.Errorf("steps %d: %d instant, %d range queries of step %s", steps, q.instant, q.ranged, q.step)
		}
		in := res.Inbound["orders"]
		// The pooled client's bytes count in the totals too: its only
		// connection opened once, the TCP gates need its bytes.
		if in == nil || in.MTLSRequests != week.Seconds() || in.PlaintextRequests != (week-3*time.Hour).Seconds() || in.PlaintextConnections != 1 || in.PlaintextBytes != 1000 || in.MTLSBytes != 0 {
			t.Fatalf("steps %d: inbound = %+v", steps, in)
		}
		if _, ok := in.Sources["web"]; !ok || !res.Reporting["web"] || !res.Reporting["orders"] {
			t.Errorf("steps %d: sources %v reporting %v", steps, in.Sources, res.Reporting)
		}
		if len(res.Plaintext) != 2 {
			t.Fatalf("steps %d: plaintext = %+v", steps, res.Plaintext)
		}
		db, ext := res.Plaintext[0], res.Plaintext[1]
		// Stopped at 09:34:56: the last hourly step whose 1h5m saw a rise is 10:00.
		if ext.SourceWorkload != Unknown || ext.Requests != (week-3*time.Hour).Seconds() || !ext.LastSeen.Equal(time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)) {
			t.Errorf("steps %d: outside flow = %+v", steps, ext)
		}
		// Bytes until now: last seen now, though its only connection is older.
		if db.SourceWorkload != "job" || db.Connections != 1 || db.Bytes != 1000 || !db.LastSeen.Equal(now) {
			t.Errorf("steps %d: TCP flow = %+v", steps, db)
		}
		if res.IstioVersion != "1.26.2" || res.Step != time.Hour {
			t.Errorf("steps %d: version %q step %s", steps, res.IstioVersion, res.Step)
		}
	}
}

func TestParseDetailReadsLastSeenAndKeepsFlowsWithTraffic(t *testing.T) {
	end := time.Unix(1e9, 0)
	flow := func(wl, kind string, v float64) *model.Sample {
		return &model.Sample{Metric: model.Metric{"destination_workload_namespace": "orders", "destination_workload": model.LabelValue(wl), "source_workload": "unknown", "source_workload_namespace": "unknown", "mm_kind": model.LabelValue(kind)}, Value: model.SampleValue(v)}
	}
	vec := model.Vector{
		flow("a", "last_seen", float64(end.Add(-2*time.Hour).Unix())), // before its totals
		flow("a", "requests", 60),
		flow("b", "connections", 3), // no last-seen: read as current
		flow("c", "last_seen", float64(end.Unix())),
		flow("c", "requests", 0), // no traffic: not a flow
	}
	res := &Result{Inbound: map[string]*Traffic{}, Reporting: map[string]bool{}}
	if err := res.parseDetail(vec, false, end); err != nil {
		t.Fatal(err)
	}
	if len(res.Plaintext) != 2 {
		t.Fatalf("flows = %+v", res.Plaintext)
	}
	a, b := res.Plaintext[0], res.Plaintext[1]
	if a.Requests != 60 || !a.LastSeen.Equal(end.Add(-2*time.Hour)) || b.Connections != 3 || !b.LastSeen.Equal(end) {
		t.Errorf("flows = %+v", res.Plaintext)
	}
}
