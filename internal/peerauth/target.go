package peerauth

import (
	"fmt"
	"slices"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Target is what a stage writes to set a namespace's mode (in the root
// namespace: the mesh's). The planner records it in the stage's policy and
// pre-flight decides it again on the live objects; both call DecideTarget,
// so a plan and its pre-flight agree by construction.
type Target struct {
	Namespace string
	// Name is the policy whose mode Istio uses for the namespace after the
	// stage: the oldest namespace-wide policy, changed in place, or the one
	// the stage creates.
	Name string
	// Create is true when the namespace has no namespace-wide policy: the
	// stage creates Name.
	Create bool
	// AlsoUpdates are the namespace's other namespace-wide policies, oldest
	// first. Istio ignores them today (it uses the oldest), and the stage
	// sets them to the same mode: otherwise deleting Name later would bring
	// the next one's mode back.
	AlsoUpdates []string
	// MustNotExist are the names that must be absent when the stage
	// applies: Name when the stage creates it.
	MustNotExist []string
}

// Names tried, in order, for a policy the tool creates; after them
// "mtls-migrate-default-2", "-3", ...
var createNames = []string{"default", "mtls-migrate-default"}

// DecideTarget decides what a stage writes in namespace from its
// PeerAuthentications (policies of other namespaces are ignored):
//
//   - with namespace-wide policies (no selector, or an empty one), the
//     oldest is the one Istio uses (creation time, then name: istiod's
//     sortConfigByCreationTime, and "Istio picks the oldest" in
//     https://istio.io/latest/docs/concepts/security/#peer-authentication);
//     the stage changes it in place, never adds another (a younger one
//     would be ignored), and changes the others in place too;
//   - with none, the stage creates one, named "default" when no policy has
//     that name, else the first free of "mtls-migrate-default",
//     "mtls-migrate-default-2", ...: a workload policy's name is never
//     written into.
func DecideTarget(namespace string, ps []mtlsmode.Policy) Target {
	var wide []*mtlsmode.Policy
	taken := map[string]bool{}
	for i := range ps {
		p := &ps[i]
		if p.Namespace != namespace {
			continue
		}
		taken[p.Name] = true
		if p.NamespaceWide() {
			wide = append(wide, p)
		}
	}
	t := Target{Namespace: namespace}
	if len(wide) == 0 {
		t.Name, t.Create = freeName(taken), true
		t.MustNotExist = []string{t.Name}
		return t
	}
	mtlsmode.SortOldestFirst(wide)
	t.Name = wide[0].Name
	for _, p := range wide[1:] {
		t.AlsoUpdates = append(t.AlsoUpdates, p.Name)
	}
	return t
}

func freeName(taken map[string]bool) string {
	for _, n := range createNames {
		if !taken[n] {
			return n
		}
	}
	for i := 2; ; i++ {
		if n := fmt.Sprintf("%s-%d", createNames[len(createNames)-1], i); !taken[n] {
			return n
		}
	}
}

// TargetOf is DecideTarget over objects as read from the API server.
func TargetOf(namespace string, pas []*securityv1.PeerAuthentication) Target {
	ps := make([]mtlsmode.Policy, 0, len(pas))
	for _, pa := range pas {
		ps = append(ps, mtlsmode.FromV1(pa))
	}
	return DecideTarget(namespace, ps)
}

// RecordedTarget is the target a plan stage's policy records (Policy's
// inverse).
func RecordedTarget(pol plans.Policy) Target {
	t := Target{Namespace: pol.Metadata.Namespace, Name: pol.Metadata.Name, Create: !pol.UpdatesExisting,
		AlsoUpdates: slices.Clone(pol.AlsoUpdates)}
	if t.Create {
		t.MustNotExist = []string{t.Name}
	}
	return t
}

// Policy is the plan's policy for the target with mode: what a reviewer
// reads and the executor writes. An object the stage creates carries the
// tool's managed-by label.
func (t Target) Policy(mode plans.Mode) plans.Policy {
	return plans.Policy{
		APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind,
		Metadata: plans.PolicyMetadata{Name: t.Name, Namespace: t.Namespace,
			Labels: map[string]string{ManagedByLabel: ManagedByValue}},
		Spec:            plans.PolicySpec{MTLS: plans.PolicyMTLS{Mode: mode}},
		UpdatesExisting: !t.Create,
		AlsoUpdates:     slices.Clone(t.AlsoUpdates),
	}
}

// Applied is the target the same namespace gives once this one's stage
// applied: the policy it created exists and is the namespace's only
// namespace-wide one (a later stage in the namespace updates it).
func (t Target) Applied() Target {
	if !t.Create {
		return t
	}
	return Target{Namespace: t.Namespace, Name: t.Name}
}

// Updates names the pre-existing objects the stage writes, Name first.
func (t Target) Updates() []string {
	if t.Create {
		return slices.Clone(t.AlsoUpdates)
	}
	return append([]string{t.Name}, t.AlsoUpdates...)
}

// WhatIf returns the resolver r as the stage leaves it: every object the
// target names has mode.
func (t Target) WhatIf(r *mtlsmode.Resolver, mode plans.Mode) *mtlsmode.Resolver {
	create := ""
	if t.Create {
		create = t.Name
	}
	return r.WithWrites(t.Namespace, mode, t.Updates(), create)
}

// Diff says how live (decided again on the objects as they are now)
// differs from t (what the plan recorded), or "" when the stage can write
// exactly what the plan says.
func (t Target) Diff(live Target) string {
	a, b := slices.Sorted(slices.Values(t.AlsoUpdates)), slices.Sorted(slices.Values(live.AlsoUpdates))
	if t.Namespace == live.Namespace && t.Name == live.Name && t.Create == live.Create && slices.Equal(a, b) {
		return ""
	}
	return fmt.Sprintf("the plan would %s, but the PeerAuthentications in %q now call for: %s", t.describe(), live.Namespace, live.describe())
}

func (t Target) describe() string {
	if t.Create {
		return fmt.Sprintf("create %s (no namespace-wide policy exists)", t.Name)
	}
	s := fmt.Sprintf("update %s in place (the namespace-wide policy Istio uses)", t.Name)
	if len(t.AlsoUpdates) > 0 {
		s += fmt.Sprintf(" and the other namespace-wide ones, %s", strings.Join(t.AlsoUpdates, ", "))
	}
	return s
}
