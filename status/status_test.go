package status

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	apisecurity "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

var (
	testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	t0      = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
)

// fakeProm answers the plaintext query with a fixed vector.
type fakeProm struct {
	vec   model.Vector
	err   error
	warns v1.Warnings

	mu    sync.Mutex
	calls []string
}

func (f *fakeProm) Query(_ context.Context, q string, _ time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	f.mu.Lock()
	f.calls = append(f.calls, q)
	f.mu.Unlock()
	if f.err != nil {
		return nil, nil, nil, f.err
	}
	return f.vec, f.warns, nil, nil
}

func (f *fakeProm) QueryRange(context.Context, string, v1.Range, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return nil, nil, nil, errors.New("status makes no range queries")
}

func sample(ns, kind string, v float64) *model.Sample {
	return &model.Sample{Metric: model.Metric{"destination_workload_namespace": model.LabelValue(ns), kindLabel: model.LabelValue(kind)}, Value: model.SampleValue(v)}
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func pod(ns, app string, sidecar bool, ports ...int32) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: app + "-abc12", Namespace: ns, Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, port := range ports {
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: port})
	}
	if sidecar {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "istio-proxy", Args: []string{"proxy", "sidecar"},
			Env: []corev1.EnvVar{{Name: "ISTIO_META_WORKLOAD_NAME", Value: app}}})
	}
	return p
}

type mode = apisecurity.PeerAuthentication_MutualTLS_Mode

func peerAuth(ns, name string, age int, sel map[string]string, m mode, ports map[uint32]mode) *securityv1.PeerAuthentication {
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(age) * time.Hour))}}
	pa.Spec.Mtls = &apisecurity.PeerAuthentication_MutualTLS{Mode: m}
	if sel != nil {
		pa.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: sel}
	}
	for port, pm := range ports {
		if pa.Spec.PortLevelMtls == nil {
			pa.Spec.PortLevelMtls = map[uint32]*apisecurity.PeerAuthentication_MutualTLS{}
		}
		pa.Spec.PortLevelMtls[port] = &apisecurity.PeerAuthentication_MutualTLS{Mode: pm}
	}
	return pa
}

const (
	strict     = apisecurity.PeerAuthentication_MutualTLS_STRICT
	permissive = apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE
	disable    = apisecurity.PeerAuthentication_MutualTLS_DISABLE
	unset      = apisecurity.PeerAuthentication_MutualTLS_UNSET
)

// shop is a small mesh: the mesh PERMISSIVE; cart STRICT with a legacy
// workload kept PERMISSIVE and its port 9090 DISABLE; web inheriting the
// mesh's mode; batch labelled for injection but empty; kube-system not
// meshed.
func shop() (kube, istio []runtime.Object) {
	kube = []runtime.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": "rootNamespace: istio-system\n"}},
		namespace("istio-system", nil),
		namespace("kube-system", nil),
		namespace("mtls-migrate", nil),
		namespace("cart", map[string]string{"istio-injection": "enabled"}),
		namespace("web", nil),
		namespace("batch", map[string]string{"istio.io/rev": "1-24"}),
		pod("kube-system", "coredns", false, 53),
		pod("cart", "cart", true, 8080),
		pod("cart", "legacy", true, 8080, 9090),
		pod("cart", "audit", true, 8080),
		pod("web", "frontend", true, 8080),
	}
	istio = []runtime.Object{
		peerAuth("istio-system", "default", 0, nil, permissive, nil),
		peerAuth("cart", "default", 1, nil, strict, nil),
		// Same mode as the namespace: not an override.
		peerAuth("cart", "cart-strict", 2, map[string]string{"app": "cart"}, strict, nil),
		peerAuth("cart", "legacy-permissive", 3, map[string]string{"app": "legacy"}, permissive, map[uint32]mode{9090: disable, 8080: unset}),
		// Inherits the workload's mode, but port 9090 is DISABLE.
		peerAuth("cart", "audit-port", 4, map[string]string{"app": "audit"}, unset, map[uint32]mode{8080: disable}),
	}
	return kube, istio
}

