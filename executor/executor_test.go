package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"
	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	applyv1 "istio.io/client-go/pkg/applyconfiguration/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/mtls-migrate/mtls-migrate/internal/gates"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/probe"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }
func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.now = c.now.Add(d)
	return ctx.Err()
}

// env is a fake cluster: namespace "cart" with one pod and, optionally, a
// pre-existing namespace-wide PERMISSIVE policy.
type env struct {
	t     *testing.T
	kube  *kubefake.Clientset
	istio *istiofake.Clientset
	store *recordingStore
	clock *fakeClock
	log   *[]string
	prom  func(q string, ts time.Time) (model.Value, error)
	// unreachable makes every probe refused, before the change too.
	unreachable bool
	// warn, when set, adds warnings to the answer of q.
	warn func(q string, ts time.Time) v1.Warnings
}

type recordingStore struct {
	*state.Memory
	log *[]string
}

func (s *recordingStore) Update(ctx context.Context, fn func(*state.State) error) error {
	return s.Memory.Update(ctx, func(st *state.State) error {
		if err := fn(st); err != nil {
			return err
		}
		if p := st.Current(); p != nil && len(p.Stages) > 0 {
			*s.log = append(*s.log, "state:"+string(p.Stages[0].Phase))
		}
		return nil
	})
}

// fakeWriter emulates server-side apply of the fields the executor sends.
type fakeWriter struct {
	e    *env
	dry  []bool
	fail error
}

func (w *fakeWriter) Apply(ctx context.Context, cfg *applyv1.PeerAuthenticationApplyConfiguration, dryRun bool) (*securityv1.PeerAuthentication, error) {
	w.dry = append(w.dry, dryRun)
	*w.e.log = append(*w.e.log, "apply")
	if w.fail != nil {
		return nil, w.fail
	}
	pas := w.e.istio.SecurityV1().PeerAuthentications(*cfg.Namespace)
	live, err := pas.Get(ctx, *cfg.Name, metav1.GetOptions{})
	exists := err == nil
	if apierrors.IsNotFound(err) {
		live = &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: *cfg.Name, Namespace: *cfg.Namespace, UID: types.UID("uid-created")}}
	} else if err != nil {
		return nil, err
	} else {
		live = live.DeepCopy()
	}
	if live.Labels == nil && len(cfg.Labels) > 0 {
		live.Labels = map[string]string{}
	}
	for k, v := range cfg.Labels {
		live.Labels[k] = v
	}
	if live.Annotations == nil && len(cfg.Annotations) > 0 {
		live.Annotations = map[string]string{}
	}
	for k, v := range cfg.Annotations {
		live.Annotations[k] = v
	}
	if live.Spec.Mtls == nil {
		live.Spec.Mtls = &apisecurity.PeerAuthentication_MutualTLS{}
	}
	live.Spec.Mtls.Mode = cfg.Spec.Mtls.Mode
	if dryRun {
		return live, nil
	}
	if !exists {
		return pas.Create(ctx, live, metav1.CreateOptions{})
	}
	return pas.Update(ctx, live, metav1.UpdateOptions{})
}

func (w *fakeWriter) Create(ctx context.Context, pa *securityv1.PeerAuthentication, dryRun bool) (*securityv1.PeerAuthentication, error) {
	w.dry = append(w.dry, dryRun)
	*w.e.log = append(*w.e.log, "apply")
	if w.fail != nil {
		return nil, w.fail
	}
	c := pa.DeepCopy()
	c.UID = types.UID("uid-created")
	if dryRun {
		if _, err := w.e.istio.SecurityV1().PeerAuthentications(pa.Namespace).Get(ctx, pa.Name, metav1.GetOptions{}); err == nil {
			return nil, apierrors.NewAlreadyExists(securityv1.Resource("peerauthentications"), pa.Name)
		}
		return c, nil
	}
	return w.e.istio.SecurityV1().PeerAuthentications(pa.Namespace).Create(ctx, c, metav1.CreateOptions{})
}

// fakeExec answers curl as a plaintext client would: refused while the
// namespace's policy is STRICT, 200 otherwise.
type fakeExec struct {
	e            *env
	refuseAlways bool
}

func (f *fakeExec) Exec(ctx context.Context, _, _, _ string, _ []string) (string, int, error) {
	pa, err := f.e.istio.SecurityV1().PeerAuthentications("cart").Get(ctx, "default", metav1.GetOptions{})
	if f.refuseAlways || (err == nil && pa.Spec.GetMtls().GetMode() == apisecurity.PeerAuthentication_MutualTLS_STRICT) {
		return "000", 56, nil
	}
	return "200", 0, nil
}

// envProm answers from the env's prom, with its warn's warnings.
type envProm struct{ e *env }

func (p envProm) Query(_ context.Context, q string, ts time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	v, err := p.e.prom(q, ts)
	var w v1.Warnings
	if p.e.warn != nil {
		w = p.e.warn(q, ts)
	}
	return v, w, nil, err
}

func (envProm) QueryRange(context.Context, string, v1.Range, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return nil, nil, nil, errors.New("the executor makes no range queries")
}

type promFunc func(q string, ts time.Time) (model.Value, error)

