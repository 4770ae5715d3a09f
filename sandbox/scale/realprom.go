package scale

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/telemetry"
	"github.com/mtls-migrate/mtls-migrate/sandbox/prometheus"
	"github.com/mtls-migrate/mtls-migrate/status"
)

// RealPromConfig is a run of the product's queries against a real
// Prometheus backfilled with a world.
type RealPromConfig struct {
	Namespaces, Workloads, Flows int
	// Resolution is the scrape interval the samples are spaced by.
	Resolution time.Duration
	// Window is the planner's window (default 7d).
	Window time.Duration
	// End is the world's "now" and the time the queries are evaluated at
	// (default: now, rounded down to the resolution).
	End time.Time
	// Lean and Metrics are as in OpenMetricsOptions (Metrics default:
	// QueriedMetrics).
	Lean    bool
	Metrics []string
	// Dir holds the TSDB and Prometheus' files.
	Dir string
	// Repeats is how many times each query is timed (default 3: the first
	// reads from disk, the others from the page cache).
	Repeats int
	// Binary, when set, also runs Run (a cluster holding the world, plan
	// and status) against this Prometheus.
	Binary string
	// While, when set, is called with both servers' URLs before they stop.
	While func(realURL, synthURL string)
	Logf  func(format string, args ...any)
}

// RealPromResult is what RunRealPrometheus measured.
type RealPromResult struct {
	World    *World
	Backfill BackfillStats
	// Ready is how long Prometheus took to open the TSDB and answer.
	Ready   time.Duration
	Queries []TimedQuery
	// Differences between the synthetic Prometheus' answers and the real
	// one's, at End.
	Differences []string
	Plan        *Result
}

// TimedQuery is one of the product's queries as a real Prometheus answered it.
type TimedQuery struct {
	Name   string
	Range  bool
	Times  []time.Duration
	Bytes  int
	Series int
	Err    string
}

