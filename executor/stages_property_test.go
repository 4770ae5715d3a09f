package executor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	apisecurity "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry/telemetrytest"
	"github.com/mtls-migrate/mtls-migrate/planner"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

// The property: for any set of PeerAuthentications, every stage the planner
// offers (not blocked) passes pre-flight against the same objects, applies,
// leaves exactly the modes the plan recorded, has probes that agree with
// those modes (and can be pre-checked before the change), and rolls back to
// the objects as they were. A plan whose stage pre-flight refuses on the
// cluster it was made for sends its user into "re-run plan" forever.

const (
	propNS   = "app"
	propRoot = "istio-system"
)

var (
	propApps  = []string{"a", "b", "c"}
	propPorts = []uint32{8080, 9090}
	// Names are drawn from a small pool so they collide: with the name the
	// tool creates ("default"), with its fallbacks, and with each other's
	// order (equal creation seconds, names either side of "default").
	propNames = []string{"default", "mtls-migrate-default", "mtls-migrate-default-2", "aaa-legacy", "team", "zz-last"}
	propModes = []apisecurity.PeerAuthentication_MutualTLS_Mode{
		apisecurity.PeerAuthentication_MutualTLS_UNSET, apisecurity.PeerAuthentication_MutualTLS_DISABLE,
		apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, apisecurity.PeerAuthentication_MutualTLS_STRICT,
	}
	propBase = time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	propNow  = propBase.Add(48 * time.Hour)
)

// genPolicies draws a namespace's and the root namespace's
// PeerAuthentications.
func genPolicies(rng *rand.Rand) []*securityv1.PeerAuthentication {
	var out []*securityv1.PeerAuthentication
	add := func(ns string, names []string, wide, sel int, portLevel bool) {
		rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		for i := 0; i < wide+sel && i < len(names); i++ {
			pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{
				Namespace: ns, Name: names[i], UID: types.UID("uid-" + ns + "-" + names[i]), ResourceVersion: "1",
				// Kubernetes keeps seconds: equal seconds are common, and
				// then the name decides.
				CreationTimestamp: metav1.NewTime(propBase.Add(time.Duration(rng.IntN(3)) * time.Second)),
			}}
			if rng.IntN(4) == 0 {
				pa.Labels = map[string]string{"team": "x"}
			}
			if rng.IntN(4) == 0 {
				pa.Labels = map[string]string{peerauth.ManagedByLabel: peerauth.ManagedByValue}
			}
			if rng.IntN(4) == 0 {
				pa.Annotations = map[string]string{"owner": "someone"}
			}
			if rng.IntN(6) != 0 {
				pa.Spec.Mtls = &apisecurity.PeerAuthentication_MutualTLS{Mode: propModes[rng.IntN(len(propModes))]}
			}
			if i >= wide {
				pa.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": propApps[rng.IntN(len(propApps))]}}
				if portLevel {
					for _, port := range propPorts {
						if rng.IntN(3) == 0 {
							if pa.Spec.PortLevelMtls == nil {
								pa.Spec.PortLevelMtls = map[uint32]*apisecurity.PeerAuthentication_MutualTLS{}
							}
							pa.Spec.PortLevelMtls[port] = &apisecurity.PeerAuthentication_MutualTLS{Mode: propModes[rng.IntN(len(propModes))]}
						}
					}
				}
			} else if rng.IntN(8) == 0 {
				// An empty selector is namespace-wide too.
				pa.Spec.Selector = &typev1beta1.WorkloadSelector{}
			}
			out = append(out, pa)
		}
	}
	add(propNS, slices.Clone(propNames), rng.IntN(4), rng.IntN(4), true)
	add(propRoot, slices.Clone(propNames), rng.IntN(3), rng.IntN(2), false)
	return out
}

func describePolicies(pas []*securityv1.PeerAuthentication) string {
	var b strings.Builder
	for _, pa := range pas {
		sel := "namespace-wide"
		if s := pa.Spec.GetSelector(); s != nil {
			sel = fmt.Sprintf("selector %v", s.GetMatchLabels())
		}
		mode := "no mtls block"
		if m := pa.Spec.GetMtls(); m != nil {
			mode = m.GetMode().String()
		}
		var ports []string
		for p, m := range pa.Spec.GetPortLevelMtls() {
			ports = append(ports, fmt.Sprintf("%d:%s", p, m.GetMode()))
		}
		sort.Strings(ports)
		fmt.Fprintf(&b, "  %s/%s created +%ds %s %s ports %v labels %v\n", pa.Namespace, pa.Name,
			int(pa.CreationTimestamp.Sub(propBase).Seconds()), sel, mode, ports, pa.Labels)
	}
	return b.String()
}

