package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

func needIstiod(t *testing.T, s *sandbox.Sandbox) {
	t.Helper()
	if s.Istiod() == nil {
		t.Skip("the sandbox runs without istiod (no cached build: scripts/build-istiod.sh)")
	}
}

// TestE2EIstiodListenersEnforceStrict: with the data plane's own rules
// blinded (they see no PeerAuthentication, so they would accept
// plaintext), a namespace-wide STRICT still resets plaintext to prod/api,
// because the sidecar matches the connection against the filter chains of
// the virtualInbound listener istiod pushed; and the cross-check reports
// the disagreement with its detail.
func TestE2EIstiodListenersEnforceStrict(t *testing.T) {
	s := sb(t)
	needIstiod(t, s)
	d := dyn(t, s)
	deleteAllPolicies(t, d)
	s.BlindOwnRules(true)
	t.Cleanup(func() {
		deleteAllPolicies(t, d)
		s.BlindOwnRules(false)
		time.Sleep(dataplane.DisagreementSettle) // let istiod push PERMISSIVE back before the next test
		s.ResetDisagreements()
	})
	create(t, d, peerAuthn("prod", "default", nil, "STRICT", nil))
	ctx := context.Background()
	var plain, mtls string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		plain, mtls = s.ProbePod(ctx, "prod", "api", 8080, false), s.ProbePod(ctx, "prod", "api", 8080, true)
		if plain == dataplane.OutcomeReset && mtls == dataplane.OutcomeSuccess {
			break
		}
	}
	if plain != dataplane.OutcomeReset || mtls != dataplane.OutcomeSuccess {
		t.Fatalf("STRICT from istiod's listeners: plaintext %s, mTLS %s; want reset and success", plain, mtls)
	}
	if m, _ := s.EffectiveMode("prod", "api", 8080); m != dataplane.ModePermissive {
		t.Fatalf("the blinded rules say %s, want PERMISSIVE (the test would prove nothing)", m)
	}
	// Past the settle time the decisions are cross-checked.
	time.Sleep(dataplane.DisagreementSettle + 200*time.Millisecond)
	if out := s.ProbePod(ctx, "prod", "api", 8080, false); out != dataplane.OutcomeReset {
		t.Fatalf("plaintext after settling: %s, want reset", out)
	}
	var found *dataplane.Disagreement
	for _, dis := range s.Disagreements() {
		if dis.Direction == "inbound" && strings.HasPrefix(dis.Pod, "prod/api-") && dis.Port == 8080 && dis.Peer == "plaintext" {
			found = &dis
		}
	}
	if found == nil {
		t.Fatalf("no inbound disagreement recorded for prod/api:8080 plaintext; have %v", s.Disagreements())
	}
	if !strings.HasPrefix(found.Istiod, "reset") || !strings.Contains(found.Ours, "accept plaintext (PERMISSIVE)") {
		t.Errorf("disagreement detail: %s", found)
	}
	t.Logf("reported: %s", found)
}

const istiodMatrixScenario = `
name: istiod-matrix
scrapeInterval: 1s
namespaces:
  - {name: prod, injection: true}
  - {name: other, injection: true}
  - {name: legacy}
workloads:
  - name: api
    namespace: prod
    ports: [{name: http, port: 8080}, {name: http-admin, port: 9090}, {name: tcp, port: 7070, protocol: tcp}, {name: tcp-db, port: 5432, protocol: tcp}]
  - {name: worker, namespace: prod, ports: [{name: http, port: 8080}]}
  - {name: client, namespace: other}
  - {name: curl, namespace: legacy, ports: [{name: http, port: 8080}]}
services:
  - {name: api, namespace: prod, ports: [{name: http, port: 8080}, {name: http-admin, port: 9090}, {name: tcp-db, port: 5432}]}
  - {name: api-web, namespace: prod, selector: {app: api}, ports: [{name: http-web, port: 80, targetPort: 8080}]}
  - {name: worker, namespace: prod, ports: [{name: http, port: 8080}]}
  - {name: curl, namespace: legacy, ports: [{name: http, port: 8080}]}
`