func (f promFunc) Query(_ context.Context, q string, ts time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	v, err := f(q, ts)
	return v, nil, nil, err
}

func (f promFunc) QueryRange(context.Context, string, v1.Range, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return nil, nil, nil, errors.New("the executor makes no range queries")
}

func healthyProm(q string, _ time.Time) (model.Value, error) {
	if strings.Contains(q, "connection_security_policy") {
		return model.Vector{}, nil // no plaintext
	}
	return model.Vector{&model.Sample{Value: 1}}, nil
}

func existingPolicy() *securityv1.PeerAuthentication {
	return &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "cart", UID: "uid-old", ResourceVersion: "1",
			CreationTimestamp: metav1.NewTime(t0.Add(-24 * time.Hour)),
			Labels:            map[string]string{"team": "cart"}, Annotations: map[string]string{"note": "x"}},
		Spec: apisecurity.PeerAuthentication{Mtls: &apisecurity.PeerAuthentication_MutualTLS{Mode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE}},
	}
}

func newEnv(t *testing.T, withPolicy bool) *env {
	log := []string{}
	e := &env{t: t, clock: &fakeClock{now: t0}, log: &log, prom: healthyProm}
	e.kube = kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cart"}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "cart-1", Namespace: "cart", UID: "p1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning,
			PodIP: "10.0.1.1", Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cartservice", Namespace: "cart"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}},
	)
	if withPolicy {
		e.istio = istiofake.NewSimpleClientset(existingPolicy())
	} else {
		e.istio = istiofake.NewSimpleClientset()
	}
	e.store = &recordingStore{Memory: state.NewMemory(), log: e.log}
	return e
}

// policyDigest is what the planner writes in a stage's policyDigest for a
// namespace holding pas (the real digest, the one apply recomputes).
func policyDigest(pas ...*securityv1.PeerAuthentication) string {
	return peerauth.PolicyDigest(pas)
}

func testPlan(updatesExisting bool, digest string) *plans.Plan {
	return &plans.Plan{
		APIVersion: plans.APIVersion, Kind: plans.Kind,
		Metadata: plans.Metadata{Name: "p", GeneratedAt: t0.Add(-2 * time.Hour), Window: plans.Duration(7 * 24 * time.Hour), RootNamespace: "istio-system"},
		Stages: []plans.Stage{{
			Number: 1, Namespace: "cart", Status: plans.StatusReady, CurrentMode: plans.ModePermissive, TargetMode: plans.ModeStrict,
			PolicyDigest: digest,
			Policy: plans.Policy{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, UpdatesExisting: updatesExisting,
				Metadata: plans.PolicyMetadata{Name: "default", Namespace: "cart", Labels: map[string]string{peerauth.ManagedByLabel: peerauth.ManagedByValue}},
				Spec:     plans.PolicySpec{MTLS: plans.PolicyMTLS{Mode: plans.ModeStrict}}},
			Probes: []plans.Probe{{Name: "plaintext", Kind: plans.ProbeExec, URL: "http://cartservice.cart:7070/", Pod: "cart/cart-1", Expect: plans.Expect{Refused: true}}},
			Gates:  []plans.Gate{{Name: "success-rate", Query: "success", Comparison: plans.GreaterOrEqual, Threshold: 0.05, Relative: plans.BaselineMinus}},
			Soak:   plans.Duration(time.Minute),
		}},
	}
}