type propCluster struct {
	kube  *kubefake.Clientset
	istio *istiofake.Clientset
	pods  map[string]*corev1.Pod // by IP
}

func newPropCluster(t *testing.T, pas []*securityv1.PeerAuthentication) *propCluster {
	t.Helper()
	c := &propCluster{pods: map[string]*corev1.Pod{}}
	objs := []runtime.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: propRoot}, Data: map[string]string{"mesh": "rootNamespace: istio-system\nenableAutoMtls: true\n"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: propRoot}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: propNS, Labels: map[string]string{"istio-injection": "enabled"}}},
	}
	for i, app := range propApps {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: app + "-0", Namespace: propNS, Labels: map[string]string{"app": app}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "http-admin", ContainerPort: 9090}}},
				{Name: "istio-proxy", Args: []string{"proxy", "sidecar"}, Env: []corev1.EnvVar{{Name: "ISTIO_META_WORKLOAD_NAME", Value: app}}},
			}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0." + strconv.Itoa(i+1),
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		}
		c.pods[pod.Status.PodIP] = pod
		objs = append(objs, pod, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: propNS},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": app}, Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
				{Name: "http-admin", Port: 9090, TargetPort: intstr.FromInt32(9090), Protocol: corev1.ProtocolTCP},
			}},
		})
	}
	c.kube = kubefake.NewClientset(objs...)
	c.istio = istiofake.NewSimpleClientset()
	gvr := securityv1.SchemeGroupVersion.WithResource("peerauthentications")
	for _, pa := range pas {
		if err := c.istio.Tracker().Create(gvr, pa, pa.Namespace); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *propCluster) list(t *testing.T, ns string) []*securityv1.PeerAuthentication {
	t.Helper()
	pas, err := peerauth.List(context.Background(), c.istio, ns)
	if err != nil {
		t.Fatal(err)
	}
	return pas
}

// resolver is the ground truth: Istio's precedence over the live objects.
func (c *propCluster) resolver(t *testing.T) *mtlsmode.Resolver {
	var ps []mtlsmode.Policy
	for _, ns := range []string{propNS, propRoot} {
		for _, pa := range c.list(t, ns) {
			ps = append(ps, mtlsmode.FromV1(pa))
		}
	}
	return mtlsmode.NewResolver(propRoot, ps)
}

func (c *propCluster) mode(r *mtlsmode.Resolver, app string, port uint32) plans.Mode {
	return r.Effective(mtlsmode.Workload{Namespace: propNS, Labels: map[string]string{"app": app}, Ports: propPorts}).PortMode(port)
}

func (c *propCluster) plan(t *testing.T) *plans.Plan {
	t.Helper()
	prom := &telemetrytest.Fake{Versions: map[string]string{"proxy": "1.26.2"}, Flows: []telemetrytest.Flow{
		{DstNS: propNS, DstWorkload: "a", SrcNS: propNS, SrcWorkload: "b", CSP: "mutual_tls", PerStep: 3600},
		{DstNS: propNS, DstWorkload: "b", SrcNS: propNS, SrcWorkload: "c", CSP: "mutual_tls", PerStep: 3600},
		{DstNS: propNS, DstWorkload: "c", SrcNS: propNS, SrcWorkload: "a", CSP: "mutual_tls", PerStep: 3600},
	}}
	p, err := planner.Build(context.Background(), planner.Inputs{
		Prometheus: prom, Kube: c.kube, Istio: c.istio,
		Now: func() time.Time { return propNow }, Window: 7 * 24 * time.Hour,
	})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	return p
}