func (c *RealPromConfig) defaults() {
	if c.Window <= 0 {
		c.Window = 7 * 24 * time.Hour
	}
	if c.Resolution <= 0 {
		c.Resolution = 30 * time.Second
	}
	if c.End.IsZero() {
		c.End = time.Now().Truncate(c.Resolution)
	}
	if c.Metrics == nil {
		c.Metrics = QueriedMetrics
	}
	if c.Repeats <= 0 {
		c.Repeats = 3
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// productQuery is a query of the product, how it is sent.
type productQuery struct {
	name  string
	query string
	at    time.Time // an instant query's time
	rng   *v1.Range // a range query's (nil: instant)
}

// productQueries are plan's queries (instant, the default; and with
// telemetry's Steps=7, range queries of a day's steps for a query-frontend)
// and status' plaintext-rate query, at end.
func productQueries(window time.Duration, end time.Time) []productQuery {
	names := telemetry.QueryNames
	var out []productQuery
	for i, q := range telemetry.Queries(telemetry.Options{Window: window, Now: end}) {
		out = append(out, productQuery{name: "plan: " + names[i], query: q, at: end})
	}
	day := 24 * time.Hour
	for i, q := range telemetry.Queries(telemetry.Options{Window: window, Now: end, Steps: 7}) {
		if !telemetry.Ranged(i) {
			continue
		}
		points := int((window + day - 1) / day)
		out = append(out, productQuery{name: "plan --steps 7: " + names[i], query: q,
			rng: &v1.Range{Start: end.Add(-time.Duration(points-1) * day), End: end, Step: day}})
	}
	return append(out, productQuery{name: "status: plaintext rates", query: status.PlaintextQuery(5 * time.Minute), at: end})
}

// RunRealPrometheus backfills a real Prometheus with the world, starts it,
// times the product's queries against it, compares its answers with the
// synthetic Prometheus' and, with Binary set, runs plan and status
// against it.
func RunRealPrometheus(ctx context.Context, c RealPromConfig) (_ *RealPromResult, err error) {
	c.defaults()
	w := NewWorld(WorldOptions{Namespaces: c.Namespaces, Workloads: c.Workloads, Flows: c.Flows, End: c.End})
	r := &RealPromResult{World: w}
	tsdb := filepath.Join(c.Dir, "tsdb")
	// The first step of the last-seen subquery looks back step+5m before
	// the window: a little more than that.
	from := c.End.Add(-c.Window - 2*time.Hour)
	c.Logf("backfilling %d namespaces (%d flows) from %s to %s every %s", c.Namespaces, len(w.Flows), from.UTC().Format(time.RFC3339), c.End.UTC().Format(time.RFC3339), c.Resolution)
	r.Backfill, err = Backfill(ctx, w, BackfillOptions{
		OpenMetricsOptions: OpenMetricsOptions{From: from, To: c.End, Resolution: c.Resolution, Metrics: c.Metrics, Lean: c.Lean},
		TSDB:               tsdb, Logf: c.Logf,
	})
	if err != nil {
		return r, err
	}
	c.Logf("backfill: %s", r.Backfill)

	began := time.Now()
	prom, err := prometheus.Start(ctx, prometheus.Options{
		Dir: filepath.Join(c.Dir, "prometheus"), TSDBDir: tsdb, Retention: 30 * 24 * time.Hour,
		// No compaction while the queries run (the blocks are those a 15d
		// retention makes), and let a slow query finish so it is timed.
		Args: []string{"--storage.tsdb.max-block-duration=18h", "--query.timeout=10m"},
	})
	if err != nil {
		return r, err
	}
	defer func() {
		if stopErr := prom.Stop(); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	r.Ready = time.Since(began)
	c.Logf("prometheus ready in %s at %s", r.Ready.Round(100*time.Millisecond), prom.URL())

	synth := NewPromServer(w)
	if err := synth.Start(); err != nil {
		return r, err
	}
	defer synth.Close()
	realAPI, synthAPI, err := apis(prom.URL(), synth.URL())
	if err != nil {
		return r, err
	}
	for _, q := range productQueries(c.Window, c.End) {
		tq := TimedQuery{Name: q.name, Range: q.rng != nil}
		for k := 0; k < c.Repeats; k++ {
			d, n, series, err := timeQuery(ctx, prom.URL(), q)
			if err != nil {
				tq.Err = err.Error()
				break
			}
			tq.Times, tq.Bytes, tq.Series = append(tq.Times, d), n, series
		}
		c.Logf("  %-40s %v, %d series, %.2f MB %s", q.name, tq.Times, tq.Series, float64(tq.Bytes)/(1<<20), tq.Err)
		r.Queries = append(r.Queries, tq)
		if tq.Err == "" {
			r.Differences = append(r.Differences, compareAnswers(ctx, q, realAPI, synthAPI, c.Resolution)...)
		}
	}
	if c.While != nil {
		c.While(prom.URL(), synth.URL())
	}
	if c.Binary != "" {
		r.Plan, err = Run(ctx, Config{World: w, Window: c.Window, PrometheusURL: prom.URL(), Binary: c.Binary, Dir: filepath.Join(c.Dir, "run"), Logf: c.Logf})
		if err != nil {
			return r, err
		}
	}
	return r, nil
}

func apis(urls ...string) (v1.API, v1.API, error) {
	var out []v1.API
	for _, u := range urls {
		c, err := api.NewClient(api.Config{Address: u})
		if err != nil {
			return nil, nil, err
		}
		out = append(out, v1.NewAPI(c))
	}
	return out[0], out[1], nil
}

// timeQuery sends q as client_golang does (a POSTed form) and reads the
// whole answer.
func timeQuery(ctx context.Context, base string, q productQuery) (time.Duration, int, int, error) {
	form := url.Values{"query": {q.query}}
	path := "/api/v1/query"
	if q.rng != nil {
		path = "/api/v1/query_range"
		form.Set("start", strconv.FormatInt(q.rng.Start.Unix(), 10))
		form.Set("end", strconv.FormatInt(q.rng.End.Unix(), 10))
		form.Set("step", strconv.FormatInt(int64(q.rng.Step/time.Second), 10))
	} else {
		form.Set("time", strconv.FormatInt(q.at.Unix(), 10))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, 0, 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	began := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	took := time.Since(began)
	if err != nil {
		return took, 0, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return took, len(body), 0, fmt.Errorf("HTTP %d: %s", resp.StatusCode, tailLines(string(body), 3))
	}
	return took, len(body), strings.Count(string(body), `{"metric":`), nil
}

// compareAnswers evaluates q on both servers and lists where they differ:
// a series on one side only, or values apart by more than the sampling
// can explain (0.1% for totals and rates; for last-seen times, one step of
// the subquery when a flow stopped within a scrape of a step).
func compareAnswers(ctx context.Context, q productQuery, real, synth v1.API, res time.Duration) []string {
	get := func(a v1.API) (map[string]float64, error) {
		var v model.Value
		var err error
		if q.rng != nil {
			v, _, _, err = a.QueryRange(ctx, q.query, *q.rng)
		} else {
			v, _, _, err = a.Query(ctx, q.query, q.at)
		}
		if err != nil {
			return nil, err
		}
		out := map[string]float64{}
		switch x := v.(type) {
		case model.Vector:
			for _, s := range x {
				out[s.Metric.String()] = float64(s.Value)
			}
		case model.Matrix:
			for _, ss := range x {
				for _, p := range ss.Values {
					out[ss.Metric.String()+"@"+p.Timestamp.Time().UTC().Format(time.RFC3339)] = float64(p.Value)
				}
			}
		default:
			return nil, fmt.Errorf("answered a %s", v.Type())
		}
		return out, nil
	}
	rv, err := get(real)
	if err != nil {
		return []string{fmt.Sprintf("%s: real Prometheus: %v", q.name, err)}
	}
	sv, err := get(synth)
	if err != nil {
		return []string{fmt.Sprintf("%s: synthetic Prometheus: %v", q.name, err)}
	}
	var diffs []string
	for k, a := range rv {
		b, ok := sv[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: %s only in the real answer (%g)", q.name, k, a))
		case strings.Contains(k, `mm_kind="last_seen"`):
			if math.Abs(a-b) > res.Seconds()+telemetry.Step(7*24*time.Hour).Seconds() {
				diffs = append(diffs, fmt.Sprintf("%s: %s last seen %g (real) vs %g (synthetic)", q.name, k, a, b))
			}
		case math.Abs(a-b) > 1e-3*math.Max(math.Abs(a), math.Abs(b)):
			diffs = append(diffs, fmt.Sprintf("%s: %s = %g (real) vs %g (synthetic)", q.name, k, a, b))
		}
	}
	for k, b := range sv {
		if _, ok := rv[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: %s only in the synthetic answer (%g)", q.name, k, b))
		}
	}
	sort.Strings(diffs)
	return diffs
}
