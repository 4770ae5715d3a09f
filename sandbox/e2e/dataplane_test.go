// Package e2e holds the sandbox's end-to-end tests: a real kube-apiserver, a
// real Prometheus and the simulated data plane, judged by ground truth and by
// what Prometheus returns.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

const testScenario = `
name: e2e
scrapeInterval: 1s
namespaces:
  - {name: prod, injection: true}
  - {name: other, injection: true}
  - {name: legacy}
workloads:
  - name: api
    namespace: prod
    ports: [{name: http, port: 8080}, {name: http-admin, port: 9090}]
  - {name: worker, namespace: prod, ports: [{name: http, port: 8080}]}
  - {name: client, namespace: other}
  - {name: curl, namespace: legacy}
services:
  - {name: api, namespace: prod, ports: [{name: http, port: 8080}, {name: http-admin, port: 9090}]}
  - {name: worker, namespace: prod, ports: [{name: http, port: 8080}]}
flows:
  - {name: mtls-api, from: other/client, to: "api.prod:8080", rate: 5}
  - {name: plain-api, from: legacy/curl, to: "api.prod:8080", rate: 5}
  - {name: mtls-worker, from: other/client, to: "worker.prod:8080", rate: 2}
`

var (
	once   sync.Once
	shared *sandbox.Sandbox
	why    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		for _, d := range shared.Disagreements() {
			fmt.Fprintf(os.Stderr, "istiod and the sandbox's rules disagree: %s\n", d)
			code = 1
		}
		if _, undecided := shared.EnforcerDecisions(); len(undecided) > 0 {
			fmt.Fprintf(os.Stderr, "refused for want of istiod's configuration: %v\n", undecided)
			code = 1
		}
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop sandbox:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// sb returns the sandbox shared by every test (startup costs seconds).
func sb(t *testing.T) *sandbox.Sandbox {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	once.Do(func() {
		if _, err := cluster.FindAPIServerBinary(""); err != nil {
			why = "no kube-apiserver binary: run scripts/build-kube-apiserver.sh (" + err.Error() + ")"
			return
		}
		if _, err := exec.LookPath("prometheus"); err != nil {
			why = "no prometheus on PATH: run scripts/install-prometheus.sh"
			return
		}
		scn, err := scenario.Parse([]byte(testScenario))
		if err != nil {
			why = err.Error()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		began := time.Now()
		shared, err = sandbox.Start(ctx, sandbox.Options{Scenario: scn, ScrapeInterval: time.Second})
		if err != nil {
			why = "sandbox did not start: " + err.Error()
			return
		}
		fmt.Fprintf(os.Stderr, "sandbox started in %s\n", time.Since(began).Round(100*time.Millisecond))
	})
	if shared == nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	return shared
}

func dyn(t *testing.T, s *sandbox.Sandbox) dynamic.Interface {
	d, err := dynamic.NewForConfig(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func peerAuthn(ns, name string, selector map[string]string, mode string, ports map[string]string) *unstructured.Unstructured {
	spec := map[string]any{}
	if mode != "" {
		spec["mtls"] = map[string]any{"mode": mode}
	}
	if selector != nil {
		ml := map[string]any{}
		for k, v := range selector {
			ml[k] = v
		}
		spec["selector"] = map[string]any{"matchLabels": ml}
	}
	if ports != nil {
		pl := map[string]any{}
		for p, m := range ports {
			pl[p] = map[string]any{"mode": m}
		}
		spec["portLevelMtls"] = pl
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
		"metadata": map[string]any{"name": name, "namespace": ns}, "spec": spec,
	}}
}

func create(t *testing.T, d dynamic.Interface, u *unstructured.Unstructured) {
	t.Helper()
	_, err := d.Resource(dataplane.PeerAuthenticationGVR).Namespace(u.GetNamespace()).Create(context.Background(), u, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create PeerAuthentication %s/%s: %v", u.GetNamespace(), u.GetName(), err)
	}
}

func deleteAllPolicies(t *testing.T, d dynamic.Interface) {
	t.Helper()
	ctx := context.Background()
	list, err := d.Resource(dataplane.PeerAuthenticationGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if err := d.Resource(dataplane.PeerAuthenticationGVR).Namespace(p.GetNamespace()).Delete(ctx, p.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
}

func query(t *testing.T, s *sandbox.Sandbox, q string) float64 {
	t.Helper()
	api, err := s.PrometheusAPI()
	if err != nil {
		t.Fatal(err)
	}
	v, _, _, err := api.Query(context.Background(), q, time.Now())
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	vec, _ := v.(model.Vector)
	sum := 0.0
	for _, s := range vec {
		sum += float64(s.Value)
	}
	return sum
}

// eventually polls a Prometheus query until it is > 0.
func eventuallyPositive(t *testing.T, s *sandbox.Sandbox, q string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if query(t, s, q) > 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("Prometheus: %s stayed empty for %s", q, within)
}

func TestE2ENoPolicyEverythingSucceeds(t *testing.T) {
	s := sb(t)
	d := dyn(t, s)
	deleteAllPolicies(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, f := range []string{"mtls-api", "plain-api", "mtls-worker"} {
		if err := s.WaitFlow(ctx, f, func(fs sandbox.FlowStats) bool { return fs.Successes() >= 3 }); err != nil {
			t.Fatal(err)
		}
	}
	for name, f := range s.Flows() {
		if f.Failures() > 0 {
			t.Errorf("flow %s failed without any policy: %v", name, f.Outcomes)
		}
	}
	eventuallyPositive(t, s, `istio_requests_total{reporter="destination",destination_workload="api",connection_security_policy="none",source_workload="unknown",source_principal="unknown",response_code="200"}`, 10*time.Second)
	eventuallyPositive(t, s, `istio_requests_total{reporter="destination",destination_workload="api",connection_security_policy="mutual_tls",source_workload="client",source_principal="spiffe://cluster.local/ns/other/sa/client"}`, 10*time.Second)
	eventuallyPositive(t, s, `istio_requests_total{reporter="source",source_workload="client",destination_workload="api",connection_security_policy="unknown"}`, 10*time.Second)
	eventuallyPositive(t, s, `sandbox_flow_requests_total{job="sandbox",flow="plain-api",outcome="success"}`, 10*time.Second)
	eventuallyPositive(t, s, `istio_build{component="proxy",tag="1.28.0",job="envoy-stats",namespace="prod"}`, 10*time.Second)
}

func TestE2EStrictNamespaceBreaksPlaintextOnly(t *testing.T) {
	s := sb(t)
	d := dyn(t, s)
	deleteAllPolicies(t, d)
	t.Cleanup(func() { deleteAllPolicies(t, d) })
	interval := s.ScrapeInterval()

	create(t, d, peerAuthn("prod", "default", nil, "STRICT", nil))
	applied := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*interval+time.Second)
	defer cancel()
	// Ground truth: the plaintext client sees resets within two scrape intervals.
	if err := s.WaitFlow(ctx, "plain-api", func(f sandbox.FlowStats) bool {
		return f.LastOutcome == dataplane.OutcomeReset && f.LastAt.After(applied)
	}); err != nil {
		t.Fatalf("plaintext flow did not fail within two scrape intervals: %v", err)
	}
	s.ResetFlowStats()
	time.Sleep(2 * time.Second)
	flows := s.Flows()
	if f := flows["plain-api"]; f.Successes() != 0 || f.Total == 0 {
		t.Errorf("plain-api under STRICT: %v, want only failures", f.Outcomes)
	}
	for _, name := range []string{"mtls-api", "mtls-worker"} {
		if f := flows[name]; f.Failures() != 0 || f.Total == 0 {
			t.Errorf("%s under STRICT: %v, want only successes", name, f.Outcomes)
		}
	}
	eventuallyPositive(t, s, `sandbox_flow_requests_total{flow="plain-api",outcome="reset"}`, 3*interval+5*time.Second)

	// Deleting the policy restores plaintext.
	if err := d.Resource(dataplane.PeerAuthenticationGVR).Namespace("prod").Delete(context.Background(), "default", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*interval+time.Second)
	defer cancel2()
	if err := s.WaitFlow(ctx2, "plain-api", func(f sandbox.FlowStats) bool {
		return f.LastOutcome == dataplane.OutcomeSuccess && f.LastSuccess.After(deleted)
	}); err != nil {
		t.Fatalf("plaintext flow not restored after deleting the policy: %v", err)
	}
}

// TestE2EPrecedence probes one pod port with plaintext and with mTLS under
// combinations of policies, as Istio resolves them.
func TestE2EPrecedence(t *testing.T) {
	s := sb(t)
	d := dyn(t, s)
	api := map[string]string{"app": "api"}
	type probe struct {
		workload    string
		port        int
		plain, mtls bool // should succeed
	}
	tests := []struct {
		name     string
		policies []*unstructured.Unstructured // created in order, >1s apart
		probes   []probe
	}{
		{"workload over namespace", []*unstructured.Unstructured{
			peerAuthn("prod", "default", nil, "PERMISSIVE", nil),
			peerAuthn("prod", "api-strict", api, "STRICT", nil),
		}, []probe{{"api", 8080, false, true}, {"worker", 8080, true, true}}},
		{"namespace over mesh", []*unstructured.Unstructured{
			peerAuthn("istio-system", "default", nil, "STRICT", nil),
			peerAuthn("prod", "default", nil, "DISABLE", nil),
		}, []probe{{"api", 8080, true, false}}},
		{"mesh-wide strict", []*unstructured.Unstructured{
			peerAuthn("istio-system", "default", nil, "STRICT", nil),
		}, []probe{{"api", 8080, false, true}, {"worker", 8080, false, true}}},
		{"portLevelMtls", []*unstructured.Unstructured{
			peerAuthn("prod", "api", api, "STRICT", map[string]string{"9090": "DISABLE"}),
		}, []probe{{"api", 8080, false, true}, {"api", 9090, true, false}}},
		{"oldest namespace-wide wins (permissive older)", []*unstructured.Unstructured{
			peerAuthn("prod", "zz-legacy-permissive", nil, "PERMISSIVE", nil),
			peerAuthn("prod", "aa-default", nil, "STRICT", nil),
		}, []probe{{"api", 8080, true, true}}},
		{"oldest namespace-wide wins (strict older)", []*unstructured.Unstructured{
			peerAuthn("prod", "zz-strict", nil, "STRICT", nil),
			peerAuthn("prod", "aa-permissive", nil, "PERMISSIVE", nil),
		}, []probe{{"api", 8080, false, true}}},
		{"root namespace selector ignored", []*unstructured.Unstructured{
			peerAuthn("istio-system", "api-strict", api, "STRICT", nil),
		}, []probe{{"api", 8080, true, true}}},
		{"UNSET inherits namespace, port override", []*unstructured.Unstructured{
			peerAuthn("prod", "default", nil, "STRICT", nil),
			peerAuthn("prod", "api", api, "UNSET", map[string]string{"9090": "PERMISSIVE"}),
		}, []probe{{"api", 8080, false, true}, {"api", 9090, true, true}}},
	}
	outcomeOK := func(o string) bool { return o == dataplane.OutcomeSuccess }
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			deleteAllPolicies(t, d)
			t.Cleanup(func() { deleteAllPolicies(t, d) })
			for i, p := range tc.policies {
				if i > 0 {
					time.Sleep(1100 * time.Millisecond) // creationTimestamp has one-second resolution
				}
				create(t, d, p)
			}
			for _, p := range tc.probes {
				var plain, mtls string
				deadline := time.Now().Add(3 * time.Second)
				for {
					plain = s.ProbePod(context.Background(), "prod", p.workload, p.port, false)
					mtls = s.ProbePod(context.Background(), "prod", p.workload, p.port, true)
					if outcomeOK(plain) == p.plain && outcomeOK(mtls) == p.mtls || time.Now().After(deadline) {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
				if outcomeOK(plain) != p.plain || outcomeOK(mtls) != p.mtls {
					t.Errorf("%s:%d plaintext=%s mTLS=%s, want plaintext ok=%v mTLS ok=%v", p.workload, p.port, plain, mtls, p.plain, p.mtls)
				}
			}
		})
	}
}

func TestE2EAPIServerRejectsInvalidPeerAuthentication(t *testing.T) {
	s := sb(t)
	d := dyn(t, s)
	bad := peerAuthn("prod", "bad", nil, "STRICTEST", nil)
	_, err := d.Resource(dataplane.PeerAuthenticationGVR).Namespace("prod").Create(context.Background(), bad, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) {
		t.Fatalf("create PeerAuthentication with mode STRICTEST: err = %v, want Invalid", err)
	}
	if !strings.Contains(err.Error(), "STRICTEST") {
		t.Errorf("error does not name the bad value: %v", err)
	}
}

func TestE2ERBACDeniesUngrantedServiceAccount(t *testing.T) {
	s := sb(t)
	cfg := rest.CopyConfig(s.RESTConfig())
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:prod:api"}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Resource(dataplane.PeerAuthenticationGVR).Namespace("prod").Create(context.Background(), peerAuthn("prod", "sneaky", nil, "DISABLE", nil), metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("ServiceAccount prod/api creating a PeerAuthentication: err = %v, want Forbidden", err)
	}
}

func TestE2EGatewayAndExternal(t *testing.T) {
	s := sb(t)
	if s.GatewayAddr() == "" || s.Addr("api", "prod", 8080) == "" {
		t.Fatalf("addresses missing: gateway %q api %q", s.GatewayAddr(), s.Addr("api", "prod", 8080))
	}
	// A probe from outside through the Service address (kube-proxy path),
	// once istiod has pushed the removal of the earlier tests' policies.
	if why := eventually(5*time.Second, func() string {
		if out := s.Probe(context.Background(), "legacy/curl", "api.prod:8080", sandbox.TLSAuto); out != dataplane.OutcomeSuccess {
			return "probe legacy/curl -> api: " + out
		}
		return ""
	}); why != "" {
		t.Error(why)
	}
}