func (e *env) run(p *plans.Plan, mutate func(*Deps, *Options)) (*Result, error, *fakeWriter) { //nolint:staticcheck // reads as Run's own (result, err) plus the fake
	w := &fakeWriter{e: e}
	d := Deps{
		Kube: e.kube, Istio: e.istio, Writer: w, Prom: envProm{e},
		Store: e.store, Prober: &probe.Prober{Exec: &fakeExec{e: e}, Namespace: "cart", Clock: e.clock, Timeout: time.Second},
		Clock: e.clock, Progress: LogProgress{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
	}
	o := Options{Plan: p, PlanDigest: "sha256:p", Stage: 1, Actor: "alice", GateInterval: 10 * time.Second, AllowExec: true}
	if mutate != nil {
		mutate(&d, &o)
	}
	res, err := Run(context.Background(), d, o)
	return res, err, w
}

func (e *env) phase() state.Phase {
	s, err := e.store.Load(context.Background())
	if err != nil || s.Plan("sha256:p") == nil || s.Plan("sha256:p").Stage(1) == nil {
		return ""
	}
	return s.Plan("sha256:p").Stage(1).Phase
}

func (e *env) policy() *securityv1.PeerAuthentication {
	pa, err := e.istio.SecurityV1().PeerAuthentications("cart").Get(context.Background(), "default", metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return pa
}

func index(log []string, s string) int {
	for i, l := range log {
		if l == s {
			return i
		}
	}
	return -1
}

func TestHealthyStageIsDoneAndStateIsWrittenBeforeTheChange(t *testing.T) {
	for _, existing := range []bool{false, true} {
		t.Run(fmt.Sprintf("existing=%v", existing), func(t *testing.T) {
			e := newEnv(t, existing)
			digest := policyDigest()
			if existing {
				digest = policyDigest(existingPolicy())
			}
			res, err, _ := e.run(testPlan(existing, digest), nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Outcome != OutcomeDone || e.phase() != state.Done {
				t.Fatalf("outcome %s phase %s", res.Outcome, e.phase())
			}
			log := *e.log
			if a, s := index(log, "state:applying"), index(log, "apply"); a < 0 || s < 0 || a > s {
				t.Fatalf("state applying must be written before the apply: %v", log)
			}
			if pa := e.policy(); pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_STRICT {
				t.Fatalf("policy not STRICT: %+v", pa)
			} else if existing && (pa.Labels["team"] != "cart" || pa.Labels[peerauth.ManagedByLabel] != "" || pa.Annotations[peerauth.StageAnnotation] != "p/1") {
				t.Fatalf("pre-existing policy: labels %v annotations %v", pa.Labels, pa.Annotations)
			} else if !existing && pa.Labels[peerauth.ManagedByLabel] != peerauth.ManagedByValue {
				t.Fatalf("created policy lacks the managed-by label: %v", pa.Labels)
			}
			s, _ := e.store.Load(context.Background())
			st := s.Plan("sha256:p").Stage(1)
			if st.AppliedBy != "alice" || len(st.Snapshot) != map[bool]int{true: 1, false: 0}[existing] || st.Target.UID == "" || len(st.Gates) == 0 {
				t.Fatalf("state not recorded: %+v", st)
			}
		})
	}
}

func TestFailuresRollBack(t *testing.T) {
	tests := []struct {
		name   string
		prom   func(q string, ts time.Time) (model.Value, error)
		exec   bool // plaintext never refused after the change
		reason string
	}{
		{"gate fails during the soak", func(q string, ts time.Time) (model.Value, error) {
			if ts.After(t0.Add(20*time.Second)) && q == "success" {
				return model.Vector{&model.Sample{Value: 0.5}}, nil
			}
			return healthyProm(q, ts)
		}, false, "gate success-rate failed"},
		{"prometheus down during the soak", func(q string, ts time.Time) (model.Value, error) {
			if ts.After(t0.Add(20 * time.Second)) {
				return nil, errors.New("connection refused")
			}
			return healthyProm(q, ts)
		}, false, "consecutive errors"},
		{"probe not refused", healthyProm, true, "probe plaintext: expected refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.prom = tt.prom
			res, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) {
				if tt.exec {
					d.Prober.Exec = execFunc(func() (string, int) { return "200", 0 })
				}
			})
			var rb *RolledBackError
			if !errors.As(err, &rb) || !strings.Contains(rb.Reason, tt.reason) {
				t.Fatalf("want RolledBackError with %q, got %v", tt.reason, err)
			}
			if res.Outcome != OutcomeRolledBack || e.phase() != state.RolledBack {
				t.Fatalf("outcome %s phase %s", res.Outcome, e.phase())
			}
			pa, want := e.policy(), existingPolicy()
			if pa.Spec.GetMtls().GetMode() != want.Spec.Mtls.Mode || pa.UID != want.UID || len(pa.Annotations) != 1 || pa.Labels["team"] != "cart" {
				t.Fatalf("not restored: %+v", pa)
			}
		})
	}
}

// TestPartialAnswersDuringTheSoakRollBack: a gate answered with warnings is
// an error each tick, never a pass; K of them roll the stage back, and the
// reason names the warning.
func TestPartialAnswersDuringTheSoakRollBack(t *testing.T) {
	e := newEnv(t, true)
	e.warn = func(q string, ts time.Time) v1.Warnings {
		if q == "success" && ts.After(t0.Add(20*time.Second)) {
			return v1.Warnings{"partial response: querier timed out on 2 of 5 blocks"}
		}
		return nil
	}
	_, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), nil)
	var rb *RolledBackError
	if !errors.As(err, &rb) || !strings.Contains(rb.Reason, "3 consecutive errors") || !strings.Contains(rb.Reason, "partial response: querier timed out") {
		t.Fatalf("want a rollback naming the warning, got %v", err)
	}
	if e.phase() != state.RolledBack {
		t.Fatalf("phase %s", e.phase())
	}
}

type execFunc func() (string, int)

func (f execFunc) Exec(context.Context, string, string, string, []string) (string, int, error) {
	out, code := f()
	return out, code, nil
}

func TestRollbackFailureIsReported(t *testing.T) {
	e := newEnv(t, true)
	e.prom = func(q string, ts time.Time) (model.Value, error) {
		if ts.After(t0.Add(20*time.Second)) && q == "success" {
			return model.Vector{&model.Sample{Value: 0}}, nil
		}
		return healthyProm(q, ts)
	}
	applied := false
	e.istio.PrependReactor("update", "peerauthentications", func(k8stesting.Action) (bool, runtime.Object, error) {
		if !applied { // the first update is the (fake) apply
			applied = true
			return false, nil, nil
		}
		return true, nil, apierrors.NewInternalError(errors.New("etcd unavailable"))
	})
	res, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), nil)
	var rf *RollbackFailedError
	if !errors.As(err, &rf) || res.Outcome != OutcomeRollbackFailed || e.phase() != state.Failed {
		t.Fatalf("want RollbackFailedError and phase failed, got %v, %s", err, e.phase())
	}
}

