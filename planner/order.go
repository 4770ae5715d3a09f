package planner

import (
	"fmt"
	"sort"
	"strings"

	"github.com/mtls-migrate/mtls-migrate/internal/gates"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

var statusRank = map[plans.Status]int{plans.StatusReady: 0, plans.StatusNeedsReview: 1, plans.StatusBlocked: 2}

// order returns the namespace stages: PERMISSIVE stages for namespaces
// that are DISABLE today (safe: PERMISSIVE accepts both), then the STRICT
// stages, ready first, then needs-review, then blocked; within a group the
// least used first (inbound traffic, then dependents, then name).
func (e *env) order(nss []*nsPlan) []plans.Stage {
	var out []plans.Stage
	for _, np := range nss {
		if np.disable {
			out = append(out, e.permissiveStage(np))
		}
	}
	sorted := append([]*nsPlan(nil), nss...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if statusRank[a.status] != statusRank[b.status] {
			return statusRank[a.status] < statusRank[b.status]
		}
		if ra, rb := round(a.inboundRate), round(b.inboundRate); ra != rb {
			return ra < rb
		}
		if a.dependents != b.dependents {
			return a.dependents < b.dependents
		}
		return a.name < b.name
	})
	pos := map[plans.Status]int{}
	count := map[plans.Status]int{}
	for _, np := range sorted {
		count[np.status]++
	}
	for _, np := range sorted {
		pos[np.status]++
		out = append(out, e.strictStage(np, pos[np.status], count[np.status]))
	}
	return out
}

func (e *env) baseStage(np *nsPlan) plans.Stage {
	g := gates.Defaults(np.name, e.opts.GateWindow)
	if np.evidence.PlaintextRequestRate > 0 {
		g = append(g, gates.PlaintextSources(np.name, e.opts.GateWindow))
	}
	return plans.Stage{
		Namespace: np.name, Scope: plans.ScopeNamespace,
		Evidence: np.evidence,
		Gates:    g,
		Soak:     e.opts.Soak,
	}
}

func (e *env) permissiveStage(np *nsPlan) plans.Stage {
	st := e.baseStage(np)
	st.Status = plans.StatusReady
	st.CurrentMode, st.TargetMode = plans.ModeDisable, plans.ModePermissive
	st.Policy, st.PolicyDigest = e.policyFor(np.name, plans.ModePermissive)
	st.Modes = e.modeChanges(np.name, plans.ModePermissive)
	st.Probes = e.stageProbes(np, false)
	st.Rationale = "DISABLE today: PERMISSIVE first (it accepts plaintext and mTLS alike, so nothing a client sends is refused); STRICT comes in a later stage"
	st.Risks = []plans.Risk{{
		Code: CodeCurrentModeDisable, Severity: plans.SeverityInfo,
		Message: fmt.Sprintf("%s is effectively DISABLE today; this stage moves it to PERMISSIVE, never straight to STRICT", np.name),
		Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: np.name},
		Fix:     "after this stage, let traffic run for a telemetry window and re-run plan for the STRICT stage",
	}}
	if note := severalNamespacePolicies(e.target(np.name), plans.ModePermissive); note != "" {
		st.Risks = append(st.Risks, plans.Risk{
			Code: CodeExistingNamespacePolicy, Severity: plans.SeverityInfo, Message: note,
			Object: plans.ObjectRef{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, Namespace: np.name, Name: st.Policy.Metadata.Name},
		})
	}
	return st
}

func (e *env) strictStage(np *nsPlan, pos, of int) plans.Stage {
	st := e.baseStage(np)
	st.Status = np.status
	st.CurrentMode, st.TargetMode = np.current, plans.ModeStrict
	st.Policy, st.PolicyDigest = np.policy, np.digest
	st.Modes = np.modes
	st.Risks = np.risks
	st.Probes = e.stageProbes(np, true)
	if np.disable {
		// The PERMISSIVE stage changes the policy first: the digest taken
		// now cannot match then; the CURRENT_MODE_DISABLE risk asks for a
		// new plan anyway.
		st.CurrentMode = plans.ModePermissive
		st.PolicyDigest = ""
		st.Policy = e.target(np.name).Applied().Policy(plans.ModeStrict)
	}
	traffic := fmt.Sprintf("inbound %g/s from %d other namespace(s)", round(np.inboundRate), np.dependents)
	switch np.status {
	case plans.StatusReady:
		st.Rationale = fmt.Sprintf("ready, %d of %d ready namespaces ordered least used first: %s", pos, of, traffic)
	case plans.StatusNeedsReview:
		st.Rationale = fmt.Sprintf("needs review (%s) before it can go; after the ready namespaces: %s", codes(np.risks, plans.SeverityReview), traffic)
	default:
		st.Rationale = fmt.Sprintf("blocked by %s: fix those and re-run plan; %s", codes(np.risks, plans.SeverityBlock), traffic)
	}
	return st
}

func codes(rs []plans.Risk, sev plans.Severity) string {
	seen := map[string]bool{}
	var out []string
	for _, r := range rs {
		if r.Severity == sev && !seen[r.Code] {
			seen[r.Code] = true
			out = append(out, r.Code)
		}
	}
	return strings.Join(out, ", ")
}

