package planner

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	apisecurity "istio.io/api/security/v1beta1"
	corev1 "k8s.io/api/core/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/probetarget"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// boutique is Online Boutique, one namespace per service, as in the sandbox.
func boutique() *world {
	w := newWorld()
	type svc struct {
		ns, name string
		port     int32
		target   int32
		proto    string
	}
	svcs := []svc{
		{"frontend", "frontend", 80, 8080, "http"}, {"ad", "adservice", 9555, 9555, "grpc"}, {"cart", "cartservice", 7070, 7070, "grpc"},
		{"checkout", "checkoutservice", 5050, 5050, "grpc"}, {"currency", "currencyservice", 7000, 7000, "grpc"},
		{"email", "emailservice", 5000, 8080, "grpc"}, {"payment", "paymentservice", 50051, 50051, "grpc"},
		{"product-catalog", "productcatalogservice", 3550, 3550, "grpc"}, {"recommendation", "recommendationservice", 8080, 8080, "grpc"},
		{"shipping", "shippingservice", 50051, 50051, "grpc"},
	}
	for _, s := range svcs {
		w.ns(s.ns, true).workload(s.ns, s.name, true, []int32{s.target}).service(s.ns, s.name, "", s.port, s.target, s.proto)
	}
	w.workload("cart", "redis-cart", true, []int32{6379}).service("cart", "redis-cart", "", 6379, 6379, "tcp-redis")
	w.ns("loadgenerator", true).workload("loadgenerator", "loadgenerator", true, nil)
	w.ns("default", false).workload("default", "testcurl", false, nil)
	w.selectorService("frontend", "frontend-external", "frontend", "LoadBalancer", 80, 8080)
	w.gateway("boutique.example.com", "frontend", "frontend", 80)
	m := "mutual_tls"
	w.flow("loadgenerator", "loadgenerator", "frontend", "frontend", m, 5)
	for _, d := range []struct{ ns, wl string }{{"ad", "adservice"}, {"cart", "cartservice"}, {"checkout", "checkoutservice"}, {"currency", "currencyservice"}, {"product-catalog", "productcatalogservice"}, {"recommendation", "recommendationservice"}, {"shipping", "shippingservice"}} {
		w.flow("frontend", "frontend", d.ns, d.wl, m, 2)
	}
	for _, d := range []struct{ ns, wl string }{{"cart", "cartservice"}, {"currency", "currencyservice"}, {"email", "emailservice"}, {"payment", "paymentservice"}, {"product-catalog", "productcatalogservice"}, {"shipping", "shippingservice"}} {
		w.flow("checkout", "checkoutservice", d.ns, d.wl, m, 2)
	}
	w.flow("recommendation", "recommendationservice", "product-catalog", "productcatalogservice", m, 3)
	w.flow("cart", "cartservice", "cart", "redis-cart", m, 3)
	w.flow("istio-system", "istio-ingressgateway", "frontend", "frontend", m, 2)
	w.flow("unknown", "unknown", "frontend", "frontend", "none", 2)
	return w
}