// newRun is a run of stage n with the cluster's clients and the plan's
// state (one store per plan: a stage whose policyDigest is after-stage:N
// starts from what stage N recorded when it was done).
func (c *propCluster) newRun(p *plans.Plan, n int, store state.Store) *run {
	clk := &fakeClock{now: propNow.Add(time.Minute)}
	log := []string{}
	d := Deps{
		Kube: c.kube, Istio: c.istio, Writer: &fakeWriter{e: &env{istio: c.istio, log: &log}},
		Prom: promFunc(healthyProm), Store: store, Clock: clk,
		Progress: LogProgress{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
	}
	d.defaults()
	o := Options{Plan: p, PlanDigest: "sha256:prop", Stage: n, Actor: "prop"}
	o.defaults()
	st := &p.Stages[n-1]
	return &run{d: d, o: o, ref: stageRef{Digest: o.PlanDigest, Number: n, Namespace: st.Namespace}, stage: st,
		res: &Result{Stage: n, Namespace: st.Namespace}}
}

// afterMode is the mode the plan records for app's port after the stage.
func afterMode(st *plans.Stage, app string, port uint32) plans.Mode {
	m := st.TargetMode
	for _, mc := range st.Modes {
		if mc.Workload == app && mc.Port == 0 {
			m = mc.After
		}
	}
	for _, mc := range st.Modes {
		if mc.Workload == app && mc.Port == int32(port) {
			return mc.After
		}
	}
	return m
}

type policyState struct {
	UID, Created string
	Labels       map[string]string
	Annotations  map[string]string
	Spec         *apisecurity.PeerAuthentication
}

func snapshotPolicies(pas []*securityv1.PeerAuthentication) map[string]policyState {
	out := map[string]policyState{}
	for _, pa := range pas {
		out[pa.Name] = policyState{UID: string(pa.UID), Created: pa.CreationTimestamp.UTC().Format(time.RFC3339),
			Labels: pa.Labels, Annotations: pa.Annotations, Spec: &pa.Spec}
	}
	return out
}

func samePolicies(a, b map[string]policyState) string {
	for name, x := range a {
		y, ok := b[name]
		switch {
		case !ok:
			return name + " is gone"
		case x.UID != y.UID || x.Created != y.Created:
			return name + " was recreated"
		case !proto.Equal(x.Spec, y.Spec):
			return fmt.Sprintf("%s: spec %v, want %v", name, y.Spec, x.Spec)
		case len(x.Labels)+len(y.Labels) > 0 && !maps.Equal(x.Labels, y.Labels):
			return fmt.Sprintf("%s: labels %v, want %v", name, y.Labels, x.Labels)
		case len(x.Annotations)+len(y.Annotations) > 0 && !maps.Equal(x.Annotations, y.Annotations):
			return fmt.Sprintf("%s: annotations %v, want %v", name, y.Annotations, x.Annotations)
		}
	}
	for name := range b {
		if _, ok := a[name]; !ok {
			return name + " was left behind"
		}
	}
	return ""
}

// propCoverage counts what the generated cases exercised, so the
// generator cannot drift into testing nothing.
type propCoverage struct {
	stages, alsoUpdates, createdElsewhere, answerProbes, refusedProbes, twoStep, mesh int
}

// checkStages carries out every offered stage of the plan in order and
// returns what broke the property, "" when nothing.
func checkStages(t *testing.T, c *propCluster, p *plans.Plan, cov *propCoverage) string {
	ctx := context.Background()
	store := state.NewMemory()
	for i := range p.Stages {
		st := &p.Stages[i]
		if st.Status == plans.StatusBlocked {
			continue
		}
		cov.stages++
		if len(st.Policy.AlsoUpdates) > 0 {
			cov.alsoUpdates++
		}
		if !st.Policy.UpdatesExisting && st.Policy.Metadata.Name != "default" {
			cov.createdElsewhere++
		}
		if _, ok := st.PolicyAfterStage(); ok && st.TargetMode == plans.ModeStrict {
			cov.twoStep++
		}
		if st.Scope == plans.ScopeMesh {
			cov.mesh++
		}
		for _, pr := range st.Probes {
			if pr.Expect.Refused {
				cov.refusedProbes++
			} else if pr.Resolve == "" {
				cov.answerProbes++
			}
		}
		where := fmt.Sprintf("stage %d (%s, %s to %s, policy %s)", st.Number, st.Namespace, st.Status, st.TargetMode, st.Policy.Metadata.Name)
		before := c.resolver(t)
		snap := snapshotPolicies(c.list(t, st.Namespace))

		r := c.newRun(p, st.Number, store)
		if err := r.preflight(ctx); err != nil {
			return fmt.Sprintf("%s: pre-flight on the cluster the plan was made for: %v", where, err)
		}
		if err := r.snapshot(ctx); err != nil {
			return fmt.Sprintf("%s: snapshot: %v", where, err)
		}
		if err := r.apply(ctx); err != nil {
			return fmt.Sprintf("%s: apply: %v", where, err)
		}
		after := c.resolver(t)

		if st.Scope != plans.ScopeMesh {
			for _, app := range propApps {
				for _, port := range propPorts {
					if got, want := c.mode(after, app, port), afterMode(st, app, port); got != want {
						return fmt.Sprintf("%s: %s:%d is %s after the apply, the plan's modes say %s", where, app, port, got, want)
					}
				}
			}
		}
		probed := map[string]bool{}
		for _, pr := range st.Probes {
			if pr.Resolve != "" {
				continue // through the gateway
			}
			u, err := url.Parse(pr.URL)
			if err != nil {
				return fmt.Sprintf("%s: probe %s: %v", where, pr.Name, err)
			}
			pod := c.pods[u.Hostname()]
			port, _ := strconv.Atoi(u.Port())
			if pod == nil {
				return fmt.Sprintf("%s: probe %s targets no pod (%s)", where, pr.Name, pr.URL)
			}
			app := pod.Labels["app"]
			probed[app+":"+u.Port()] = true
			b, a := c.mode(before, app, uint32(port)), c.mode(after, app, uint32(port))
			switch {
			case b == plans.ModeStrict:
				return fmt.Sprintf("%s: probe %s on %s:%d, which refuses plaintext already before the stage: its pre-check can never pass", where, pr.Name, app, port)
			case pr.Expect.Refused && a != plans.ModeStrict:
				return fmt.Sprintf("%s: probe %s expects %s:%d to refuse plaintext, but it is %s after the stage", where, pr.Name, app, port, a)
			case !pr.Expect.Refused && a == plans.ModeStrict:
				return fmt.Sprintf("%s: probe %s expects an answer from %s:%d, which is STRICT after the stage", where, pr.Name, app, port)
			}
		}
		if st.TargetMode == plans.ModeStrict && st.Scope != plans.ScopeMesh {
			for _, app := range propApps {
				for _, port := range propPorts {
					if c.mode(before, app, port) != plans.ModeStrict && !probed[app+":"+strconv.Itoa(int(port))] {
						return fmt.Sprintf("%s: no probe verifies %s:%d (%s after the stage)", where, app, port, c.mode(after, app, port))
					}
				}
			}
		}

		s, err := r.d.Store.Load(ctx)
		if err != nil {
			return err.Error()
		}
		ss := s.Plan(r.o.PlanDigest).Stage(st.Number)
		if _, err := rollback.Restore(ctx, c.istio, ss, rollback.Options{}); err != nil {
			return fmt.Sprintf("%s: rollback: %v", where, err)
		}
		if d := samePolicies(snap, snapshotPolicies(c.list(t, st.Namespace))); d != "" {
			return fmt.Sprintf("%s: after the rollback %s", where, d)
		}
		for _, ph := range []state.Phase{state.RollingBack, state.RolledBack} {
			if err := r.setPhase(ctx, ph, "property test", nil); err != nil {
				return fmt.Sprintf("%s: record %s: %v", where, ph, err)
			}
		}

		// Carry the stage out again and record it done as a run does
		// (with the digest of what it left): the next stages come after it.
		r = c.newRun(p, st.Number, store)
		if err := r.preflight(ctx); err != nil {
			return fmt.Sprintf("%s: pre-flight after its own rollback: %v", where, err)
		}
		if err := r.snapshot(ctx); err != nil {
			return fmt.Sprintf("%s: snapshot again: %v", where, err)
		}
		if err := r.apply(ctx); err != nil {
			return fmt.Sprintf("%s: apply again: %v", where, err)
		}
		if err := r.setPhase(ctx, state.Soaking, "", nil); err != nil {
			return fmt.Sprintf("%s: record soaking: %v", where, err)
		}
		if err := r.stillTrue(ctx); err != nil {
			return fmt.Sprintf("%s: before done: %v", where, err)
		}
		if err := r.recordDone(ctx); err != nil {
			return fmt.Sprintf("%s: record done: %v", where, err)
		}
	}
	return ""
}

func TestEveryOfferedStagePassesPreflightAppliesAsPlannedAndRollsBack(t *testing.T) {
	rng := rand.New(rand.NewPCG(20260301, 10))
	cases := 300
	failed := 0
	var cov propCoverage
	for i := range cases {
		pas := genPolicies(rng)
		c := newPropCluster(t, pas)
		p := c.plan(t)
		if why := checkStages(t, c, p, &cov); why != "" {
			failed++
			if failed <= 3 {
				t.Errorf("case %d: %s\nPeerAuthentications:\n%s", i, why, describePolicies(pas))
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d generated namespaces broke the property", failed, cases)
	}
	t.Logf("coverage: %+v", cov)
	if cov.alsoUpdates < 20 || cov.createdElsewhere < 20 || cov.answerProbes < 20 || cov.refusedProbes < 20 || cov.twoStep < 5 || cov.mesh < 100 {
		t.Errorf("the generator exercised too little: %+v", cov)
	}
}

// pa is one PeerAuthentication of the dead-end cases.
func pa(ns, name string, sec int, sel map[string]string, mode apisecurity.PeerAuthentication_MutualTLS_Mode, ports map[uint32]apisecurity.PeerAuthentication_MutualTLS_Mode) *securityv1.PeerAuthentication {
	p := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), ResourceVersion: "1",
		CreationTimestamp: metav1.NewTime(propBase.Add(time.Duration(sec) * time.Second))}}
	p.Spec.Mtls = &apisecurity.PeerAuthentication_MutualTLS{Mode: mode}
	if sel != nil {
		p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: sel}
	}
	for port, m := range ports {
		if p.Spec.PortLevelMtls == nil {
			p.Spec.PortLevelMtls = map[uint32]*apisecurity.PeerAuthentication_MutualTLS{}
		}
		p.Spec.PortLevelMtls[port] = &apisecurity.PeerAuthentication_MutualTLS{Mode: m}
	}
	return p
}

