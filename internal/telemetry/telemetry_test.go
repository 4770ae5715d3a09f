package telemetry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

func TestStepKeepsQueriesSmall(t *testing.T) {
	tests := []struct {
		window, want time.Duration
	}{
		{7 * 24 * time.Hour, time.Hour},
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

func TestQueriesEscapeNamespaces(t *testing.T) {
	qs := Queries(Options{Window: 7 * 24 * time.Hour, Namespaces: []string{`bad"ns`}})
	if len(qs) != 3 {
		t.Fatalf("%d queries", len(qs))
	}
	for _, q := range qs[:2] {
		if !strings.Contains(q, `=~"bad\"ns"`) || !strings.Contains(q, "[1h]") {
			t.Errorf("query not escaped or not stepped: %s", q)
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
	return model.Vector{}, f.warns, f.infos, f.err
}
func (f fake) QueryRange(context.Context, string, v1.Range, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return f.val, f.warns, f.infos, f.err
}

func TestFetchReportsWarningsAndInfos(t *testing.T) {
	res, err := Fetch(context.Background(), fake{val: model.Matrix{}, warns: v1.Warnings{"partial response"}, infos: v1.Infos{"metric might not be a counter"}}, Options{Window: time.Hour, Now: time.Unix(1e9, 0)})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(res.Warnings, "\n")
	if !strings.Contains(joined, "prometheus warning (aggregate traffic): partial response") || !strings.Contains(joined, "prometheus info") {
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
			res, err := Fetch(context.Background(), fake{val: model.Matrix{}, warns: tt.warns, infos: tt.infos}, Options{Window: time.Hour, Now: time.Unix(1e9, 0)})
			if err != nil {
				t.Fatal(err)
			}
			if res.Partial != tt.want {
				t.Errorf("Partial = %v, want %v", res.Partial, tt.want)
			}
		})
	}
}

func TestFetchUnreachable(t *testing.T) {
	_, err := Fetch(context.Background(), fake{err: errors.New("connection refused")}, Options{Window: time.Hour, URL: "http://prom:9090"})
	if err == nil || !strings.Contains(err.Error(), "http://prom:9090") || !strings.Contains(err.Error(), "check --prometheus-url") {
		t.Errorf("err = %v", err)
	}
}

func TestFetchParsesPlaintextWithLastSeen(t *testing.T) {
	start := time.Unix(1e9, 0)
	m := model.Matrix{{
		Metric: model.Metric{"destination_workload_namespace": "orders", "destination_workload": "orders", "source_workload": "unknown", "source_workload_namespace": "unknown", "mm_kind": "requests"},
		Values: []model.SamplePair{{Timestamp: model.TimeFromUnixNano(start.UnixNano()), Value: 60}, {Timestamp: model.TimeFromUnixNano(start.Add(time.Minute).UnixNano()), Value: 0}},
	}}
	res := &Result{Inbound: map[string]*Traffic{}, Reporting: map[string]bool{}}
	if err := res.parseDetail(m); err != nil {
		t.Fatal(err)
	}
	if len(res.Plaintext) != 1 || res.Plaintext[0].Requests != 60 || !res.Plaintext[0].LastSeen.Equal(start) {
		t.Errorf("flows = %+v", res.Plaintext)
	}
}
