package telemetry

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/telemetry/telemetrytest"
)

// benchFlows is the mesh of planner's BenchmarkPlan: nsCount namespaces of
// 10 workloads, each with 10 inbound flows from other namespaces, one flow
// in 5 plaintext (half of those from outside the mesh), each meshed client
// also reporting its side.
func benchFlows(nsCount int) []telemetrytest.Flow {
	var flows []telemetrytest.Flow
	n := 0
	for i := 0; i < nsCount; i++ {
		ns := fmt.Sprintf("ns-%04d", i)
		for j := 0; j < 10; j++ {
			wl := fmt.Sprintf("wl-%02d", j)
			for k := 0; k < 10; k++ {
				srcNS, srcWL, csp := fmt.Sprintf("ns-%04d", (i+k+1)%nsCount), fmt.Sprintf("wl-%02d", (j+k)%10), "mutual_tls"
				n++
				if n%5 == 0 {
					csp = "none"
					if n%10 == 0 {
						srcNS, srcWL = "unknown", "unknown"
					}
				}
				flows = append(flows, telemetrytest.Flow{DstNS: ns, DstWorkload: wl, SrcNS: srcNS, SrcWorkload: srcWL, CSP: csp, PerStep: 3600})
				if srcNS != "unknown" {
					flows = append(flows, telemetrytest.Flow{Reporter: "source", DstNS: ns, DstWorkload: wl, SrcNS: srcNS, SrcWorkload: srcWL, CSP: "unknown", PerStep: 3600})
				}
			}
		}
	}
	return flows
}

// promServer serves Prometheus' HTTP API (/api/v1/query, /api/v1/query_range)
// from fake, encoding each answer once: the server answers instantly, so
// what a benchmark times is the client's side (HTTP, JSON decoding, parsing).
type promServer struct {
	fake  *telemetrytest.Fake
	mu    sync.Mutex
	cache map[string][]byte
	bytes atomic.Int64
}

func (s *promServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	key := r.URL.Path + "?" + r.Form.Encode()
	s.mu.Lock()
	body, ok := s.cache[key]
	s.mu.Unlock()
	if !ok {
		var err error
		if body, err = s.answer(r); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.cache[key] = body
		s.mu.Unlock()
	}
	s.bytes.Add(int64(len(body)))
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

func (s *promServer) answer(r *http.Request) ([]byte, error) {
	ts := func(name string) (time.Time, error) {
		f, err := strconv.ParseFloat(r.Form.Get(name), 64)
		return time.Unix(0, int64(f*1e9)).UTC(), err
	}
	var (
		val model.Value
		err error
	)
	switch r.URL.Path {
	case "/api/v1/query":
		var at time.Time
		if at, err = ts("time"); err == nil {
			val, _, _, err = s.fake.Query(r.Context(), r.Form.Get("query"), at)
		}
	case "/api/v1/query_range":
		var rng v1.Range
		step, serr := strconv.ParseFloat(r.Form.Get("step"), 64)
		rng.Start, err = ts("start")
		if err == nil {
			rng.End, err = ts("end")
		}
		if err == nil {
			err = serr
		}
		rng.Step = time.Duration(step * float64(time.Second))
		if err == nil {
			val, _, _, err = s.fake.QueryRange(r.Context(), r.Form.Get("query"), rng)
		}
	default:
		return nil, fmt.Errorf("unexpected path %s", r.URL.Path)
	}
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"status": "success", "data": map[string]any{"resultType": val.Type().String(), "result": val}})
}

// BenchmarkFetch times what a user waits for after Prometheus has answered:
// Fetch through client_golang's v1.API against an HTTP server that serves
// ready-made answers for 2,000 namespaces (40,000 plaintext flows), so the
// cost is the transfer, the JSON decoding and the parsing. "instant" is the
// default; "steps=7" the range queries of a day for a query-frontend.
func BenchmarkFetch(b *testing.B) {
	srv := &promServer{fake: &telemetrytest.Fake{Flows: benchFlows(2000), Versions: map[string]string{"proxy": "1.26.2"}}, cache: map[string][]byte{}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	client, err := api.NewClient(api.Config{Address: hs.URL})
	if err != nil {
		b.Fatal(err)
	}
	promAPI := v1.NewAPI(client)
	for _, bc := range []struct {
		name  string
		steps int
	}{{"instant", 1}, {"steps=7", 7}} {
		b.Run(bc.name, func(b *testing.B) {
			o := Options{Window: 7 * 24 * time.Hour, Now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC), URL: hs.URL, Steps: bc.steps}
			if _, err := Fetch(context.Background(), promAPI, o); err != nil { // encodes the answers
				b.Fatal(err)
			}
			srv.bytes.Store(0)
			b.ReportAllocs()
			b.ResetTimer()
			var res *Result
			for i := 0; i < b.N; i++ {
				if res, err = Fetch(context.Background(), promAPI, o); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(srv.bytes.Load())/float64(b.N), "resp-B/op")
			if len(res.Plaintext) != 40000 {
				b.Fatalf("%d plaintext flows, want 40000", len(res.Plaintext))
			}
		})
	}
}