func TestPreflightRefusals(t *testing.T) {
	tests := []struct {
		name    string
		plan    func(*plans.Plan)
		env     func(*env)
		opts    func(*Options)
		refused string
	}{
		{"blocked stage without --force", func(p *plans.Plan) {
			p.Stages[0].Status = plans.StatusBlocked
			p.Stages[0].Risks = []plans.Risk{{Code: "PLAINTEXT_CLIENT", Severity: plans.SeverityBlock, Message: "ingress sends plaintext"}}
		}, nil, nil, "blocked by the plan: PLAINTEXT_CLIENT"},
		{"policies changed since the plan", func(p *plans.Plan) {
			p.Stages[0].PolicyDigest = policyDigest()
			p.Stages[0].Policy.UpdatesExisting = false
		}, func(e *env) {
			_, _ = e.istio.SecurityV1().PeerAuthentications("cart").Create(context.Background(), &securityv1.PeerAuthentication{
				ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "cart", CreationTimestamp: metav1.NewTime(t0.Add(-time.Hour))}}, metav1.CreateOptions{})
		}, nil, "changed since the plan was made (2026-03-01T10:00:00Z): added late"},
		{"policy changed in place since the plan", nil, func(e *env) {
			pa := existingPolicy()
			pa.Spec.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_DISABLE
			pa.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Time: &metav1.Time{Time: t0.Add(-time.Hour)}}}
			if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Update(context.Background(), pa, metav1.UpdateOptions{}); err != nil {
				e.t.Fatal(err)
			}
		}, nil, "changed since the plan was made (2026-03-01T10:00:00Z): modified default (by kubectl at 2026-03-01T11:00:00Z)"},
		{"namespace missing", func(p *plans.Plan) { p.Stages[0].Namespace = "gone" }, nil, nil, `namespace "gone" does not exist`},
		{"no policyDigest", func(p *plans.Plan) { p.Stages[0].PolicyDigest = "" }, nil, nil, "stage 1 (cart) has no policyDigest, so nothing can tell"},
		{"http probe to a host outside the namespace", func(p *plans.Plan) {
			p.Stages[0].Probes = append(p.Stages[0].Probes, plans.Probe{Name: "metadata", Kind: plans.ProbeHTTP, URL: "http://169.254.169.254/latest/meta-data/", Expect: plans.Expect{Status: 200}})
		}, nil, nil, `probe metadata targets 169.254.169.254, which is no running pod, Service or gateway address it may reach; a plan's probe may target only a running pod's IP or a Service (ClusterIP, or svc.ns[.svc[.cluster.local]]) of namespace "cart"`},
		{"http probe resolving to an address outside the namespace", func(p *plans.Plan) {
			p.Stages[0].Probes = append(p.Stages[0].Probes, plans.Probe{Name: "gw", Kind: plans.ProbeHTTP, URL: "http://shop.example.com/", Resolve: "shop.example.com:80:10.0.9.9", Expect: plans.Expect{Status: 200}})
		}, nil, nil, "probe gw targets 10.0.9.9 (resolve)"},
		{"exec probe in a pod of another namespace", func(p *plans.Plan) { p.Stages[0].Probes[0].Pod = "kube-system/etcd-0" }, nil, nil,
			"probe plaintext targets pod kube-system/etcd-0 (exec), which is not a running pod there"},
		{"exec probe without --allow-exec-probes", nil, nil, func(o *Options) { o.AllowExec = false }, "runs curl inside pod cart/cart-1 (exec): pass --allow-exec-probes"},
		{"plaintext since the plan", nil, func(e *env) {
			e.prom = func(q string, ts time.Time) (model.Value, error) {
				if strings.Contains(q, "istio_requests_total") && strings.Contains(q, "connection_security_policy") {
					if !strings.Contains(q, "[2h]") { // back to the plan, made 2h ago
						return nil, fmt.Errorf("unexpected range in %s", q)
					}
					if strings.Contains(q, "unless") {
						return model.Vector{}, nil // no new series
					}
					return model.Vector{&model.Sample{Metric: model.Metric{"source_workload": "nightly", "source_workload_namespace": "batch"}, Value: 3}}, nil
				}
				return healthyProm(q, ts)
			}
		}, nil, `plaintext traffic into "cart" in the last 2h (since the plan or the tool's last probes there): batch/nightly (3 plaintext requests);`},
		{"new plaintext series since the plan", nil, func(e *env) {
			// The nightly client's first scrape already holds its 40
			// requests: increase sees nothing, the new series does.
			e.prom = func(q string, ts time.Time) (model.Value, error) {
				if strings.Contains(q, "connection_security_policy") && strings.Contains(q, "istio_requests_total") && strings.Contains(q, "unless") {
					return model.Vector{&model.Sample{Metric: model.Metric{"source_workload": "nightly", "source_workload_namespace": "batch"}, Value: 40}}, nil
				}
				return healthyProm(q, ts)
			}
		}, nil, `plaintext traffic into "cart" in the last 2h (since the plan or the tool's last probes there): batch/nightly (40 plaintext requests in series that began since)`},
		{"partial answer to the plaintext query", nil, func(e *env) {
			e.warn = func(q string, _ time.Time) v1.Warnings {
				if strings.Contains(q, "connection_security_policy") {
					return v1.Warnings{"partial response: store eu-1 unavailable"}
				}
				return nil
			}
		}, nil, `Prometheus's answer to the query for plaintext requests into "cart" cannot be judged by: it answered with warnings, so the answer may be partial: partial response: store eu-1 unavailable; check --prometheus-url and the tenant`},
		{"matrix answer to the plaintext query", nil, func(e *env) {
			e.prom = func(q string, ts time.Time) (model.Value, error) {
				if strings.Contains(q, "connection_security_policy") {
					return model.Matrix{}, nil
				}
				return healthyProm(q, ts)
			}
		}, nil, "it answered with a matrix, not an instant vector; check --prometheus-url"},
		{"no value answering the plaintext query", nil, func(e *env) {
			e.prom = func(q string, ts time.Time) (model.Value, error) {
				if strings.Contains(q, "connection_security_policy") {
					return nil, nil
				}
				return healthyProm(q, ts)
			}
		}, nil, "it answered with no value"},
		{"probe cannot reach its target", nil, func(e *env) { e.unreachable = true }, nil, "probe plaintext cannot reach its target now"},
		{"own probes of a stopped run may still be under way", nil, func(e *env) {
			_ = e.store.Update(context.Background(), func(s *state.State) error {
				s.ProbedAt = map[string]time.Time{"cart": t0.Add(30 * time.Second)}
				return nil
			})
		}, nil, "may still be under way until 2026-03-01T12:00:30Z"},
		{"stage already in progress", nil, func(e *env) {
			_ = e.store.Update(context.Background(), func(s *state.State) error {
				seedPhase(s.EnsurePlan("p", "sha256:p", t0).EnsureStage(1, "cart"), state.Soaking, t0, "")
				return nil
			})
		}, nil, "is soaking since"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			p := testPlan(true, policyDigest(existingPolicy()))
			if tt.plan != nil {
				tt.plan(p)
			}
			if tt.env != nil {
				tt.env(e)
			}
			before := e.policy()
			_, err, w := e.run(p, func(d *Deps, o *Options) {
				if tt.opts != nil {
					tt.opts(o)
				}
				if e.unreachable {
					d.Prober.Exec = &fakeExec{e: e, refuseAlways: true}
				}
			})
			if !IsRefused(err) || !strings.Contains(err.Error(), tt.refused) {
				t.Fatalf("want refusal %q, got %v", tt.refused, err)
			}
			if len(w.dry) != 0 {
				t.Fatal("refused stage reached the apply")
			}
			if after := e.policy(); after.ResourceVersion != before.ResourceVersion {
				t.Fatal("refused stage changed the policy")
			}
		})
	}
}