func TestPlanOnlineBoutique(t *testing.T) {
	p := boutique().mustBuild(t)
	var ready []string
	for _, s := range p.Stages {
		if s.Status == plans.StatusReady {
			ready = append(ready, s.Namespace)
		}
	}
	if len(ready) != 10 {
		t.Errorf("ready namespaces = %v, want the 10 other than frontend", ready)
	}
	fe := stageOf(p, "frontend")
	if fe == nil || fe.Status != plans.StatusBlocked || hasRisk(fe, CodeExternalService) == nil || hasRisk(fe, CodePlaintextObserved) == nil {
		t.Fatalf("frontend stage = %+v, want blocked by EXTERNAL_SERVICE and PLAINTEXT_OBSERVED", fe)
	}
	last := p.Stages[len(p.Stages)-1]
	if last.Scope != plans.ScopeMesh || last.Namespace != "istio-system" || last.Status != plans.StatusBlocked {
		t.Errorf("last stage = %s %s %s, want the blocked mesh stage", last.Namespace, last.Scope, last.Status)
	}
	if p.Stages[len(p.Stages)-2].Namespace != "frontend" {
		t.Errorf("frontend (blocked) should come right before the mesh stage")
	}
	var gw, plain bool
	for _, pr := range fe.Probes {
		if pr.Name == "gateway-boutique.example.com" && pr.Resolve == "boutique.example.com:8080:10.0.9.1" && pr.URL == "http://boutique.example.com:8080/" && pr.Expect.Status == 200 {
			gw = true
		}
		if pr.Name == "plaintext-frontend-80" && strings.HasSuffix(pr.URL, ":8080/") && pr.Expect.Refused {
			plain = true
		}
	}
	if !gw || !plain {
		t.Errorf("frontend probes = %+v, want a gateway probe and a plaintext probe", fe.Probes)
	}
	// The grpc port gets an HTTP probe, redis (not HTTP) a tcp one: both
	// must be refused under STRICT.
	cart := stageOf(p, "cart")
	kinds := map[string]plans.ProbeKind{}
	for _, pr := range cart.Probes {
		if pr.Expect.Refused {
			kinds[pr.Name] = pr.Kind
		}
	}
	if len(cart.Probes) != 2 || kinds["plaintext-cartservice-7070"] != plans.ProbeHTTP || kinds["plaintext-redis-cart-6379"] != plans.ProbeTCP {
		t.Errorf("cart probes = %+v, want an http refusal on the grpc port and a tcp refusal on redis", cart.Probes)
	}
	if lg := stageOf(p, "loadgenerator"); lg.Status != plans.StatusReady || !lg.Evidence.HasTelemetry {
		t.Errorf("loadgenerator (a client only) = %s telemetry=%v, want ready with telemetry from its source reports", lg.Status, lg.Evidence.HasTelemetry)
	}
	if p.Metadata.IstioVersion != "1.26.2" || p.Metadata.RootNamespace != "istio-system" || p.Metadata.AutoMTLS == nil || !*p.Metadata.AutoMTLS || p.Metadata.ConfigDigest == "" {
		t.Errorf("metadata = %+v", p.Metadata)
	}
	if stageOf(p, "default") != nil {
		t.Errorf("default (no sidecars, no injection) must not get a stage")
	}
}

func TestPlanOrdersReadyLeastUsedFirst(t *testing.T) {
	p := boutique().mustBuild(t)
	// loadgenerator has no inbound traffic; ad, checkout, email, payment
	// 2/s from one namespace each (ties by name); product-catalog the most.
	if p.Stages[0].Namespace != "loadgenerator" {
		t.Errorf("first stage = %s, want loadgenerator (no inbound traffic)", p.Stages[0].Namespace)
	}
	if p.Stages[1].Namespace != "ad" || p.Stages[2].Namespace != "checkout" {
		t.Errorf("stages 2-3 = %s, %s; want ad, checkout (least traffic, ties by name)", p.Stages[1].Namespace, p.Stages[2].Namespace)
	}
	var prev float64
	for _, s := range p.Stages {
		if s.Status != plans.StatusReady {
			break
		}
		rate := s.Evidence.MTLSRequestRate + s.Evidence.PlaintextRequestRate
		if rate < prev {
			t.Errorf("stage %d (%s) has less traffic (%g) than the one before (%g)", s.Number, s.Namespace, rate, prev)
		}
		prev = rate
		if !strings.Contains(s.Rationale, "ready") {
			t.Errorf("stage %d rationale %q does not say why", s.Number, s.Rationale)
		}
	}
}

func TestPlanIsDeterministic(t *testing.T) {
	a := saved(t, boutique().mustBuild(t))
	for i := 0; i < 3; i++ {
		if b := saved(t, boutique().mustBuild(t)); !bytes.Equal(a, b) {
			t.Fatalf("two builds from the same inputs differ:\n%s\n---\n%s", a, b)
		}
	}
	if _, err := plans.Load("plan.yaml", a); err != nil {
		t.Fatalf("the saved plan does not load back: %v", err)
	}
}

