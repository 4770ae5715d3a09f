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
	// permissiveAt is each DISABLE namespace's PERMISSIVE stage number:
	// stages are numbered in this order, from 1.
	permissiveAt := map[string]int{}
	for _, np := range nss {
		if np.disable {
			out = append(out, e.permissiveStage(np))
			permissiveAt[np.name] = len(out)
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
		out = append(out, e.strictStage(np, pos[np.status], count[np.status], permissiveAt[np.name]))
	}
	return out
}

func (e *env) baseStage(np *nsPlan) plans.Stage {
	return plans.Stage{
		Namespace: np.name, Scope: plans.ScopeNamespace,
		Evidence: np.evidence,
		Gates:    e.stageGates(np.name, np.evidence),
		Soak:     e.opts.Soak,
	}
}

func (e *env) permissiveStage(np *nsPlan) plans.Stage {
	st := e.baseStage(np)
	st.Status = plans.StatusReady
	st.CurrentMode, st.TargetMode = plans.ModeDisable, plans.ModePermissive
	st.Policy, st.PolicyDigest = e.policyFor(np.name, plans.ModePermissive)
	st.Modes = e.modeChanges(np.name, plans.ModePermissive)
	// Its plaintext probes expect an answer on every port: PERMISSIVE must
	// keep serving the plaintext clients a DISABLE namespace has by design
	// (auto mTLS sends none to it), and they exercise the namespace's
	// traffic when it is too young or too quiet for a gate to judge.
	permissive, _ := e.probes(np.name, plans.ModePermissive)
	st.Probes = e.stageProbes(np, permissive)
	st.Rationale = "DISABLE today: PERMISSIVE first (it accepts plaintext and mTLS alike, so nothing a client sends is refused); STRICT comes in a later stage"
	st.Risks = []plans.Risk{{
		Code: CodeCurrentModeDisable, Severity: plans.SeverityInfo,
		Message: fmt.Sprintf("%s is effectively DISABLE today; this stage moves it to PERMISSIVE, never straight to STRICT", np.name),
		Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: np.name},
		Fix:     "after this stage, let traffic run on PERMISSIVE: the plan's STRICT stage for the namespace comes later, and its pre-flight refuses while plaintext still arrives there or while its PeerAuthentications are not as this stage left them",
	}}
	if note := severalNamespacePolicies(e.target(np.name), plans.ModePermissive); note != "" {
		st.Risks = append(st.Risks, plans.Risk{
			Code: CodeExistingNamespacePolicy, Severity: plans.SeverityInfo, Message: note,
			Object: plans.ObjectRef{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, Namespace: np.name, Name: st.Policy.Metadata.Name},
		})
	}
	if rs := e.unverifiable(np.name, st.Evidence, st.Probes, st.Gates); len(rs) > 0 {
		st.Risks = append(st.Risks, rs...)
		sortRisks(st.Risks)
		st.Status = plans.StatusBlocked
	}
	return st
}