func inputs(kube, istio []runtime.Object, store state.Store, prom istiometrics.Querier) Inputs {
	in := Inputs{
		Kube: k8sfake.NewClientset(kube...), Istio: istiofake.NewSimpleClientset(istio...),
		Store: store, StateNamespace: "mtls-migrate",
		RateWindow: 5 * time.Minute, Now: func() time.Time { return testNow },
		PrometheusURL: "http://prom.test:9090", PrometheusTimeout: time.Second,
	}
	if prom != nil {
		in.Prometheus = prom
	}
	return in
}

func row(t *testing.T, r *Report, name string) Namespace {
	t.Helper()
	for _, n := range r.Namespaces {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("namespace %q not in report %v", name, names(r))
	return Namespace{}
}

func names(r *Report) []string {
	var out []string
	for _, n := range r.Namespaces {
		out = append(out, n.Name)
	}
	return out
}

func port(p uint32) *uint32 { return &p }

func TestStatusShowsModesAndWorkloadPortOverrides(t *testing.T) {
	kube, istio := shop()
	rep, err := Build(context.Background(), inputs(kube, istio, state.NewMemory(), &fakeProm{}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(rep), []string{"istio-system", "batch", "cart", "web"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("namespaces %v, want %v (root first, then meshed or labelled by name)", got, want)
	}
	if rep.RootNamespace != "istio-system" || rep.MeshMode != plans.ModePermissive {
		t.Errorf("root %q mesh mode %q", rep.RootNamespace, rep.MeshMode)
	}
	tests := []struct {
		ns    string
		scope string
		mode  plans.Mode
		over  []Override
	}{
		{"istio-system", ScopeMesh, plans.ModePermissive, []Override{}},
		{"batch", ScopeNamespace, plans.ModePermissive, []Override{}},
		{"cart", ScopeNamespace, plans.ModeStrict, []Override{
			{Workload: "audit", Port: port(8080), Mode: plans.ModeDisable, Policy: "audit-port"},
			{Workload: "legacy", Mode: plans.ModePermissive, Policy: "legacy-permissive"},
			{Workload: "legacy", Port: port(9090), Mode: plans.ModeDisable, Policy: "legacy-permissive"},
		}},
		{"web", ScopeNamespace, plans.ModePermissive, []Override{}},
	}
	for _, tt := range tests {
		t.Run(tt.ns, func(t *testing.T) {
			n := row(t, rep, tt.ns)
			if n.Scope != tt.scope || n.Mode != tt.mode {
				t.Errorf("scope %q mode %q, want %q %q", n.Scope, n.Mode, tt.scope, tt.mode)
			}
			if !reflect.DeepEqual(n.Overrides, tt.over) {
				t.Errorf("overrides\n got %s\nwant %s", js(t, n.Overrides), js(t, tt.over))
			}
		})
	}
}

func TestStatusMeshModeFollowsRootNamespaceFromMeshConfig(t *testing.T) {
	kube := []runtime.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": "rootNamespace: istio-config\n"}},
		namespace("istio-config", nil), namespace("istio-system", nil), namespace("app", nil), pod("app", "a", true, 80),
	}
	istio := []runtime.Object{
		peerAuth("istio-config", "mesh", 0, nil, strict, nil),
		// Not the root namespace: namespace-wide for istio-system only.
		peerAuth("istio-system", "default", 0, nil, disable, nil),
	}
	rep, err := Build(context.Background(), inputs(kube, istio, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if rep.RootNamespace != "istio-config" || rep.MeshMode != plans.ModeStrict || row(t, rep, "app").Mode != plans.ModeStrict {
		t.Errorf("root %q mesh %q app %q", rep.RootNamespace, rep.MeshMode, row(t, rep, "app").Mode)
	}
	if got := names(rep); !reflect.DeepEqual(got, []string{"istio-config", "app"}) {
		t.Errorf("namespaces %v", got)
	}
}

func f64(v float64) *float64 { return &v }

// record writes a plan record into a memory store.
func record(t *testing.T, plans ...state.PlanRecord) *state.Memory {
	t.Helper()
	m := state.NewMemory()
	if err := m.Update(context.Background(), func(s *state.State) error { s.Plans = plans; return nil }); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestStatusJoinsStageState(t *testing.T) {
	applied := testNow.Add(-time.Hour)
	finished := applied.Add(10 * time.Minute)
	cartDone := state.StageState{Number: 1, Namespace: "cart", Phase: state.Done, TargetMode: "STRICT", StartedAt: applied, FinishedAt: finished,
		AppliedBy: "alice@example.com", Gates: []state.GateValue{{Name: "success-rate", Verdict: "pass", Value: f64(0.999), Threshold: f64(0.98), At: finished}, {Name: "request-rate", Verdict: "no-data"}}}
	webRolledBack := state.StageState{Number: 2, Namespace: "web", Phase: state.RolledBack, TargetMode: "STRICT", StartedAt: applied, FinishedAt: finished,
		AppliedBy: "system:serviceaccount:mtls-migrate:runner", ForceReason: "ticket OPS-12", Reason: "gate inbound-request-rate failed: 0.2 < 0.9"}
	oldWeb := state.StageState{Number: 7, Namespace: "web", Phase: state.Done, TargetMode: "PERMISSIVE", StartedAt: t0}
	plan := &plans.Plan{Metadata: plans.Metadata{Name: "p2"}, Stages: []plans.Stage{
		{Number: 1, Namespace: "cart", TargetMode: plans.ModeStrict},
		{Number: 2, Namespace: "web", TargetMode: plans.ModeStrict},
		{Number: 3, Namespace: "batch", TargetMode: plans.ModePermissive},
		{Number: 4, Namespace: "batch", TargetMode: plans.ModeStrict},
		{Number: 5, Namespace: "istio-system", Scope: plans.ScopeMesh, TargetMode: plans.ModeStrict},
	}}
	tests := []struct {
		name   string
		store  state.Store
		plan   *plans.Plan
		digest string
		// want maps namespace to "number phase target" ("" for no stage).
		want     map[string]string
		wantPlan *PlanRef
		note     string
	}{
		{"no state at all", state.NewMemory(), nil, "", map[string]string{"cart": "", "web": "", "batch": "", "istio-system": ""}, nil, `no migration state in namespace "mtls-migrate"`},
		{"latest plan record per namespace", record(t,
			state.PlanRecord{Name: "p1", Digest: "d1", Stages: []state.StageState{oldWeb}},
			state.PlanRecord{Name: "p2", Digest: "d2", Stages: []state.StageState{cartDone}}),
			nil, "", map[string]string{"cart": "1 done STRICT", "web": "7 done PERMISSIVE", "batch": ""}, &PlanRef{"p2", "d2"}, ""},
		{"plan adds stages not started, pending", record(t,
			state.PlanRecord{Name: "p1", Digest: "d1", Stages: []state.StageState{oldWeb}},
			state.PlanRecord{Name: "p2", Digest: "d2", Stages: []state.StageState{cartDone, webRolledBack}}),
			plan, "d2", map[string]string{"cart": "1 done STRICT", "web": "2 rolled-back STRICT", "batch": "3 pending PERMISSIVE", "istio-system": "5 pending STRICT"}, &PlanRef{"p2", "d2"}, ""},
		{"plan without a record", record(t, state.PlanRecord{Name: "p1", Digest: "d1", Stages: []state.StageState{oldWeb}}),
			plan, "d2", map[string]string{"cart": "1 pending STRICT", "web": "2 pending STRICT"}, &PlanRef{"p2", "d2"}, `plan "p2" has no record`},
		{"second stage of a namespace once started", record(t, state.PlanRecord{Name: "p2", Digest: "d2", Stages: []state.StageState{
			{Number: 3, Namespace: "batch", Phase: state.Done}, {Number: 4, Namespace: "batch", Phase: state.Soaking}}}),
			plan, "d2", map[string]string{"batch": "4 soaking STRICT"}, &PlanRef{"p2", "d2"}, ""},
		{"first stage of a namespace when none started", record(t, state.PlanRecord{Name: "p2", Digest: "d2", Stages: []state.StageState{
			{Number: 3, Namespace: "batch", Phase: state.Done}, {Number: 4, Namespace: "batch", Phase: state.Pending}}}),
			plan, "d2", map[string]string{"batch": "3 done PERMISSIVE"}, &PlanRef{"p2", "d2"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kube, istio := shop()
			in := inputs(kube, istio, tt.store, &fakeProm{})
			in.Plan, in.PlanDigest = tt.plan, tt.digest
			rep, err := Build(context.Background(), in)
			if err != nil {
				t.Fatal(err)
			}
			// The same plan through LoadPlan (loaded while the cluster
			// is read) gives the same report.
			in = inputs(kube, istio, tt.store, &fakeProm{})
			in.LoadPlan = func(context.Context) (*plans.Plan, string, error) { return tt.plan, tt.digest, nil }
			viaLoader, err := Build(context.Background(), in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(viaLoader, rep) {
				t.Errorf("with LoadPlan:\n%+v\nwith Plan:\n%+v", viaLoader, rep)
			}
			for ns, want := range tt.want {
				got := ""
				if s := row(t, rep, ns).Stage; s != nil {
					got = strings.Join([]string{itoa(s.Number), s.Phase, s.TargetMode}, " ")
				}
				if got != want {
					t.Errorf("%s: stage %q, want %q", ns, got, want)
				}
			}
			if !reflect.DeepEqual(rep.Plan, tt.wantPlan) {
				t.Errorf("plan %+v, want %+v", rep.Plan, tt.wantPlan)
			}
			if tt.note != "" && !strings.Contains(strings.Join(rep.Notes, "\n"), tt.note) {
				t.Errorf("notes %q, want %q", rep.Notes, tt.note)
			}
		})
	}

	t.Run("fields", func(t *testing.T) {
		kube, istio := shop()
		in := inputs(kube, istio, record(t, state.PlanRecord{Name: "p2", Digest: "d2", Stages: []state.StageState{cartDone, webRolledBack}}), &fakeProm{})
		rep, err := Build(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		want := &Stage{Number: 1, Phase: "done", TargetMode: "STRICT", AppliedAt: &applied, FinishedAt: &finished, AppliedBy: "alice@example.com",
			Gates: []Gate{{Name: "success-rate", Verdict: "pass", Value: f64(0.999), Threshold: f64(0.98), At: &finished}, {Name: "request-rate", Verdict: "no-data"}}}
		if got := row(t, rep, "cart").Stage; !reflect.DeepEqual(got, want) {
			t.Errorf("cart stage\n got %s\nwant %s", js(t, got), js(t, want))
		}
		web := row(t, rep, "web").Stage
		if web.ForceReason != "ticket OPS-12" || web.Reason != webRolledBack.Reason || web.AppliedBy != webRolledBack.AppliedBy {
			t.Errorf("web stage %s", js(t, web))
		}
	})
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func js(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestStatusMissingStateMeansNoStageYet(t *testing.T) {
	forbidden := func(c *k8sfake.Clientset) {
		c.PrependReactor("get", "configmaps", func(a k8stesting.Action) (bool, runtime.Object, error) {
			if a.GetNamespace() == "mtls-migrate" {
				return true, nil, apierrors.NewForbidden(corev1.Resource("configmaps"), "mtls-migrate-state", errors.New("no RBAC"))
			}
			return false, nil, nil
		})
	}
	tests := []struct {
		name      string
		dropNS    bool
		react     func(*k8sfake.Clientset)
		wantNote  string
		wantError string
	}{
		{"missing ConfigMap", false, nil, `no migration state in namespace "mtls-migrate": no stage applied yet`, ""},
		{"missing namespace", true, nil, `state namespace "mtls-migrate" does not exist: no stage applied yet`, ""},
		{"unreadable state is an error, not no stage", false, forbidden, "", "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kube, istio := shop()
			if tt.dropNS {
				kube = withoutNamespace(kube, "mtls-migrate")
			}
			c := k8sfake.NewClientset(kube...)
			if tt.react != nil {
				tt.react(c)
			}
			in := inputs(nil, istio, state.NewConfigMapStore(c, "mtls-migrate"), &fakeProm{})
			in.Kube = c
			rep, err := Build(context.Background(), in)
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) || !strings.Contains(err.Error(), "mtls-migrate") {
					t.Fatalf("error %v, want one naming the state namespace and %q", err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(rep.Notes, []string{tt.wantNote}) {
				t.Errorf("notes %q, want %q", rep.Notes, tt.wantNote)
			}
			for _, n := range rep.Namespaces {
				if n.Stage != nil {
					t.Errorf("%s has stage %+v", n.Name, n.Stage)
				}
			}
		})
	}
}

// withoutNamespace drops the Namespace object named ns.
func withoutNamespace(objs []runtime.Object, ns string) []runtime.Object {
	var out []runtime.Object
	for _, o := range objs {
		if n, ok := o.(*corev1.Namespace); ok && n.Name == ns {
			continue
		}
		out = append(out, o)
	}
	return out
}

func TestStatusPlaintextRateUnknownWhenPrometheusCannotTell(t *testing.T) {
	answer := model.Vector{
		sample("cart", kindRequests, 0.5), sample("cart", kindConnections, 0.25),
		sample("web", kindRequests, 2),
		sample("elsewhere", kindRequests, 9),
	}
	tests := []struct {
		name string
		prom istiometrics.Querier
		// want is per namespace; nil means unknown.
		want     map[string]*float64
		wantWarn string
	}{
		{"answers, absent namespace is 0", &fakeProm{vec: answer}, map[string]*float64{"cart": f64(0.75), "web": f64(2), "batch": f64(0), "istio-system": f64(0)}, ""},
		{"no Prometheus configured", nil, map[string]*float64{"cart": nil, "web": nil, "batch": nil, "istio-system": nil}, "no Prometheus configured"},
		{"Prometheus unreachable", &fakeProm{err: errors.New("dial tcp: connection refused")}, map[string]*float64{"cart": nil, "web": nil, "batch": nil}, "http://prom.test:9090 did not answer: dial tcp: connection refused"},
		{"NaN is not a rate", &fakeProm{vec: model.Vector{sample("cart", kindRequests, nan())}}, map[string]*float64{"cart": nil, "web": nil}, "NaN"},
		{"Prometheus warnings passed on", &fakeProm{vec: answer, warns: v1.Warnings{"partial response"}}, map[string]*float64{"cart": f64(0.75)}, "prometheus warning (plaintext rates): partial response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kube, istio := shop()
			rep, err := Build(context.Background(), inputs(kube, istio, state.NewMemory(), tt.prom))
			if err != nil {
				t.Fatal(err)
			}
			for ns, want := range tt.want {
				got := row(t, rep, ns).PlaintextRate
				if (got == nil) != (want == nil) || got != nil && *got != *want {
					t.Errorf("%s: rate %s, want %s", ns, FormatRate(got), FormatRate(want))
				}
			}
			warns := strings.Join(rep.Warnings, "\n")
			if tt.wantWarn == "" && warns != "" || !strings.Contains(warns, tt.wantWarn) {
				t.Errorf("warnings %q, want %q", rep.Warnings, tt.wantWarn)
			}
			var buf bytes.Buffer
			if err := rep.WriteTable(&buf); err != nil {
				t.Fatal(err)
			}
			if unknown := tt.want["cart"] == nil; unknown && strings.Contains(buf.String(), "  0\n") {
				t.Errorf("table shows 0 for a rate it could not tell:\n%s", buf.String())
			} else if unknown != strings.Contains(buf.String(), Unknown) {
				t.Errorf("table says unknown = %v, want %v:\n%s", !unknown, unknown, buf.String())
			}
		})
	}
}

func nan() float64 { var z float64; return z / z }

func TestStatusRunsOnePrometheusQuery(t *testing.T) {
	kube, istio := shop()
	p := &fakeProm{}
	in := inputs(kube, istio, state.NewMemory(), p)
	in.RateWindow = 2 * time.Minute
	if _, err := Build(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	want := `label_replace(sum by (destination_workload_namespace) (rate(istio_requests_total{reporter="destination",connection_security_policy!="mutual_tls"}[2m])), "mm_kind", "requests", "", "")` +
		` or label_replace(sum by (destination_workload_namespace) (rate(istio_tcp_connections_opened_total{reporter="destination",connection_security_policy!="mutual_tls"}[2m])), "mm_kind", "connections", "", "")`
	if !reflect.DeepEqual(p.calls, []string{want}) {
		t.Errorf("queries %q\nwant %q", p.calls, want)
	}
}

// TestStatusJSONShape pins the documented -o json shape: scripts rely on
// every key being present (null when unknown), whatever the data.
func TestStatusJSONShape(t *testing.T) {
	kube, istio := shop()
	applied := testNow.Add(-time.Hour)
	store := record(t, state.PlanRecord{Name: "p2", Digest: "d2", Stages: []state.StageState{{Number: 1, Namespace: "cart", Phase: state.Done, StartedAt: applied, AppliedBy: "alice",
		Gates: []state.GateValue{{Name: "success-rate", Verdict: "pass", Value: f64(1)}}}}})
	rep, err := Build(context.Background(), inputs(kube, istio, store, nil))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	keys := func(v any) []string {
		var out []string
		for k := range v.(map[string]any) {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	check := func(what string, v any, want ...string) {
		t.Helper()
		if got := keys(v); !reflect.DeepEqual(got, want) {
			t.Errorf("%s keys %v, want %v", what, got, want)
		}
	}
	check("report", doc, "meshMode", "namespaces", "notes", "plan", "rateWindow", "rootNamespace", "warnings")
	nss := doc["namespaces"].([]any)
	var cart, web map[string]any
	for _, n := range nss {
		check("namespace", n, "mode", "name", "overrides", "plaintextRate", "scope", "stage")
		switch n.(map[string]any)["name"] {
		case "cart":
			cart = n.(map[string]any)
		case "web":
			web = n.(map[string]any)
		}
	}
	check("override", cart["overrides"].([]any)[0], "mode", "policy", "port", "workload")
	check("stage", cart["stage"], "appliedAt", "appliedBy", "finishedAt", "forceReason", "gates", "number", "phase", "reason", "targetMode")
	check("gate", cart["stage"].(map[string]any)["gates"].([]any)[0], "at", "message", "name", "threshold", "value", "verdict")
	if cart["plaintextRate"] != nil || web["stage"] != nil || cart["stage"].(map[string]any)["finishedAt"] != nil {
		t.Errorf("unknown values must be null: %s", b)
	}
	if cart["stage"].(map[string]any)["appliedAt"] != "2025-06-01T11:00:00Z" || doc["rateWindow"] != "5m" || doc["meshMode"] != "PERMISSIVE" {
		t.Errorf("values: %s", b)
	}
	if ov, ok := web["overrides"].([]any); !ok || len(ov) != 0 {
		t.Errorf("web overrides must be [], got %v", web["overrides"])
	}
}

func TestStatusTable(t *testing.T) {
	kube, istio := shop()
	applied := testNow.Add(-time.Hour)
	finished := applied.Add(10 * time.Minute)
	store := record(t, state.PlanRecord{Name: "p2", Digest: "d2", Stages: []state.StageState{
		{Number: 1, Namespace: "cart", Phase: state.Done, StartedAt: applied, FinishedAt: finished, AppliedBy: "alice",
			Gates: []state.GateValue{{Name: "success-rate", Verdict: "pass", Value: f64(0.999), Threshold: f64(0.98)}}},
		{Number: 2, Namespace: "web", Phase: state.RolledBack, StartedAt: applied, FinishedAt: finished, AppliedBy: "bob", ForceReason: "OPS-12", Reason: "gate request-rate failed"},
	}})
	rep, err := Build(context.Background(), inputs(kube, istio, store, &fakeProm{vec: model.Vector{sample("web", kindRequests, 1.5)}}))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := rep.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "table.golden")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	wantB, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestStatusTable -update to write it)", err)
	}
	want := string(wantB)
	if buf.String() != want {
		t.Errorf("table\n%s\nwant (%s)\n%s", buf.String(), golden, want)
	}
}

// TestLoadPlanErrorIsReturnedAsItIs: an invalid plan is the error status
// reports (the command maps it to exit 2), even when reading the cluster
// fails too.
func TestLoadPlanErrorIsReturnedAsItIs(t *testing.T) {
	kube, istio := shop()
	in := inputs(kube, istio, state.NewMemory(), &fakeProm{})
	invalid := errors.New("plan.yaml: stage 3: unknown mode")
	in.LoadPlan = func(context.Context) (*plans.Plan, string, error) { return nil, "", invalid }
	k := k8sfake.NewClientset()
	k.PrependReactor("list", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	in.Kube = k
	if _, err := Build(context.Background(), in); !errors.Is(err, invalid) {
		t.Fatalf("err %v, want the plan's error", err)
	}
}