func TestPlanIssuesAtMostSixQueries(t *testing.T) {
	for _, n := range []int{1, 30} {
		w := newWorld()
		for i := 0; i < n; i++ {
			ns := "ns" + itoa(i)
			w.ns(ns, true).workload(ns, "app", true, []int32{8080}).service(ns, "app", "", 80, 8080, "http").flow("x", "x", ns, "app", "mutual_tls", 1)
		}
		w.mustBuild(t)
		if calls := w.prom.Calls(); len(calls) > 6 {
			t.Errorf("%d namespaces: %d queries, want at most 6", n, len(calls))
		}
	}
}

func TestPlanIsTheSameWithRangeQueriesOfADay(t *testing.T) {
	p := boutique().mustBuild(t)
	w := boutique()
	w.opts.PrometheusSteps = 7
	daily := w.mustBuild(t)
	if strings.Join(daily.Metadata.Queries, "\n") == strings.Join(p.Metadata.Queries, "\n") {
		t.Fatalf("PrometheusSteps did not reach the queries: %v", daily.Metadata.Queries)
	}
	p.Metadata.Queries, daily.Metadata.Queries = nil, nil
	if instant, got := saved(t, p), saved(t, daily); !bytes.Equal(instant, got) {
		t.Errorf("plans differ between instant and daily range queries:\n%s\n---\n%s", instant, got)
	}
	if calls := w.prom.Calls(); len(calls) > 6 {
		t.Errorf("%d queries, want at most 6", len(calls))
	}
}

func TestPlanSurfacesPrometheusWarnings(t *testing.T) {
	w := boutique()
	pw, err := buildWith(t, w, func(f *fakeOpts) { f.warnings = []string{"partial response: store 10.0.0.1 unavailable"} })
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range pw.Metadata.Warnings {
		if strings.Contains(m, "partial response") {
			found = true
		}
	}
	if !found {
		t.Errorf("metadata.warnings = %v, want the Prometheus warning", pw.Metadata.Warnings)
	}
	for _, s := range pw.Stages {
		if s.Status == plans.StatusReady {
			t.Errorf("stage %s is ready although Prometheus' answer was partial", s.Namespace)
		}
	}
}

func TestPlanUnreachablePrometheus(t *testing.T) {
	w := boutique()
	w.opts.PrometheusURL = "http://prometheus.example:9090"
	_, err := buildWith(t, w, func(f *fakeOpts) { f.err = errors.New("dial tcp: connection refused") })
	if err == nil || !strings.Contains(err.Error(), "http://prometheus.example:9090") || !strings.Contains(err.Error(), "--prometheus-url") {
		t.Fatalf("err = %v, want one naming the URL and what to check", err)
	}
}

func TestPlanUnknownNamespace(t *testing.T) {
	w := boutique()
	w.opts.Namespaces = []string{"cart", "nope"}
	_, err := w.build(t)
	var nf *NamespaceNotFoundError
	if !errors.As(err, &nf) || len(nf.Names) != 1 || nf.Names[0] != "nope" {
		t.Fatalf("err = %v, want NamespaceNotFoundError for nope", err)
	}
}

func TestPlanMissingMeshConfigDefaultsRoot(t *testing.T) {
	w := boutique()
	w.kube = w.kube[1:] // drop the istio ConfigMap
	p := w.mustBuild(t)
	if p.Metadata.RootNamespace != "istio-system" || len(p.Metadata.Warnings) == 0 || p.Metadata.AutoMTLS != nil {
		t.Errorf("metadata = %+v, want the default root namespace, a warning and unknown autoMTLS", p.Metadata)
	}
}