// TestPlaintextLookBack: pre-flight looks for plaintext back to the plan
// (at most one plan window), starting after the tool's own last probes, and
// for plaintext series that began in that time (except in the scrape grace
// right after our probes, where they may be ours).
func TestPlaintextLookBack(t *testing.T) {
	tests := []struct {
		name      string
		generated time.Time
		probedAt  time.Time // zero: never probed
		want      []string  // the plaintext queries' ranges and offsets, per metric
	}{
		{"back to the plan", t0.Add(-2 * time.Hour), time.Time{}, []string{"[2h]))", "[2h]) > 0) unless", "offset 2h)"}},
		{"a night-old plan", t0.Add(-14 * time.Hour), time.Time{}, []string{"[14h]))", "[14h]) > 0) unless", "offset 14h)"}},
		{"at most one window back", t0.Add(-10 * 24 * time.Hour), time.Time{}, []string{"[1w]))", "[1w]) > 0) unless", "offset 1w)"}},
		{"after our own probes, new series after the scrape grace", t0.Add(-2 * time.Hour), t0.Add(-30 * time.Minute), []string{"[29m59s]))", "[29m59s]) > 0) unless", "offset 28m)"}},
		{"probes within the scrape grace: increase only", t0.Add(-2 * time.Hour), t0.Add(-time.Minute), []string{"[59s]))"}},
		{"a plan from the future: an hour back", t0.Add(time.Hour), time.Time{}, []string{"[1h]))", "[1h]) > 0) unless", "offset 1h)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			if !tt.probedAt.IsZero() {
				_ = e.store.Update(context.Background(), func(s *state.State) error {
					s.ProbedAt = map[string]time.Time{"cart": tt.probedAt}
					return nil
				})
			}
			got := map[string][]string{}
			e.prom = func(q string, ts time.Time) (model.Value, error) {
				if strings.Contains(q, "connection_security_policy") {
					metric := "requests"
					if strings.Contains(q, "istio_tcp_connections_opened_total") {
						metric = "connections"
					}
					got[metric] = append(got[metric], q)
				}
				return healthyProm(q, ts)
			}
			p := testPlan(true, policyDigest(existingPolicy()))
			p.Metadata.GeneratedAt = tt.generated
			if _, err, _ := e.run(p, func(_ *Deps, o *Options) { o.DryRun = true }); err != nil {
				t.Fatal(err)
			}
			for _, metric := range []string{"requests", "connections"} {
				qs, n := got[metric], 2 // increase and new series
				if len(tt.want) == 1 {
					n = 1
				}
				if len(qs) != n {
					t.Fatalf("%s: %d queries, want %d: %v", metric, len(qs), n, qs)
				}
				all := strings.Join(qs, "\n")
				for _, w := range tt.want {
					if !strings.Contains(all, w) {
						t.Errorf("%s queries lack %q:\n%s", metric, w, all)
					}
				}
			}
		})
	}
}

