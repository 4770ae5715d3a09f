package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
)

// conformanceRounds is how many random policy sets one run drives through
// istiod; CONFORMANCE_SEED replays a run (the seed is logged).
const conformanceRounds = 8

// conformanceNamespaces are the scenario's meshed namespaces; the root
// namespace (istio-system) gets mesh-wide policies.
var conformanceNamespaces = []string{"alpha", "beta"}

// TestE2EConformanceWithIstiod drives random PeerAuthentication and
// DestinationRule sets through the real istiod (scenarios/conformance.yaml)
// and compares, port by port, what the sidecars enforce (a plaintext and an
// mTLS connection straight to the pod) with what `mtls-migrate status`
// says each workload's effective mode is; then, for a namespace stage the
// plan offers, writes the stage's policy and compares what the sidecars
// enforce with the plan's after-modes. The sets mix mesh-wide, namespace
// and workload policies, port-level modes (the CRD refuses them on a
// policy without a selector), two namespace-wide policies in one
// namespace (the oldest wins, then the name), and DestinationRules with
// tls DISABLE or ISTIO_MUTUAL (which change what clients send, not what a
// server accepts).
func TestE2EConformanceWithIstiod(t *testing.T) {
	s := startScenario(t, "conformance.yaml", nil, func(o *sandbox.Options) { o.Istiod = true })
	createStateNamespace(t, s)
	p := &product{t: t, bin: buildProduct(t), s: s}
	d := dyn(t, s)
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CONFORMANCE_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("CONFORMANCE_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (CONFORMANCE_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	waitTelemetry(t, s, 5*time.Second)

	afterChecked := 0
	for round := 1; round <= conformanceRounds; round++ {
		clearPolicies(ctx, t, d)
		set := randomSet(rng)
		for _, u := range set {
			if _, err := d.Resource(gvrOf(u)).Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{}); err != nil {
				t.Fatalf("round %d: create %s %s/%s: %v", round, u.GetKind(), u.GetNamespace(), u.GetName(), err)
			}
		}
		desc := describeSet(set)

		// What status says, port by port; then what the sidecars enforce,
		// once istiod has pushed (it is eventual: up to 20 s).
		want := statusModes(ctx, t, p, s)
		if diff := awaitEnforced(ctx, s, want, 20*time.Second); diff != "" {
			t.Fatalf("round %d: the sidecars (istiod's configuration) and `mtls-migrate status` disagree:\n%s\npolicies:\n%s", round, diff, desc)
		}
		t.Logf("round %d: %d ports agree with status; policies:\n%s", round, len(want), desc)

		// The plan's after-modes: write one offered namespace stage's
		// policy as apply would, and compare.
		plan, _ := p.plan(t.TempDir())
		st := offeredNamespaceStage(plan, rng)
		if st == nil {
			continue
		}
		writeStagePolicy(ctx, t, d, st)
		after := afterModes(s, st)
		if diff := awaitEnforced(ctx, s, after, 20*time.Second); diff != "" {
			t.Fatalf("round %d: after stage %d (%s -> %s) the sidecars disagree with the plan's after-modes:\n%s\npolicies before the stage:\n%s",
				round, st.Number, st.Namespace, st.TargetMode, diff, desc)
		}
		afterChecked++
		t.Logf("round %d: stage %d (%s -> %s): %d ports agree with the plan's after-modes", round, st.Number, st.Namespace, st.TargetMode, len(after))
	}
	clearPolicies(ctx, t, d)
	if afterChecked == 0 {
		t.Errorf("no round offered a namespace stage: the plan's after-modes were never compared (seed %d)", seed)
	}
}

// portKey is one container port of a workload.
type portKey struct {
	ns, workload string
	port         int
}

func (k portKey) String() string { return fmt.Sprintf("%s/%s:%d", k.ns, k.workload, k.port) }