// startIstiodMatrix starts a sandbox of istiodMatrixScenario with istiod.
func startIstiodMatrix(t *testing.T) *sandbox.Sandbox {
	t.Helper()
	scn, err := scenario.Parse([]byte(istiodMatrixScenario))
	if err != nil {
		t.Fatal(err)
	}
	s := startScenario(t, "quiet-namespace.yaml", func(sc *scenario.Scenario) { *sc = *scn })
	needIstiod(t, s)
	return s
}

// TestE2EIstiodDecidesLikeOurRules runs policy sets through istiod and the
// data plane's own rules at once and lists where they decide differently:
// inbound (plaintext and mTLS to every port, including 7070, which no
// Service names: the passthrough chains) and outbound (other/client to
// every Service port with auto mTLS and DestinationRules). Every
// disagreement fails the test with the detail.
func TestE2EIstiodDecidesLikeOurRules(t *testing.T) {
	s := startIstiodMatrix(t)
	d := dyn(t, s)
	api := map[string]string{"app": "api"}
	dr := func(ns, name, host, mode string, ports map[int64]string) *unstructured.Unstructured {
		tp := map[string]any{}
		if mode != "" {
			tp["tls"] = map[string]any{"mode": mode}
		}
		var pls []any
		for p, m := range ports {
			pls = append(pls, map[string]any{"port": map[string]any{"number": p}, "tls": map[string]any{"mode": m}})
		}
		if pls != nil {
			tp["portLevelSettings"] = pls
		}
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec":     map[string]any{"host": host, "trafficPolicy": tp},
		}}
	}
	cases := []struct {
		name    string
		objects []*unstructured.Unstructured
	}{
		{"no policy", nil},
		{"namespace STRICT", []*unstructured.Unstructured{peerAuthn("prod", "default", nil, "STRICT", nil)}},
		{"mesh STRICT", []*unstructured.Unstructured{peerAuthn("istio-system", "default", nil, "STRICT", nil)}},
		{"namespace DISABLE", []*unstructured.Unstructured{peerAuthn("prod", "default", nil, "DISABLE", nil)}},
		{"workload DISABLE, port 9090 STRICT", []*unstructured.Unstructured{peerAuthn("prod", "api", api, "DISABLE", map[string]string{"9090": "STRICT"})}},
		{"workload STRICT, port 7070 (no Service) PERMISSIVE", []*unstructured.Unstructured{peerAuthn("prod", "api", api, "STRICT", map[string]string{"7070": "PERMISSIVE"})}},
		{"workload STRICT, port 9090 DISABLE", []*unstructured.Unstructured{peerAuthn("prod", "api", api, "STRICT", map[string]string{"9090": "DISABLE"})}},
		{"namespace STRICT, workload UNSET, port 9090 PERMISSIVE", []*unstructured.Unstructured{
			peerAuthn("prod", "default", nil, "STRICT", nil), peerAuthn("prod", "api", api, "UNSET", map[string]string{"9090": "PERMISSIVE"})}},
		{"workload STRICT, port-level keyed by the Service port 80 (ignored: target port 8080)", []*unstructured.Unstructured{peerAuthn("prod", "api", api, "PERMISSIVE", map[string]string{"80": "STRICT"})}},
		{"namespace STRICT, TCP port 5432 DISABLE", []*unstructured.Unstructured{peerAuthn("prod", "default", nil, "STRICT", nil), peerAuthn("prod", "api", api, "", map[string]string{"5432": "DISABLE"})}},
		{"root selector ignored", []*unstructured.Unstructured{peerAuthn("istio-system", "api", api, "STRICT", nil)}},
		{"DR DISABLE in the client namespace", []*unstructured.Unstructured{dr("other", "api", "api.prod.svc.cluster.local", "DISABLE", nil)}},
		{"DR ISTIO_MUTUAL to a sidecar-less server", []*unstructured.Unstructured{dr("other", "curl", "curl.legacy.svc.cluster.local", "ISTIO_MUTUAL", nil)}},
		{"DR port 9090 DISABLE in the service namespace", []*unstructured.Unstructured{dr("prod", "api", "api", "", map[int64]string{9090: "DISABLE"})}},
		{"DR SIMPLE from a meshed client (TLS without Istio's ALPN)", []*unstructured.Unstructured{dr("other", "api", "api.prod.svc.cluster.local", "SIMPLE", nil)}},
		{"DR wildcard in the root namespace DISABLE", []*unstructured.Unstructured{dr("istio-system", "all", "*.local", "DISABLE", nil)}},
	}
	ctx := context.Background()
	var all []string
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			deleteAll(t, s)
			for _, o := range tc.objects {
				gvr := dataplane.PeerAuthenticationGVR
				if o.GetKind() == "DestinationRule" {
					gvr = dataplane.DestinationRuleGVR
				}
				if _, err := d.Resource(gvr).Namespace(o.GetNamespace()).Create(ctx, o, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(dataplane.DisagreementSettle + 500*time.Millisecond)
			s.ResetDisagreements()
			for _, w := range []struct {
				workload string
				ports    []int
			}{{"api", []int{8080, 9090, 7070, 5432}}, {"worker", []int{8080}}} {
				for _, port := range w.ports {
					for _, mtls := range []bool{false, true} {
						s.ProbePod(ctx, "prod", w.workload, port, mtls)
					}
				}
			}
			for _, to := range []string{"api.prod:8080", "api.prod:9090", "api.prod:5432", "api-web.prod:80", "worker.prod:8080", "curl.legacy:8080"} {
				s.Probe(ctx, "other/client", to, sandbox.TLSAuto)
			}
			for _, dis := range s.Disagreements() {
				t.Errorf("disagreement: %s", dis)
				all = append(all, tc.name+": "+dis.String())
			}
			decided, undecided := s.EnforcerDecisions()
			if decided["inbound"] == 0 || decided["outbound"] == 0 || len(undecided) > 0 {
				t.Errorf("decisions from istiod's configuration %v, refused for want of one %v: want some of each direction and no refusal", decided, undecided)
			}
		})
	}
	deleteAll(t, s)
	time.Sleep(dataplane.DisagreementSettle)
	s.ResetDisagreements()
	t.Logf("%d disagreements:\n%s", len(all), strings.Join(all, "\n"))
}