// TestTelemetryCheckedWhenThePlanSawTraffic: when the plan's evidence says
// the namespace had traffic, a Prometheus with none of its Istio series
// now (wrong tenant, relabelled, fresh) refuses the stage before any
// change, as does a stage none of whose gates can judge its baseline; not
// even --force runs a blind stage.
func TestTelemetryCheckedWhenThePlanSawTraffic(t *testing.T) {
	traffic := plans.Evidence{HasTelemetry: true, MTLSRequestRate: 5, PlaintextRequestRate: 0}
	tcp := plans.Evidence{HasTelemetry: true, MTLSConnectionRate: 2}
	empty := func(string, time.Time) (model.Value, error) { return model.Vector{}, nil }
	emptyWhere := func(sub string) func(string, time.Time) (model.Value, error) {
		return func(q string, ts time.Time) (model.Value, error) {
			if strings.Contains(q, sub) {
				return model.Vector{}, nil
			}
			return healthyProm(q, ts)
		}
	}
	tests := []struct {
		name    string
		ev      plans.Evidence
		mesh    bool
		prom    func(string, time.Time) (model.Value, error)
		warn    func(string, time.Time) v1.Warnings
		force   bool
		refused string // "" when the stage must be done
	}{
		{"empty Prometheus", traffic, false, empty, nil, false,
			`the plan saw traffic into namespace "cart" (5 requests/s, 0 connections/s), but Prometheus has no Istio series for it now (empty: count(istio_requests_total{reporter="destination",destination_workload_namespace="cart"})), so no check could see anything: check that --prometheus-url is the Prometheus the plan used (the plan read http://prom.example:9090), the tenant (--prometheus-header X-Scope-OrgID=...)`},
		{"empty Prometheus, forced", traffic, false, empty, nil, true, "has no Istio series for it now"},
		{"TCP series missing", tcp, false, emptyWhere("count(istio_tcp_connections_opened_total"), nil, false,
			`empty: count(istio_tcp_connections_opened_total{reporter="destination",destination_workload_namespace="cart"})`},
		{"mesh-wide stage with no series in the mesh", traffic, true, empty, nil, false,
			`the plan saw traffic into the mesh (5 requests/s, 0 connections/s), but Prometheus has no Istio series for it now (empty: count(istio_requests_total{reporter="destination"}))`},
		{"partial answer to the series count", traffic, false, healthyProm, func(q string, _ time.Time) v1.Warnings {
			if strings.HasPrefix(q, "count(") {
				return v1.Warnings{"partial response"}
			}
			return nil
		}, false, `Prometheus's answer to the query for the Istio series of namespace "cart" cannot be judged by: it answered with warnings`},
		{"series there but every gate blind at baseline", traffic, false, emptyWhere("success"), nil, false,
			`baseline: stage 1 cannot judge what the plan saw in namespace "cart" before the change: its health: no gate can judge any of its traffic (success-rate: no baseline: the gate's query had no data before the change`},
		{"series there and a gate that judges", traffic, false, healthyProm, nil, false, ""},
		{"the plan saw no traffic: nothing to lose, not checked", plans.Evidence{HasTelemetry: false}, false, empty, nil, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.prom, e.warn = tt.prom, tt.warn
			p := testPlan(true, policyDigest(existingPolicy()))
			p.Metadata.PrometheusURL = "http://prom.example:9090"
			p.Stages[0].Evidence = tt.ev
			if tt.mesh {
				// As the planner writes it: no probes (cart has no
				// sidecar, so no meshed pod a probe could target).
				p.Stages[0].Scope, p.Stages[0].Probes = plans.ScopeMesh, nil
			}
			before := e.policy()
			res, err, w := e.run(p, func(_ *Deps, o *Options) { o.Force, o.Reason = tt.force, "test" })
			if tt.refused == "" {
				if err != nil || res.Outcome != OutcomeDone {
					t.Fatalf("want done, got %v (%+v)", err, res)
				}
				return
			}
			if !IsRefused(err) || !strings.Contains(err.Error(), tt.refused) {
				t.Fatalf("want refusal %q, got %v", tt.refused, err)
			}
			if len(w.dry) != 0 || e.policy().ResourceVersion != before.ResourceVersion || e.phase() != "" {
				t.Fatalf("refused stage changed something: applies %v, phase %q", w.dry, e.phase())
			}
		})
	}
}