// strictStage is np's STRICT stage; after is the number of its PERMISSIVE
// stage when it is DISABLE today.
func (e *env) strictStage(np *nsPlan, pos, of, after int) plans.Stage {
	st := e.baseStage(np)
	st.Gates = np.gates
	st.Status = np.status
	st.CurrentMode, st.TargetMode = np.current, plans.ModeStrict
	st.Policy, st.PolicyDigest = np.policy, np.digest
	st.Modes = np.modes
	st.Risks = np.risks
	st.Probes = e.stageProbes(np, np.probes)
	if np.disable {
		// The PERMISSIVE stage writes the policy first, and the digest
		// covers UIDs and creation times no plan can know before: this
		// stage requires exactly what that stage left (the executor
		// records it when the stage is done), and writes what it wrote.
		st.CurrentMode = plans.ModePermissive
		st.PolicyDigest = plans.AfterStage(after)
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
		Soak: e.opts.Soak,
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
		ev.MTLSByteRate += np.evidence.MTLSByteRate
		ev.Sidecars.Pods += np.evidence.Sidecars.Pods
		ev.Sidecars.Meshed += np.evidence.Sidecars.Meshed
		ev.HasTelemetry = ev.HasTelemetry && (np.evidence.HasTelemetry || np.evidence.Sidecars.Meshed == 0)
	}
	ev.MTLSRequestRate, ev.PlaintextRequestRate = round(ev.MTLSRequestRate), round(ev.PlaintextRequestRate)
	ev.MTLSConnectionRate, ev.PlaintextConnectionRate = round(ev.MTLSConnectionRate), round(ev.PlaintextConnectionRate)
	ev.PlaintextByteRate, ev.MTLSByteRate = round(ev.PlaintextByteRate), round(ev.MTLSByteRate)
	st.Evidence = ev
	st.Gates = e.stageGates("", ev)
	if st.TargetMode == plans.ModeStrict {
		st.Gates = append(st.Gates, e.plaintextGates("", ev)...)
	}
	st.Risks = append(st.Risks, e.unverifiable(root, ev, nil, st.Gates)...)
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

// stageGates are the health gates of a stage on ns ("" for the mesh): the
// request gates always, and the TCP gates when the namespace serves a port
// that is not HTTP or the evidence saw TCP.
func (e *env) stageGates(ns string, ev plans.Evidence) []plans.Gate {
	g := gates.Defaults(ns, e.opts.GateWindow)
	if ev.MTLSConnectionRate+ev.PlaintextConnectionRate+ev.MTLSByteRate+ev.PlaintextByteRate > 0 || e.servesTCP(ns) {
		g = append(g, gates.TCPGates(ns, e.opts.GateWindow)...)
	}
	return g
}

// plaintextGates are the gates of a STRICT stage on a namespace that takes
// plaintext today (a stage someone may force): they see those clients
// vanish. Only STRICT cuts plaintext clients off. A PERMISSIVE stage gets
// none: it refuses nothing, and from DISABLE the meshed clients' plaintext
// rightly turns into mTLS (auto mTLS), which these gates would read as
// clients lost and roll the stage back.
func (e *env) plaintextGates(ns string, ev plans.Evidence) []plans.Gate {
	var g []plans.Gate
	if ev.PlaintextRequestRate > 0 {
		g = append(g, gates.PlaintextSources(ns, e.opts.GateWindow))
	}
	if ev.PlaintextConnectionRate > 0 {
		g = append(g, gates.PlaintextConnections(ns, e.opts.GateWindow))
	}
	return g
}

// servesTCP reports whether a Service of ns ("": any) has a TCP port that
// does not speak HTTP.
func (e *env) servesTCP(ns string) bool {
	for n, svcs := range e.ix.ServicesByNS {
		if ns != "" && n != ns {
			continue
		}
		for _, s := range svcs {
			for _, sp := range s.Ports {
				if probeKind(sp) == plans.ProbeTCP {
					return true
				}
			}
		}
	}
	return false
}

// unverifiable is the UNVERIFIABLE risk of a stage on ns whose traffic (as
// the evidence saw it) no probe and no gate of the stage could judge (see
// gates.Unjudged, which pre-flight applies to the baselines it measures):
// the soak would look at nothing and the stage would end "done".
func (e *env) unverifiable(ns string, ev plans.Evidence, probes []plans.Probe, gs []plans.Gate) []plans.Risk {
	st := plans.Stage{Evidence: ev, Probes: probes, Gates: gs}
	gaps := gates.Unjudged(&st, gates.Estimate(ev, e.opts.GateWindow))
	if len(gaps) == 0 {
		return nil
	}
	return []plans.Risk{{
		Code: CodeUnverifiable, Severity: plans.SeverityBlock,
		Object: plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: ns},
		Message: fmt.Sprintf("this stage cannot judge what the plan saw in the namespace: %s (%g requests/s, %g connections/s and %g B/s of TCP on average; a gate needs %d samples in its %s window): a soak would verify nothing and end done",
			strings.Join(gaps, "; "), round(ev.MTLSRequestRate+ev.PlaintextRequestRate), round(ev.MTLSConnectionRate+ev.PlaintextConnectionRate),
			round(ev.MTLSByteRate+ev.PlaintextByteRate), gates.DefaultMinSamples, e.opts.GateWindow),
		Fix: "add to the stage a probe (a tcp probe to a pod's port, an http probe to a Service) or a gate that judges this traffic (the application's own metrics), " +
			"or apply it with --force --reason once someone has checked the clients by other means",
	}}
}
