package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/kube"
	"github.com/mtls-migrate/mtls-migrate/internal/promclient"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry/telemetrytest"
)

func TestPlanFlags(t *testing.T) {
	tests := []struct {
		args  []string
		code  int
		check func(*planOptions) bool
	}{
		{nil, 0, func(o *planOptions) bool {
			return o.Window == 7*24*time.Hour && o.GateWindow.Std() == time.Minute && o.Soak.Std() == 5*time.Minute && o.Output == "table"
		}},
		{[]string{"--window", "1h", "--gate-window", "10s", "--soak", "30s", "-o", "yaml", "--out", "p.yaml"}, 0, func(o *planOptions) bool {
			return o.Window == time.Hour && o.GateWindow.Std() == 10*time.Second && o.Soak.Std() == 30*time.Second && o.Out == "p.yaml"
		}},
		{[]string{"--namespaces", "cart,checkout", "--exclude-namespaces", "ad"}, 0, func(o *planOptions) bool {
			return strings.Join(o.Namespaces, ",") == "cart,checkout" && o.Exclude[0] == "ad"
		}},
		{[]string{"--window", "soon"}, cli.ExitUsage, nil},
		{[]string{"--gate-window", "0s"}, cli.ExitUsage, nil},
		{[]string{"--soak", "-1m"}, cli.ExitUsage, nil},
		{[]string{"-o", "xml"}, cli.ExitUsage, nil},
		{[]string{"--namespaces", "a", "--exclude-namespaces", "a"}, cli.ExitUsage, nil},
		{nil, 0, func(o *planOptions) bool { return o.PrometheusSteps == 0 }},
		{[]string{"--prometheus-steps", "7"}, 0, func(o *planOptions) bool { return o.PrometheusSteps == 7 }},
		{[]string{"--prometheus-steps", "168"}, 0, func(o *planOptions) bool { return o.PrometheusSteps == 168 }},
		{[]string{"--prometheus-steps", "169"}, cli.ExitUsage, nil},
		{[]string{"--prometheus-steps", "-1"}, cli.ExitUsage, nil},
		{[]string{"--prometheus-steps", "many"}, cli.ExitUsage, nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, ran, err := parseCommand(t, newPlanCmd, tt.args)
			if cli.Code(err) != tt.code {
				t.Fatalf("exit %d (%v), want %d", cli.Code(err), err, tt.code)
			}
			if tt.check != nil && (!ran || !tt.check(got)) {
				t.Fatalf("options = %+v", got)
			}
		})
	}
}

// promAPI is a v1.API whose queries a telemetrytest.Fake answers.
type promAPI struct {
	v1.API
	fake *telemetrytest.Fake
}

func (p promAPI) Query(ctx context.Context, q string, ts time.Time, o ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return p.fake.Query(ctx, q, ts, o...)
}

func (p promAPI) QueryRange(ctx context.Context, q string, r v1.Range, o ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return p.fake.QueryRange(ctx, q, r, o...)
}

func TestPlanRunExitCodes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		err  error
		code int
		want string
	}{
		{"table", nil, nil, 0, "STAGE"},
		{"unknown namespace", []string{"--namespaces", "nope"}, nil, cli.ExitUsage, "nope"},
		{"unreachable prometheus", nil, errors.New("connection refused"), cli.ExitError, "http://prom.test:9090"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := &bytes.Buffer{}
			f := &factory{streams: genericiooptions.IOStreams{Out: out, ErrOut: &bytes.Buffer{}}, promURL: "http://prom.test:9090", promTimeout: time.Second}
			f.newKubeClients = func() (*kube.Clients, error) {
				return &kube.Clients{Kube: k8sfake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio-injection": "enabled"}}}), Istio: istiofake.NewSimpleClientset()}, nil
			}
			f.newPrometheusAPI = func(promclient.Options) (v1.API, error) {
				return promAPI{fake: &telemetrytest.Fake{Err: tt.err}}, nil
			}
			cmd := newPlanCmd(f, nil)
			cmd.SetArgs(tt.args)
			cmd.SetOut(out)
			cmd.SetErr(&bytes.Buffer{})
			err := cmd.Execute()
			if cli.Code(err) != tt.code {
				t.Fatalf("exit %d (%v), want %d", cli.Code(err), err, tt.code)
			}
			if got := out.String(); err == nil && !strings.Contains(got, tt.want) || err != nil && !strings.Contains(err.Error(), tt.want) {
				t.Errorf("output %q / error %v, want %q", got, err, tt.want)
			}
		})
	}
}

// rangeCounter is a promAPI that counts range queries and their steps
// (sent at once by telemetry.Fetch, hence the mutex).
type rangeCounter struct {
	promAPI
	mu     sync.Mutex
	ranges []v1.Range
}

func (r *rangeCounter) QueryRange(ctx context.Context, q string, rg v1.Range, o ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	r.mu.Lock()
	r.ranges = append(r.ranges, rg)
	r.mu.Unlock()
	return r.promAPI.QueryRange(ctx, q, rg, o...)
}

// TestPlanPrometheusStepsReachTheQueries: --prometheus-steps N turns the
// traffic totals into range queries of N steps; by default they are
// instant queries.
func TestPlanPrometheusStepsReachTheQueries(t *testing.T) {
	for _, tt := range []struct {
		args  []string
		steps int // of each range query; 0: none
	}{
		{nil, 0},
		{[]string{"--prometheus-steps", "7"}, 7},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			prom := &rangeCounter{promAPI: promAPI{fake: &telemetrytest.Fake{}}}
			f := &factory{streams: genericiooptions.IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, promURL: "http://prom.test:9090", promTimeout: time.Second}
			f.newKubeClients = func() (*kube.Clients, error) {
				return &kube.Clients{Kube: k8sfake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio-injection": "enabled"}}}), Istio: istiofake.NewSimpleClientset()}, nil
			}
			f.newPrometheusAPI = func(promclient.Options) (v1.API, error) { return prom, nil }
			cmd := newPlanCmd(f, nil)
			cmd.SetArgs(append([]string{"--window", "7d"}, tt.args...))
			if err := cmd.Execute(); err != nil {
				t.Fatal(err)
			}
			if tt.steps == 0 {
				if len(prom.ranges) != 0 {
					t.Fatalf("%d range queries, want instant queries only", len(prom.ranges))
				}
				return
			}
			if len(prom.ranges) == 0 {
				t.Fatal("no range query")
			}
			for _, r := range prom.ranges {
				if n := int(r.End.Sub(r.Start)/r.Step) + 1; r.Step != 24*time.Hour || n != tt.steps {
					t.Errorf("range %v..%v step %v: %d points, want %d of a day", r.Start, r.End, r.Step, n, tt.steps)
				}
			}
		})
	}
}