func TestForcedBlockedStageRecordsTheReason(t *testing.T) {
	e := newEnv(t, true)
	p := testPlan(true, policyDigest(existingPolicy()))
	p.Stages[0].Status = plans.StatusBlocked
	res, err, _ := e.run(p, func(_ *Deps, o *Options) { o.Force, o.Reason = true, "demo" })
	if err != nil || res.Forced != "demo" {
		t.Fatalf("%v %+v", err, res)
	}
	s, _ := e.store.Load(context.Background())
	if s.Plan("sha256:p").Stage(1).ForceReason != "demo" {
		t.Fatal("force reason not recorded")
	}
}

func TestDryRunChangesNothingAndWritesNoState(t *testing.T) {
	e := newEnv(t, true)
	res, err, w := e.run(testPlan(true, policyDigest(existingPolicy())), func(_ *Deps, o *Options) { o.DryRun = true })
	if err != nil || res.Outcome != OutcomeDryRun || len(w.dry) != 1 || !w.dry[0] {
		t.Fatalf("%v %+v %v", err, res, w.dry)
	}
	if e.store.Writes != 0 {
		t.Fatalf("dry run wrote the state %d times", e.store.Writes)
	}
	if e.policy().Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE {
		t.Fatal("dry run changed the policy")
	}
}

