package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/kube"
	"github.com/mtls-migrate/mtls-migrate/internal/promclient"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/status"
)

func TestStatusFlags(t *testing.T) {
	tests := []struct {
		args  []string
		code  int
		check func(*statusOptions) bool
	}{
		{nil, 0, func(o *statusOptions) bool {
			return o.Output == cli.OutputTable && o.StateNamespace == state.DefaultNamespace && o.RateWindow == 5*time.Minute && o.PlanPath == ""
		}},
		{[]string{"--plan", "p.yaml", "--state-namespace", "ops", "--rate-window", "1m", "-o", "json"}, 0, func(o *statusOptions) bool {
			return o.PlanPath == "p.yaml" && o.StateNamespace == "ops" && o.RateWindow == time.Minute && o.Output == cli.OutputJSON
		}},
		{[]string{"-o", "wide"}, cli.ExitUsage, nil},
		{[]string{"--state-namespace", ""}, cli.ExitUsage, nil},
		{[]string{"--rate-window", "0s"}, cli.ExitUsage, nil},
		{[]string{"--rate-window", "soon"}, cli.ExitUsage, nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, ran, err := parseCommand(t, newStatusCmd, tt.args)
			if cli.Code(err) != tt.code {
				t.Fatalf("exit %d (%v), want %d", cli.Code(err), err, tt.code)
			}
			if tt.check != nil && (!ran || !tt.check(got)) {
				t.Fatalf("options = %+v", got)
			}
		})
	}
}

// statusProm is a v1.API answering the plaintext query.
type statusProm struct {
	v1.API
	vec model.Vector
	err error
}

func (p statusProm) Query(context.Context, string, time.Time, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return p.vec, nil, nil, p.err
}

func statusPeerAuth(ns string, mode apisecurity.PeerAuthentication_MutualTLS_Mode) *securityv1.PeerAuthentication {
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns}}
	pa.Spec.Mtls = &apisecurity.PeerAuthentication_MutualTLS{Mode: mode}
	return pa
}

func TestStatusRun(t *testing.T) {
	answer := model.Vector{&model.Sample{Metric: model.Metric{"destination_workload_namespace": "cart", "mm_kind": "requests"}, Value: 0.5}}
	tests := []struct {
		name    string
		promURL string
		prom    statusProm
		args    []string
		code    int
		// out and stderr are substrings to find.
		out, stderr []string
	}{
		{"no Prometheus: rate unknown, warned", "", statusProm{}, nil, 0,
			[]string{"cart", "STRICT", "unknown", `no migration state in namespace "mtls-migrate"`}, []string{"no Prometheus configured"}},
		{"unreachable Prometheus: rate unknown, warned", "http://prom.test:9090", statusProm{err: errors.New("connection refused")}, nil, 0,
			[]string{"cart", "unknown"}, []string{"http://prom.test:9090 did not answer: connection refused"}},
		{"json with rates", "http://prom.test:9090", statusProm{vec: answer}, []string{"-o", "json"}, 0,
			[]string{`"plaintextRate": 0.5`, `"rootNamespace": "istio-system"`}, nil},
		{"yaml uses the json names", "http://prom.test:9090", statusProm{vec: answer}, []string{"-o", "yaml"}, 0,
			[]string{"rootNamespace: istio-system", "plaintextRate: 0.5"}, nil},
		{"plan adds its pending stages", "", statusProm{}, []string{"--plan", "../../plans/testdata/valid.yaml"}, 0,
			[]string{"plan online-boutique (sha256:", "pending"}, nil},
		{"unreadable plan is bad input", "", statusProm{}, []string{"--plan", "testdata/nope.yaml"}, cli.ExitUsage, nil, nil},
		{"malformed Prometheus URL is bad usage", "ftp://prom", statusProm{}, nil, cli.ExitUsage, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut := &bytes.Buffer{}, &bytes.Buffer{}
			f := &factory{streams: genericiooptions.IOStreams{Out: out, ErrOut: errOut}, promURL: tt.promURL, promTimeout: time.Second}
			f.newKubeClients = func() (*kube.Clients, error) {
				return &kube.Clients{
					Kube: k8sfake.NewClientset(
						&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}},
						&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mtls-migrate"}},
						&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cart", Labels: map[string]string{"istio-injection": "enabled"}}},
					),
					Istio: istiofake.NewSimpleClientset(statusPeerAuth("cart", apisecurity.PeerAuthentication_MutualTLS_STRICT)),
				}, nil
			}
			f.newPrometheusAPI = func(promclient.Options) (v1.API, error) { return tt.prom, nil }
			cmd := newStatusCmd(f, nil)
			cmd.SetArgs(tt.args)
			cmd.SetOut(out)
			cmd.SetErr(&bytes.Buffer{})
			err := cmd.Execute()
			if cli.Code(err) != tt.code {
				t.Fatalf("exit %d (%v), want %d", cli.Code(err), err, tt.code)
			}
			for _, s := range tt.out {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, out.String())
				}
			}
			for _, s := range tt.stderr {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, errOut.String())
				}
			}
			if tt.code == 0 && len(tt.args) == 2 && tt.args[1] == "json" {
				var rep status.Report
				if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
					t.Fatalf("-o json is not a report: %v\n%s", err, out.String())
				}
				if len(rep.Namespaces) != 2 || rep.Namespaces[1].Name != "cart" || rep.Namespaces[1].PlaintextRate == nil || *rep.Namespaces[1].PlaintextRate != 0.5 {
					t.Errorf("report %+v", rep)
				}
			}
		})
	}
}