// The three dead ends a review found: the plan offered the stage, pre-flight
// (or the stage's own probes) refused it with "re-run plan", and a new plan
// was the same plan.
func TestStagesThePlanOffersCanBeCarriedOut(t *testing.T) {
	const (
		P = apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE
		S = apisecurity.PeerAuthentication_MutualTLS_STRICT
	)
	tests := []struct {
		name  string
		pas   []*securityv1.PeerAuthentication
		check func(*plans.Stage) string
	}{
		{"two namespace-wide policies: both are written", []*securityv1.PeerAuthentication{
			pa(propNS, "legacy", 0, nil, P, nil), pa(propNS, "team", 0, nil, P, nil),
		}, func(st *plans.Stage) string {
			if st.Policy.Metadata.Name != "legacy" || !slices.Equal(st.Policy.AlsoUpdates, []string{"team"}) {
				return fmt.Sprintf("policy %+v, want legacy (oldest: equal seconds, then name) also updating team", st.Policy)
			}
			return ""
		}},
		{"a workload policy named default: a free name is created", []*securityv1.PeerAuthentication{
			pa(propNS, "default", 0, map[string]string{"app": "a"}, S, nil),
		}, func(st *plans.Stage) string {
			if st.Policy.Metadata.Name != "mtls-migrate-default" || st.Policy.UpdatesExisting {
				return fmt.Sprintf("policy %+v, want a new mtls-migrate-default", st.Policy)
			}
			return ""
		}},
		{"a port-level carve-out: its port is probed for an answer", []*securityv1.PeerAuthentication{
			pa(propNS, "a-health", 0, map[string]string{"app": "a"}, apisecurity.PeerAuthentication_MutualTLS_UNSET, map[uint32]apisecurity.PeerAuthentication_MutualTLS_Mode{9090: P}),
		}, func(st *plans.Stage) string {
			for _, pr := range st.Probes {
				if strings.HasSuffix(pr.URL, ":9090/") && strings.Contains(pr.URL, "10.0.0.1:") {
					if pr.Expect.Status != 200 || pr.Name != "plaintext-permissive-a-9090" {
						return fmt.Sprintf("probe %+v, want plaintext-permissive-a-9090 expecting HTTP 200", pr)
					}
					return ""
				}
			}
			return fmt.Sprintf("no probe for a:9090 in %+v", st.Probes)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newPropCluster(t, tt.pas)
			p := c.plan(t)
			var st *plans.Stage
			for i := range p.Stages {
				if p.Stages[i].Namespace == propNS && p.Stages[i].TargetMode == plans.ModeStrict {
					st = &p.Stages[i]
				}
			}
			if st == nil || st.Status == plans.StatusBlocked {
				t.Fatalf("no offered STRICT stage for %s: %+v", propNS, st)
			}
			if why := tt.check(st); why != "" {
				t.Error(why)
			}
			if why := checkStages(t, c, p, &propCoverage{}); why != "" {
				t.Errorf("%s\nPeerAuthentications:\n%s", why, describePolicies(tt.pas))
			}
		})
	}
}