func TestInterruptedSoakRollsBack(t *testing.T) {
	e := newEnv(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	e.prom = func(q string, ts time.Time) (model.Value, error) {
		if q == "success" && ts.After(t0.Add(15*time.Second)) {
			calls++
			if calls == 1 {
				cancel()
			}
		}
		return healthyProm(q, ts)
	}
	w := &fakeWriter{e: e}
	d := Deps{Kube: e.kube, Istio: e.istio, Writer: w, Prom: promFunc(func(q string, ts time.Time) (model.Value, error) { return e.prom(q, ts) }),
		Store: e.store, Prober: &probe.Prober{Exec: &fakeExec{e: e}, Clock: e.clock},
		Clock: e.clock, Progress: LogProgress{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	_, err := Run(ctx, d, Options{Plan: testPlan(true, policyDigest(existingPolicy())), PlanDigest: "sha256:p", Stage: 1, AllowExec: true})
	var rb *RolledBackError
	if !errors.As(err, &rb) || e.phase() != state.RolledBack {
		t.Fatalf("got %v, phase %s", err, e.phase())
	}
}

// seedPhase writes a stage's phase as a stored state document could hold
// it, bypassing the phase machine: test set-up only.
func seedPhase(st *state.StageState, ph state.Phase, at time.Time, reason string) {
	st.Phase, st.Reason = ph, reason
	st.History = append(st.History, state.Transition{Phase: ph, At: at.UTC(), Reason: reason})
	if ph == state.Done || ph == state.RolledBack || ph == state.Failed {
		st.FinishedAt = at.UTC()
	}
}

// TestProbesRetryOnTheRunsClock: a Prober without a clock retries on
// Deps.Clock (the fake here, so the 10s pre-check passes instantly), and
// the caller's Prober is left as given.
func TestProbesRetryOnTheRunsClock(t *testing.T) {
	e := newEnv(t, true)
	var given *probe.Prober
	_, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) {
		d.Prober.Clock = nil
		d.Prober.Exec = &fakeExec{e: e, refuseAlways: true}
		given = d.Prober
	})
	if !IsRefused(err) || !strings.Contains(err.Error(), "cannot reach its target now") {
		t.Fatalf("want the pre-check refusal, got %v", err)
	}
	if waited := e.clock.now.Sub(t0); waited < 10*time.Second {
		t.Errorf("the run's clock advanced %s during the probe retries, want >= 10s", waited)
	}
	if given.Clock != nil {
		t.Error("Run changed the caller's Prober")
	}
}

// teamPolicy is a second namespace-wide policy in cart, younger than
// existingPolicy: Istio ignores it today.
func teamPolicy() *securityv1.PeerAuthentication {
	pa := existingPolicy()
	pa.Name, pa.UID, pa.CreationTimestamp = "team", "uid-team", metav1.NewTime(t0.Add(-time.Hour))
	pa.Labels, pa.Annotations = map[string]string{"owner": "team"}, nil
	return pa
}

func TestStageWritesEveryNamespaceWidePolicyAndRollsThemAllBack(t *testing.T) {
	e := newEnv(t, true)
	if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Create(context.Background(), teamPolicy(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := testPlan(true, policyDigest(existingPolicy(), teamPolicy()))
	p.Stages[0].Policy.AlsoUpdates = []string{"team"}
	res, err, _ := e.run(p, nil)
	if err != nil || res.Outcome != OutcomeDone {
		t.Fatalf("outcome %s: %v", res.Outcome, err)
	}
	for _, name := range []string{"default", "team"} {
		pa, _ := e.istio.SecurityV1().PeerAuthentications("cart").Get(context.Background(), name, metav1.GetOptions{})
		if pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_STRICT || pa.Annotations[peerauth.StageAnnotation] != "p/1" {
			t.Errorf("%s after the stage: %v %v, want STRICT with the stage annotation", name, pa.Spec.GetMtls().GetMode(), pa.Annotations)
		}
	}
	if len(res.AlsoApplied) != 1 || res.AlsoApplied[0].Name != "team" {
		t.Errorf("AlsoApplied = %v", res.AlsoApplied)
	}
	s, _ := e.store.Load(context.Background())
	ss := s.Plan("sha256:p").Stage(1)
	if len(ss.AlsoTargets) != 1 || ss.AlsoTargets[0].Name != "team" || ss.AlsoTargets[0].UID != "uid-team" || ss.AlsoTargets[0].Created {
		t.Fatalf("state's other targets = %+v", ss.AlsoTargets)
	}
	rb := &rollback.Runner{Istio: e.istio, Store: e.store, Now: e.clock.Now}
	if _, err := rb.Stages(context.Background(), "sha256:p", []int{1}, "test", rollback.Options{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []*securityv1.PeerAuthentication{existingPolicy(), teamPolicy()} {
		got, _ := e.istio.SecurityV1().PeerAuthentications("cart").Get(context.Background(), want.Name, metav1.GetOptions{})
		if !proto.Equal(&got.Spec, &want.Spec) || !maps.Equal(got.Labels, want.Labels) || len(got.Annotations) != len(want.Annotations) || got.UID != want.UID {
			t.Errorf("%s after the rollback: %+v", want.Name, got)
		}
	}
}

func TestPreflightRefusesWhenTheTargetNoLongerMatchesThePlan(t *testing.T) {
	e := newEnv(t, true)
	// The plan's digest is of the live objects, but its policy was written
	// as if default were the only namespace-wide one (a hand-edited plan):
	// team is there too.
	if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Create(context.Background(), teamPolicy(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err, w := e.run(testPlan(true, policyDigest(existingPolicy(), teamPolicy())), nil)
	if !IsRefused(err) || !strings.Contains(err.Error(), "the plan would update default in place") || !strings.Contains(err.Error(), "the other namespace-wide ones, team") {
		t.Fatalf("err = %v", err)
	}
	if len(w.dry) != 0 {
		t.Fatal("refused stage reached the apply")
	}
}

// TestTCPTrafficIsJudgedOrRefused: a namespace serving raw TCP was verified
// by nothing (every default gate counted requests; probes existed only for
// HTTP) and recorded done. Now TCP the plan saw must be exercised by a tcp
// probe or judged by a TCP gate with a baseline, or the stage is refused
// before any change; --force goes on and says what nobody verified.
func TestTCPTrafficIsJudgedOrRefused(t *testing.T) {
	w := plans.Duration(time.Minute)
	prom := func(tcpSamples float64) func(string, time.Time) (model.Value, error) {
		return func(q string, ts time.Time) (model.Value, error) {
			switch {
			case strings.Contains(q, "connection_security_policy"):
				return model.Vector{}, nil // no plaintext
			case strings.HasPrefix(q, "count("):
				return model.Vector{&model.Sample{Value: 3}}, nil // the series exist
			case strings.Contains(q, "response_code=~") || strings.Contains(q, "response_flags=~"):
				if !strings.Contains(q, "increase(") {
					return model.Vector{&model.Sample{Value: 0}}, nil // no errors
				}
			case strings.Contains(q, "istio_tcp_"):
				if tcpSamples == 0 {
					return model.Vector{}, nil
				}
				return model.Vector{&model.Sample{Value: model.SampleValue(tcpSamples)}}, nil
			}
			return model.Vector{&model.Sample{Value: 100}}, nil
		}
	}
	tests := []struct {
		name       string
		tcpSamples float64
		force      bool
		refused    string
	}{
		{"TCP gates blind, request gates judging", 0, false, `cannot judge what the plan saw in namespace "cart" before the change: its TCP connections: no probe exercises them and no gate can judge them`},
		{"TCP gates with a baseline", 5000, false, ""},
		{"TCP gates blind, forced", 0, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.prom = prom(tt.tcpSamples)
			p := testPlan(true, policyDigest(existingPolicy()))
			p.Stages[0].Evidence = plans.Evidence{HasTelemetry: true, MTLSRequestRate: 5, MTLSConnectionRate: 2}
			p.Stages[0].Gates = append(gates.Defaults("cart", w), gates.TCPGates("cart", w)...)
			before := e.policy()
			res, err, wr := e.run(p, func(_ *Deps, o *Options) { o.Force, o.Reason = tt.force, "checked the redis clients by hand" })
			if tt.refused != "" {
				if !IsRefused(err) || !strings.Contains(err.Error(), tt.refused) {
					t.Fatalf("want refusal %q, got %v", tt.refused, err)
				}
				if len(wr.dry) != 0 || e.policy().ResourceVersion != before.ResourceVersion || e.phase() != "" {
					t.Fatalf("refused stage changed something: applies %v, phase %q", wr.dry, e.phase())
				}
				return
			}
			if err != nil || res.Outcome != OutcomeDone {
				t.Fatalf("want done, got %v (%+v)", err, res)
			}
			said := strings.Join(res.Notes, "\n")
			if tt.force != strings.Contains(said, "forced: stage 1 cannot judge what the plan saw") {
				t.Errorf("notes %q: a forced blind stage must say what nobody verified, and only then", said)
			}
		})
	}
}