// TestPermissiveStageOfAQuietDisableNamespaceIsOffered: a DISABLE
// namespace whose traffic is too thin for any gate over its window (young,
// or quiet) still gets a PERMISSIVE stage it can carry out: its plaintext
// probes, which expect an answer on every port after PERMISSIVE, exercise
// the traffic no gate can judge. Without them the stage was UNVERIFIABLE
// (blocked), and the STRICT stage after it could never be reached.
func TestPermissiveStageOfAQuietDisableNamespaceIsOffered(t *testing.T) {
	for _, rate := range []float64{1, 0.01} {
		w := newWorld()
		w.ns("legacy", true).workload("legacy", "app", true, []int32{8080}).service("legacy", "app", "", 80, 8080, "http").
			peerAuth("legacy", "off", testNow.Add(-time.Hour), nil, apisecurity.PeerAuthentication_MutualTLS_DISABLE, nil).
			flow("web", "web", "legacy", "app", "none", rate)
		st := w.mustBuild(t).Stages[0]
		if st.TargetMode != plans.ModePermissive || st.Status == plans.StatusBlocked {
			t.Fatalf("%g/s: stage 1 = %s -> %s %s (risks %+v), want an offered PERMISSIVE stage", rate, st.CurrentMode, st.TargetMode, st.Status, st.Risks)
		}
		var answered bool
		for _, pr := range st.Probes {
			if pr.Kind == plans.ProbeHTTP && pr.Expect.Status == 200 && strings.Contains(pr.URL, ":8080") {
				answered = true
			}
		}
		if !answered {
			t.Errorf("%g/s: PERMISSIVE stage probes %+v, want a plaintext probe of the pod's port expecting an answer", rate, st.Probes)
		}
	}
}

func TestPlanDisableNamespaceGoesPermissiveFirst(t *testing.T) {
	w := newWorld()
	w.ns("legacy", true).workload("legacy", "app", true, []int32{8080}).service("legacy", "app", "", 80, 8080, "http").
		peerAuth("legacy", "off", testNow.Add(-time.Hour), nil, apisecurity.PeerAuthentication_MutualTLS_DISABLE, nil).
		flow("web", "web", "legacy", "app", "none", 1)
	p := w.mustBuild(t)
	if p.Stages[0].TargetMode != plans.ModePermissive || p.Stages[0].CurrentMode != plans.ModeDisable || p.Stages[0].Status != plans.StatusReady {
		t.Fatalf("stage 1 = %+v, want legacy DISABLE -> PERMISSIVE, ready", p.Stages[0])
	}
	st := stageOf(p, "legacy")
	if st == nil || st.Number <= 1 || st.Status == plans.StatusReady || hasRisk(st, CodeCurrentModeDisable) == nil {
		t.Fatalf("STRICT stage = %+v, want a later, non-ready stage with CURRENT_MODE_DISABLE", st)
	}
	// The STRICT stage cannot know the digest of what the PERMISSIVE stage
	// writes (UIDs, creation times): it names that stage instead, so the
	// plan carries both through without a new one.
	if st.PolicyDigest != plans.AfterStage(p.Stages[0].Number) {
		t.Errorf("STRICT stage policyDigest = %q, want %q", st.PolicyDigest, plans.AfterStage(p.Stages[0].Number))
	}
	if !strings.HasPrefix(p.Stages[0].PolicyDigest, "sha256:") {
		t.Errorf("PERMISSIVE stage policyDigest = %q, want the digest of today's policies", p.Stages[0].PolicyDigest)
	}
	if r := hasRisk(st, CodeCurrentModeDisable); strings.Contains(r.Message+r.Fix, "must be re-planned") {
		t.Errorf("CURRENT_MODE_DISABLE still asks for a new plan: %+v", r)
	}
	if r := hasRisk(st, CodeMeshedClientPlaintext); r == nil || r.Severity != plans.SeverityReview {
		t.Errorf("meshed plaintext under DISABLE should be review, got %+v", r)
	}
	for _, pr := range p.Stages[0].Probes {
		if pr.Expect.Refused {
			t.Errorf("a PERMISSIVE stage must not expect refusals: %+v", pr)
		}
	}
	// From DISABLE, PERMISSIVE turns the meshed clients' plaintext into
	// mTLS: a gate holding the plaintext rate up would roll it back.
	hasGate := func(st *plans.Stage, name string) bool {
		for _, g := range st.Gates {
			if g.Name == name {
				return true
			}
		}
		return false
	}
	if hasGate(&p.Stages[0], "plaintext-request-rate") {
		t.Errorf("the PERMISSIVE stage has a plaintext-request-rate gate: %+v", p.Stages[0].Gates)
	}
	if !hasGate(st, "plaintext-request-rate") {
		t.Errorf("the STRICT stage lost its plaintext-request-rate gate: %+v", st.Gates)
	}
}