// meshStage is the last stage: mesh-wide STRICT in the root namespace,
// blocked while any namespace is blocked, needing review while any needs
// review.
func (e *env) meshStage(nss []*nsPlan) plans.Stage {
	root := e.inv.RootNamespace
	st := plans.Stage{
		Namespace: root, Scope: plans.ScopeMesh,
		CurrentMode: e.res.NamespaceMode(root), TargetMode: plans.ModeStrict,
		Gates: gates.Defaults("", e.opts.GateWindow), Soak: e.opts.Soak,
	}
	if st.CurrentMode == plans.ModeDisable {
		st.TargetMode = plans.ModePermissive
		st.Risks = append(st.Risks, plans.Risk{
			Code: CodeCurrentModeDisable, Severity: plans.SeverityReview,
			Message: "the mesh-wide policy is DISABLE today: this stage moves it to PERMISSIVE; a new plan proposes STRICT afterwards",
			Object:  plans.ObjectRef{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, Namespace: root},
		})
	}
	st.Policy, st.PolicyDigest = e.policyFor(root, st.TargetMode)
	var blocked, review []string
	var ev plans.Evidence
	ev.HasTelemetry = true
	for _, np := range nss {
		switch np.status {
		case plans.StatusBlocked:
			blocked = append(blocked, np.name)
		case plans.StatusNeedsReview:
			review = append(review, np.name)
		}
		ev.MTLSRequestRate += np.evidence.MTLSRequestRate
		ev.PlaintextRequestRate += np.evidence.PlaintextRequestRate
		ev.MTLSConnectionRate += np.evidence.MTLSConnectionRate
		ev.PlaintextConnectionRate += np.evidence.PlaintextConnectionRate
		ev.PlaintextByteRate += np.evidence.PlaintextByteRate
		ev.Sidecars.Pods += np.evidence.Sidecars.Pods
		ev.Sidecars.Meshed += np.evidence.Sidecars.Meshed
		ev.HasTelemetry = ev.HasTelemetry && (np.evidence.HasTelemetry || np.evidence.Sidecars.Meshed == 0)
	}
	ev.MTLSRequestRate, ev.PlaintextRequestRate = round(ev.MTLSRequestRate), round(ev.PlaintextRequestRate)
	ev.MTLSConnectionRate, ev.PlaintextConnectionRate = round(ev.MTLSConnectionRate), round(ev.PlaintextConnectionRate)
	ev.PlaintextByteRate = round(ev.PlaintextByteRate)
	st.Evidence = ev
	nsRef := plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: root}
	if len(blocked) > 0 {
		st.Risks = append(st.Risks, plans.Risk{
			Code: CodeNamespacesNotReady, Severity: plans.SeverityBlock, Object: nsRef,
			Message: fmt.Sprintf("%d namespace(s) blocked: %s; mesh-wide STRICT would apply to them too", len(blocked), list(blocked)),
			Fix:     "unblock and migrate those namespaces first, then re-run plan",
		})
	}
	if len(review) > 0 {
		st.Risks = append(st.Risks, plans.Risk{
			Code: CodeNamespacesNotReady, Severity: plans.SeverityReview, Object: nsRef,
			Message: fmt.Sprintf("%d namespace(s) need review: %s", len(review), list(review)),
			Fix:     "review and migrate those namespaces first",
		})
	}
	if ex := e.excludedMeshed(); len(ex) > 0 {
		st.Risks = append(st.Risks, plans.Risk{
			Code: CodeNamespaceExcluded, Severity: plans.SeverityReview, Object: nsRef,
			Message: fmt.Sprintf("namespace(s) with sidecars left out of this plan: %s; mesh-wide STRICT applies to them unless they have their own policy", list(ex)),
			Fix:     "plan those namespaces too, or give them an explicit namespace policy",
		})
	}
	st.Risks = append(st.Risks, e.rootWorkloadsOpen()...)
	sortRisks(st.Risks)
	writeFixOnce(st.Risks)
	st.Status = statusOf(st.Risks)
	st.Modes = e.modeChanges(root, st.TargetMode)
	switch st.Status {
	case plans.StatusReady:
		st.Rationale = "last: mesh-wide STRICT once every namespace has gone"
	case plans.StatusNeedsReview:
		st.Rationale = "last: mesh-wide STRICT; needs review while namespaces do"
	default:
		st.Rationale = "last: mesh-wide STRICT; blocked while any namespace is blocked"
	}
	return st
}

func list(ss []string) string {
	if len(ss) > 20 {
		return strings.Join(ss[:20], ", ") + fmt.Sprintf(" and %d more", len(ss)-20)
	}
	return strings.Join(ss, ", ")
}

// excludedMeshed lists namespaces with running sidecars the plan leaves out
// (--namespaces, --exclude-namespaces).
func (e *env) excludedMeshed() []string {
	in := toSet(e.namespaces())
	var out []string
	for _, n := range e.inv.Namespaces {
		if n.Name == e.inv.RootNamespace || in[n.Name] {
			continue
		}
		if e.meshedPods(n.Name) > 0 {
			out = append(out, n.Name)
		}
	}
	return out
}

// rootWorkloadsOpen reports sidecar workloads in the root namespace that a
// workload policy there would keep open; selector policies in the root
// namespace are ignored by Istio, so this is only about noting them.
func (e *env) rootWorkloadsOpen() []plans.Risk {
	root := e.inv.RootNamespace
	var out []plans.Risk
	for _, p := range e.ix.PoliciesByNS[root] {
		if !p.NamespaceWide() {
			out = append(out, plans.Risk{
				Code: CodeWorkloadPolicyOverride, Severity: plans.SeverityInfo,
				Message: fmt.Sprintf("PeerAuthentication %s/%s has a workload selector in the root namespace: Istio ignores it", root, p.Name),
				Object:  plans.ObjectRef{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, Namespace: root, Name: p.Name},
				Fix:     "move it to the workload's namespace or delete it",
			})
		}
	}
	return out
}