func deleteAll(t *testing.T, s *sandbox.Sandbox) {
	t.Helper()
	d := dyn(t, s)
	deleteAllPolicies(t, d)
	ctx := context.Background()
	list, err := d.Resource(dataplane.DestinationRuleGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range list.Items {
		if err := d.Resource(dataplane.DestinationRuleGVR).Namespace(o.GetNamespace()).Delete(ctx, o.GetName(), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	aps, err := d.Resource(authorizationPolicyGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range aps.Items {
		if err := d.Resource(authorizationPolicyGVR).Namespace(o.GetNamespace()).Delete(ctx, o.GetName(), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// authorizationPolicyGVR is Istio's AuthorizationPolicy.
var authorizationPolicyGVR = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}

func authzPolicy(ns, name string, annotations map[string]string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
	if annotations != nil {
		u.SetAnnotations(annotations)
	}
	return u
}

// TestE2EIstiodAuthorizationPolicies: the sidecars enforce the RBAC
// filters istiod renders from AuthorizationPolicies into their inbound
// chains, for HTTP requests (403) and TCP connections (closed), and
// evaluate dry-run policies as shadow rules without enforcing them. Each
// case has an outcome the policy changes, checked before the policy too,
// so a data plane that ignored RBAC fails.
func TestE2EIstiodAuthorizationPolicies(t *testing.T) {
	s := startIstiodMatrix(t)
	d := dyn(t, s)
	ctx := context.Background()
	api := map[string]any{"matchLabels": map[string]any{"app": "api"}}
	type probe struct {
		name string
		do   func() string
		// want, or also (when set) also: a denied TCP connection is closed,
		// and the client sees a FIN or, when its bytes were unread, an RST.
		want, also string
	}
	plain := func(port int) func() string {
		return func() string { return s.ProbePod(ctx, "prod", "api", port, false) }
	}
	prober := func(port int) func() string {
		return func() string { return s.ProbePod(ctx, "prod", "api", port, true) }
	}
	fromClient := func(to string) func() string {
		return func() string { return s.Probe(ctx, "other/client", to, sandbox.TLSAuto) }
	}
	denied403 := dataplane.StatusOutcome(403)
	cases := []struct {
		name   string
		policy *unstructured.Unstructured
		probes []probe
		// shadowDenied: the api pod's shadow rules denied something.
		shadowDenied bool
	}{
		{
			name: "ALLOW only other/client's principal",
			policy: authzPolicy("prod", "from-client", nil, map[string]any{"selector": api, "action": "ALLOW", "rules": []any{
				map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/other/sa/client"}}}}}}}),
			probes: []probe{
				{"plaintext HTTP has no principal", plain(8080), denied403, ""},
				{"the prober's mTLS identity is not allowed", prober(8080), denied403, ""},
				{"other/client over auto mTLS", fromClient("api.prod:8080"), dataplane.OutcomeSuccess, ""},
				{"plaintext TCP connection is closed", plain(5432), dataplane.OutcomeClosed, dataplane.OutcomeReset},
				{"other/client over TCP", fromClient("api.prod:5432"), dataplane.OutcomeSuccess, ""},
			},
		},
		{
			name: "DENY GET on port 9090 from outside prod",
			policy: authzPolicy("prod", "no-admin", nil, map[string]any{"selector": api, "action": "DENY", "rules": []any{map[string]any{
				"from": []any{map[string]any{"source": map[string]any{"notNamespaces": []any{"prod"}}}},
				"to":   []any{map[string]any{"operation": map[string]any{"methods": []any{"GET"}, "ports": []any{"9090"}}}}}}}),
			probes: []probe{
				{"plaintext to 9090", plain(9090), denied403, ""},
				{"other/client to 9090", fromClient("api.prod:9090"), denied403, ""},
				{"plaintext to 8080 is another port", plain(8080), dataplane.OutcomeSuccess, ""},
			},
		},
		{
			name: "dry-run DENY everything",
			policy: authzPolicy("prod", "dry", map[string]string{"istio.io/dry-run": "true"}, map[string]any{"selector": api, "action": "DENY", "rules": []any{
				map[string]any{}}}),
			probes: []probe{
				{"plaintext HTTP still served", plain(8080), dataplane.OutcomeSuccess, ""},
				{"plaintext TCP still served", plain(5432), dataplane.OutcomeSuccess, ""},
			},
			shadowDenied: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			deleteAll(t, s)
			time.Sleep(dataplane.DisagreementSettle)
			// Without the policy every probe succeeds: the policy is what
			// changes the outcome.
			for _, p := range tc.probes {
				if got := p.do(); got != dataplane.OutcomeSuccess {
					t.Fatalf("before the policy, %s: %s, want success", p.name, got)
				}
			}
			if _, err := d.Resource(authorizationPolicyGVR).Namespace("prod").Create(ctx, tc.policy, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			s.ResetAuthzStats()
			s.ResetDisagreements()
			for _, p := range tc.probes {
				var got string
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
					if got = p.do(); got == p.want || (p.also != "" && got == p.also) {
						break
					}
				}
				if got != p.want && (p.also == "" || got != p.also) {
					t.Errorf("%s: %s, want %s", p.name, got, p.want)
				}
			}
			counts := func() (shadowDenied, denied int64) {
				for pod, st := range s.AuthzStats() {
					if strings.HasPrefix(pod, "prod/api-") {
						shadowDenied += st.ShadowDenied
						denied += st.Denied
					}
				}
				return shadowDenied, denied
			}
			shadowDenied, denied := counts()
			// The dry-run probes succeed with or without the push: probe
			// until the shadow rules have judged one.
			for deadline := time.Now().Add(10 * time.Second); tc.shadowDenied && shadowDenied == 0 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				for _, p := range tc.probes {
					if got := p.do(); got != p.want {
						t.Errorf("%s: %s, want %s", p.name, got, p.want)
					}
				}
				shadowDenied, denied = counts()
			}
			if tc.shadowDenied && (shadowDenied == 0 || denied != 0) {
				t.Errorf("dry-run: %d shadow denials, %d denials; want some shadow denials and no denial", shadowDenied, denied)
			}
			if _, undecided := s.EnforcerDecisions(); len(undecided) > 0 {
				t.Errorf("connections refused for want of a decision (istiod's configuration did not decode?): %v", undecided)
			}
			t.Logf("authorization counts: %+v", s.AuthzStats())
		})
	}
	deleteAll(t, s)
}
