// Package telemetrytest is a fake Prometheus API for tests and benchmarks:
// it answers the planner's queries from a list of flows, as Prometheus
// would after `sum by`, and counts the queries.
package telemetrytest

import (
	"context"
	"strings"
	"sync"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
)

// Flow is traffic of one kind between two workloads, with a constant
// increase per step.
type Flow struct {
	Reporter                    string // "destination" (default) or "source"
	DstNS, DstWorkload          string
	SrcNS, SrcWorkload, SrcPrin string
	// CSP is the connection security policy label ("mutual_tls", "none").
	CSP string
	// Kind is "requests" (default), "connections" or "bytes".
	Kind    string
	PerStep float64
	// LastSteps, when > 0, puts the increase only in the last n steps.
	LastSteps int
}

// Fake answers Query and QueryRange.
type Fake struct {
	Flows    []Flow
	Versions map[string]string // component -> tag
	Err      error
	Warnings v1.Warnings
	Infos    v1.Infos

	mu      sync.Mutex
	calls   []string
	answers map[string]model.Value
}

// Calls returns the queries received.
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Query answers the Istio version query.
func (f *Fake) Query(_ context.Context, q string, ts time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	f.mu.Lock()
	f.calls = append(f.calls, q)
	f.mu.Unlock()
	if f.Err != nil {
		return nil, nil, nil, f.Err
	}
	var vec model.Vector
	for c, t := range f.Versions {
		vec = append(vec, &model.Sample{Metric: model.Metric{istiometrics.LabelComponent: model.LabelValue(c), istiometrics.LabelTag: model.LabelValue(t)}, Value: 1, Timestamp: model.TimeFromUnixNano(ts.UnixNano())})
	}
	return vec, f.Warnings, f.Infos, nil
}

// QueryRange answers the traffic queries; the answer for a query is built
// once and kept (Prepare builds it ahead, for benchmarks).
func (f *Fake) QueryRange(_ context.Context, q string, r v1.Range, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	f.mu.Lock()
	f.calls = append(f.calls, q)
	f.mu.Unlock()
	if f.Err != nil {
		return nil, nil, nil, f.Err
	}
	return f.answer(q, r), f.Warnings, f.Infos, nil
}

// Prepare builds the answer to q ahead of time.
func (f *Fake) Prepare(q string, r v1.Range) { f.answer(q, r) }

func (f *Fake) answer(q string, r v1.Range) model.Value {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.answers[q]; ok {
		return v
	}
	detail := strings.Contains(q, istiometrics.NotMutualTLS)
	steps := int(r.End.Sub(r.Start)/r.Step) + 1
	type acc struct {
		m    model.Metric
		vals []float64
	}
	series := map[string]*acc{}
	var order []string
	for _, fl := range f.Flows {
		rep := fl.Reporter
		if rep == "" {
			rep = istiometrics.ReporterDestination
		}
		kind := fl.Kind
		if kind == "" {
			kind = "requests"
		}
		var m model.Metric
		if detail {
			if rep != istiometrics.ReporterDestination || fl.CSP == istiometrics.MutualTLS {
				continue
			}
			m = model.Metric{istiometrics.LabelDestinationWorkloadNamespace: lv(fl.DstNS), istiometrics.LabelDestinationWorkload: lv(fl.DstWorkload),
				istiometrics.LabelSourceWorkload: lv(fl.SrcWorkload), istiometrics.LabelSourceWorkloadNamespace: lv(fl.SrcNS), istiometrics.LabelSourcePrincipal: lv(fl.SrcPrin), "mm_kind": lv(kind)}
		} else {
			if kind == "bytes" {
				continue
			}
			csp := fl.CSP
			if rep == istiometrics.ReporterSource {
				csp = istiometrics.Unknown
			}
			m = model.Metric{istiometrics.LabelReporter: lv(rep), istiometrics.LabelDestinationWorkloadNamespace: lv(fl.DstNS), istiometrics.LabelSourceWorkloadNamespace: lv(fl.SrcNS),
				istiometrics.LabelConnectionSecurityPolicy: lv(csp), "mm_kind": lv(kind)}
		}
		key := m.String()
		a := series[key]
		if a == nil {
			a = &acc{m: m, vals: make([]float64, steps)}
			series[key] = a
			order = append(order, key)
		}
		for i := range a.vals {
			if fl.LastSteps == 0 || i >= steps-fl.LastSteps {
				a.vals[i] += fl.PerStep
			}
		}
	}
	mat := make(model.Matrix, 0, len(order))
	for _, k := range order {
		a := series[k]
		ss := &model.SampleStream{Metric: a.m, Values: make([]model.SamplePair, steps)}
		for i, v := range a.vals {
			ss.Values[i] = model.SamplePair{Timestamp: model.TimeFromUnixNano(r.Start.Add(time.Duration(i) * r.Step).UnixNano()), Value: model.SampleValue(v)}
		}
		mat = append(mat, ss)
	}
	if f.answers == nil {
		f.answers = map[string]model.Value{}
	}
	f.answers[q] = mat
	return mat
}

func lv(s string) model.LabelValue {
	if s == "" {
		return istiometrics.Unknown
	}
	return model.LabelValue(s)
}