type fakeOpts struct {
	warnings []string
	err      error
}

func buildWith(t *testing.T, w *world, f func(*fakeOpts)) (*plans.Plan, error) {
	var o fakeOpts
	f(&o)
	w.fake = o
	return w.build(t)
}

// TestEveryProbeThePlannerWritesIsATargetPreflightAllows: pre-flight
// refuses a probe whose target is not the stage's pods or Services or the
// ingress gateway (internal/probetarget); every probe the planner writes,
// blocked stages' too, must pass that rule on the cluster the plan was
// made for, or the plan would offer a stage pre-flight refuses.
func TestEveryProbeThePlannerWritesIsATargetPreflightAllows(t *testing.T) {
	disable := newWorld()
	disable.ns("legacy", true).workload("legacy", "app", true, []int32{8080}).service("legacy", "app", "", 80, 8080, "http").
		peerAuth("legacy", "off", testNow.Add(-time.Hour), nil, apisecurity.PeerAuthentication_MutualTLS_DISABLE, nil).
		gateway("legacy.example.com", "app", "legacy", 80)
	for name, w := range map[string]*world{"online boutique": boutique(), "a DISABLE namespace behind the gateway": disable} {
		t.Run(name, func(t *testing.T) {
			p := w.mustBuild(t)
			probes, gateway := 0, 0
			for _, st := range p.Stages {
				scope := probetarget.New(st.Namespace, st.Scope == plans.ScopeMesh)
				for _, o := range w.kube {
					switch x := o.(type) {
					case *corev1.Pod:
						scope.AddPod(x)
					case *corev1.Service:
						scope.AddService(x)
					}
				}
				for _, pr := range st.Probes {
					probes++
					if pr.Resolve != "" {
						gateway++
					}
					if err := scope.Check(pr); err != nil {
						t.Errorf("stage %d (%s, %s): %v", st.Number, st.Namespace, st.Status, err)
					}
				}
			}
			if probes == 0 || gateway == 0 {
				t.Fatalf("the plan has %d probes, %d through the gateway: the test checks too little", probes, gateway)
			}
		})
	}
}

// TestPlanStreamsAsOneDocument: plans.Encode writes a real plan (risks,
// sources, probes, gates at scale) stage by stage with the same bytes as
// one yaml.v3 document, so the digests recorded before it still match.
func TestPlanStreamsAsOneDocument(t *testing.T) {
	for name, p := range map[string]*plans.Plan{"boutique": boutique().mustBuild(t), "synthetic": syntheticPlan(t, 70)} {
		t.Run(name, func(t *testing.T) {
			got, err := plans.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			c := *p
			c.Metadata.GeneratedAt = c.Metadata.GeneratedAt.UTC()
			var want bytes.Buffer
			enc := yaml.NewEncoder(&want)
			enc.SetIndent(2)
			if err := enc.Encode(&c); err != nil {
				t.Fatal(err)
			}
			if err := enc.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("the streamed plan differs from the one-document encoding (%d vs %d bytes)", len(got), want.Len())
			}
		})
	}
}