// statusModes is, for every port of the scenario's meshed workloads, the
// effective mode `mtls-migrate status -o json` says: the port's override,
// else the workload's, else the namespace's. UNSET means PERMISSIVE.
func statusModes(ctx context.Context, t *testing.T, p *product, s *sandbox.Sandbox) map[portKey]plans.Mode {
	t.Helper()
	r := p.run(ctx, "status", "-o", "json", "--state-namespace", stateNamespace)
	if r.code != 0 {
		t.Fatalf("status: %s", r)
	}
	var rep struct {
		Namespaces []struct {
			Name      string     `json:"name"`
			Mode      plans.Mode `json:"mode"`
			Overrides []struct {
				Workload string     `json:"workload"`
				Port     *uint32    `json:"port"`
				Mode     plans.Mode `json:"mode"`
			} `json:"overrides"`
		} `json:"namespaces"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, r.stdout)
	}
	out := map[portKey]plans.Mode{}
	for _, ns := range conformanceNamespaces {
		for w, ports := range workloadPorts(s, ns) {
			for _, port := range ports {
				mode := plans.Mode("")
				for _, row := range rep.Namespaces {
					if row.Name != ns {
						continue
					}
					mode = row.Mode
					var wl, pl plans.Mode
					for _, o := range row.Overrides {
						if o.Workload != w {
							continue
						}
						if o.Port == nil {
							wl = o.Mode
						} else if int(*o.Port) == port {
							pl = o.Mode
						}
					}
					if wl != "" {
						mode = wl
					}
					if pl != "" {
						mode = pl
					}
				}
				if mode == "" {
					t.Fatalf("status has no row for namespace %s:\n%s", ns, r.stdout)
				}
				out[portKey{ns, w, port}] = effective(mode)
			}
		}
	}
	return out
}

func effective(m plans.Mode) plans.Mode {
	if m == "" || m == plans.ModeUnset {
		return plans.ModePermissive
	}
	return m
}

// enforced is what the sidecar of the workload's pod accepts on port: a
// plaintext connection from outside the mesh and an mTLS one from a meshed
// identity, read as a mode.
func enforced(ctx context.Context, s *sandbox.Sandbox, k portKey) plans.Mode {
	plain := s.ProbePod(ctx, k.ns, k.workload, k.port, false) == dataplane.OutcomeSuccess
	mtls := s.ProbePod(ctx, k.ns, k.workload, k.port, true) == dataplane.OutcomeSuccess
	switch {
	case plain && mtls:
		return plans.ModePermissive
	case mtls:
		return plans.ModeStrict
	case plain:
		return plans.ModeDisable
	}
	return "NOTHING"
}

// awaitEnforced waits up to d for every port to enforce want; it returns
// the ports that still differ ("" when all agree).
func awaitEnforced(ctx context.Context, s *sandbox.Sandbox, want map[portKey]plans.Mode, d time.Duration) string {
	return eventually(d, func() string {
		var diffs []string
		for k, m := range want {
			if got := enforced(ctx, s, k); got != m {
				diffs = append(diffs, fmt.Sprintf("  %s: sidecar enforces %s, expected %s", k, got, m))
			}
		}
		sort.Strings(diffs)
		return strings.Join(diffs, "\n")
	})
}

// randomSet is one random set of policies: a mesh-wide one, one or two
// namespace-wide ones per namespace, workload ones (by app, or by a label
// two workloads share) with port-level modes, and DestinationRules.
func randomSet(rng *rand.Rand) []*unstructured.Unstructured {
	modes := []string{"", "UNSET", "DISABLE", "PERMISSIVE", "STRICT"}
	mode := func() string { return modes[rng.IntN(len(modes))] }
	// A port-level entry needs a mode (the CRD refuses an empty one).
	portMode := func() string { return modes[1+rng.IntN(len(modes)-1)] }
	var out []*unstructured.Unstructured
	pa := func(ns, name string, selector map[string]string, m string, ports map[int]string) {
		spec := map[string]any{}
		if m != "" {
			spec["mtls"] = map[string]any{"mode": m}
		}
		if len(selector) > 0 {
			sel := map[string]any{}
			for k, v := range selector {
				sel[k] = v
			}
			spec["selector"] = map[string]any{"matchLabels": sel}
		}
		if len(ports) > 0 {
			pl := map[string]any{}
			for port, pm := range ports {
				pl[strconv.Itoa(port)] = map[string]any{"mode": pm}
			}
			spec["portLevelMtls"] = pl
		}
		out = append(out, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
			"metadata": map[string]any{"name": name, "namespace": ns}, "spec": spec,
		}})
	}
	if rng.IntN(3) > 0 {
		pa("istio-system", "mesh", nil, mode(), nil)
	}
	for _, ns := range conformanceNamespaces {
		switch rng.IntN(4) {
		case 1:
			pa(ns, "default", nil, mode(), nil)
		case 2:
			// No mtls block at all: UNSET, as the mode "UNSET" is.
			pa(ns, "default", nil, "", nil)
		case 3:
			// Two namespace-wide policies: the oldest wins, then the name.
			pa(ns, "zz-first", nil, mode(), nil)
			pa(ns, "aa-second", nil, mode(), nil)
		}
	}
	if rng.IntN(2) == 0 {
		ports := map[int]string{}
		if rng.IntN(2) == 0 {
			ports[8080] = portMode()
		}
		if rng.IntN(2) == 0 {
			ports[9000] = portMode()
		}
		if len(ports) > 0 && rng.IntN(3) == 0 {
			ports[8080] = "UNSET"
		}
		pa("alpha", "api", map[string]string{"app": "api"}, mode(), ports)
	}
	if rng.IntN(3) == 0 {
		pa("beta", "backend", map[string]string{"tier": "backend"}, mode(), map[int]string{5432: portMode()})
	}
	if rng.IntN(3) == 0 {
		tls := []string{"DISABLE", "ISTIO_MUTUAL"}[rng.IntN(2)]
		out = append(out, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
			"metadata": map[string]any{"name": "api", "namespace": "beta"},
			"spec":     map[string]any{"host": "api.alpha.svc.cluster.local", "trafficPolicy": map[string]any{"tls": map[string]any{"mode": tls}}},
		}})
	}
	return out
}

func gvrOf(u *unstructured.Unstructured) schema.GroupVersionResource {
	if u.GetKind() == "DestinationRule" {
		return dataplane.DestinationRuleGVR
	}
	return dataplane.PeerAuthenticationGVR
}

func describeSet(set []*unstructured.Unstructured) string {
	var b strings.Builder
	for _, u := range set {
		spec, _ := json.Marshal(u.Object["spec"])
		fmt.Fprintf(&b, "  %s %s/%s %s\n", u.GetKind(), u.GetNamespace(), u.GetName(), spec)
	}
	if b.Len() == 0 {
		return "  (none)\n"
	}
	return b.String()
}

// clearPolicies deletes every PeerAuthentication and DestinationRule of
// the test's namespaces and the root namespace.
func clearPolicies(ctx context.Context, t *testing.T, d dynamic.Interface) {
	t.Helper()
	for _, gvr := range []schema.GroupVersionResource{dataplane.PeerAuthenticationGVR, dataplane.DestinationRuleGVR} {
		for _, ns := range append([]string{"istio-system"}, conformanceNamespaces...) {
			if err := d.Resource(gvr).Namespace(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
				t.Fatalf("delete %s in %s: %v", gvr.Resource, ns, err)
			}
		}
	}
}

// offeredNamespaceStage picks at random one stage on a namespace (not the
// mesh) that the plan offers (ready or needs-review).
func offeredNamespaceStage(plan *plans.Plan, rng *rand.Rand) *plans.Stage {
	var offered []*plans.Stage
	for i := range plan.Stages {
		st := &plan.Stages[i]
		if st.Status != plans.StatusBlocked && st.Scope != plans.ScopeMesh && st.Namespace != "istio-system" {
			offered = append(offered, st)
		}
	}
	if len(offered) == 0 {
		return nil
	}
	return offered[rng.IntN(len(offered))]
}

// writeStagePolicy writes what the stage writes: its namespace-wide policy
// with the target mode (created, or set in place when it updates an
// existing one), and the same mode on each policy it also updates.
func writeStagePolicy(ctx context.Context, t *testing.T, d dynamic.Interface, st *plans.Stage) {
	t.Helper()
	ri := d.Resource(dataplane.PeerAuthenticationGVR).Namespace(st.Namespace)
	patch := []byte(fmt.Sprintf(`{"spec":{"mtls":{"mode":%q}}}`, st.Policy.Spec.MTLS.Mode))
	if !st.Policy.UpdatesExisting {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
			"metadata": map[string]any{"name": st.Policy.Metadata.Name, "namespace": st.Namespace},
			"spec":     map[string]any{"mtls": map[string]any{"mode": string(st.Policy.Spec.MTLS.Mode)}},
		}}
		if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create stage %d's policy: %v", st.Number, err)
		}
	} else if _, err := ri.Patch(ctx, st.Policy.Metadata.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("set stage %d's policy %s: %v", st.Number, st.Policy.Metadata.Name, err)
	}
	for _, name := range st.Policy.AlsoUpdates {
		if _, err := ri.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatalf("set stage %d's other policy %s: %v", st.Number, name, err)
		}
	}
}

// afterModes is what the plan says each port of the stage's namespace
// enforces after it: a listed port change, else the workload's listed
// change, else the stage's target mode.
func afterModes(s *sandbox.Sandbox, st *plans.Stage) map[portKey]plans.Mode {
	out := map[portKey]plans.Mode{}
	for w, ports := range workloadPorts(s, st.Namespace) {
		for _, port := range ports {
			m := st.TargetMode
			for _, c := range st.Modes {
				if c.Workload == w && c.Port == 0 {
					m = c.After
				}
			}
			for _, c := range st.Modes {
				if c.Workload == w && int(c.Port) == port {
					m = c.After
				}
			}
			out[portKey{st.Namespace, w, port}] = effective(m)
		}
	}
	return out
}
