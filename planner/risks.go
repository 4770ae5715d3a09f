package planner

import (
	"fmt"
	"sort"
	"strings"

	"github.com/mtls-migrate/mtls-migrate/internal/gitops"
	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Risk codes (see the package comment for their severities).
const (
	CodePlaintextObserved       = "PLAINTEXT_OBSERVED"
	CodeMeshedClientPlaintext   = "MESHED_CLIENT_PLAINTEXT"
	CodeExternalService         = "EXTERNAL_SERVICE"
	CodeDestinationRuleDisable  = "DESTINATION_RULE_TLS_DISABLE"
	CodeWebhookBackend          = "WEBHOOK_BACKEND"
	CodeSidecarMissing          = "SIDECAR_MISSING"
	CodeWorkloadPolicyOverride  = "WORKLOAD_POLICY_OVERRIDE"
	CodeExcludedInboundPorts    = "EXCLUDED_INBOUND_PORTS"
	CodeServerFirstProtocol     = "SERVER_FIRST_PROTOCOL"
	CodeProbeRewriteDisabled    = "PROBE_REWRITE_DISABLED"
	CodeNoTelemetry             = "NO_TELEMETRY"
	CodePartialTelemetry        = "PARTIAL_TELEMETRY"
	CodeHeadlessService         = "HEADLESS_SERVICE"
	CodeSidecarlessClient       = "SIDECARLESS_CLIENT"
	CodeCurrentModeDisable      = "CURRENT_MODE_DISABLE"
	CodeExistingNamespacePolicy = "EXISTING_NAMESPACE_POLICY"
	CodeNamespacesNotReady      = "NAMESPACES_NOT_READY"
	CodeNamespaceExcluded       = "NAMESPACE_EXCLUDED"
	CodeAmbientNamespace        = "AMBIENT_NAMESPACE"
	CodeGitOpsManaged           = "GITOPS_MANAGED"
	CodeUnverifiable            = "UNVERIFIABLE"
)

type riskCheck func(e *env, ns string, np *nsPlan) []plans.Risk

// riskChecks run for every namespace stage, each a small function with one
// code.
var riskChecks = []riskCheck{
	plaintextObserved,
	meshedClientPlaintext,
	externalService,
	destinationRuleDisable,
	webhookBackend,
	sidecarMissing,
	workloadPolicyOverride,
	excludedInboundPorts,
	serverFirstProtocol,
	probeRewriteDisabled,
	noTelemetry,
	partialTelemetry,
	headlessService,
	sidecarlessClient,
	currentModeDisable,
	existingNamespacePolicy,
	ambientNamespace,
	gitopsManaged,
}

// ambientNamespace: a namespace in Istio's ambient data plane. Its pods
// have no sidecars but are captured by ztunnel, so the plan's evidence
// (sidecar coverage, plaintext from sidecar-less clients, probes from the
// tool's own process) does not mean what it means for sidecars, and the
// tool cannot judge the stage. Never ready until ambient is supported.
func ambientNamespace(e *env, ns string, _ *nsPlan) []plans.Risk {
	n := e.ix.Namespaces[ns]
	if n == nil || !n.Ambient() {
		return nil
	}
	return []plans.Risk{{
		Code: CodeAmbientNamespace, Severity: plans.SeverityReview,
		Message: fmt.Sprintf("namespace %s is in Istio's ambient mode (istio.io/dataplane-mode=ambient): its pods are captured by ztunnel, not by sidecars; mtls-migrate reads sidecar telemetry and probes sidecars, so this plan's evidence, probes and gates do not apply to it", ns),
		Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: ns},
		Fix:     "migrate ambient namespaces by hand (PeerAuthentication STRICT is enforced by ztunnel; check ztunnel's and waypoints' metrics), or leave the namespace out of the plan with --exclude-namespaces",
	}}
}

// gitopsManaged: the namespace-wide policy the stage changes in place, or
// the namespace itself, is managed by Argo CD, Flux or Helm. Their
// self-heal (or next sync, or upgrade) reverts what the tool writes, and
// server-side apply with force takes the mode's field ownership away from
// them, so the change belongs in the repository they sync from.
func gitopsManaged(e *env, ns string, np *nsPlan) []plans.Risk {
	var out []plans.Risk
	if np.policy.UpdatesExisting {
		for _, p := range e.ix.PoliciesByNS[ns] {
			if p.Name != np.policy.Metadata.Name {
				continue
			}
			if who := gitops.ManagedBy(p.Labels, p.Annotations, p.Managers); len(who) > 0 {
				out = append(out, plans.Risk{
					Code: CodeGitOpsManaged, Severity: plans.SeverityReview,
					Message: fmt.Sprintf("PeerAuthentication %s/%s, which the stage changes in place, is managed by %s: its self-heal or next sync will revert the change, and the stage's server-side apply takes ownership of spec.mtls.mode away from it", ns, p.Name, strings.Join(who, ", ")),
					Object:  plans.ObjectRef{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, Namespace: ns, Name: p.Name},
					Fix:     "make the change (mode STRICT) in the repository the controller syncs from, and let it roll out; or stop it from managing this object before applying the stage",
				})
			}
		}
	}
	if n := e.ix.Namespaces[ns]; n != nil {
		if who := gitops.ManagedBy(n.Labels, n.Annotations, n.Managers); len(who) > 0 {
			out = append(out, plans.Risk{
				Code: CodeGitOpsManaged, Severity: plans.SeverityReview,
				Message: fmt.Sprintf("namespace %s is managed by %s: a PeerAuthentication the tool creates there is not in the repository, and a prune or a later sync of its own policy can undo the stage", ns, strings.Join(who, ", ")),
				Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: ns},
				Fix:     "add the namespace's PeerAuthentication (mode STRICT) to the repository the controller syncs from, or make sure the controller will not prune or replace it",
			})
		}
	}
	return out
}

func (e *env) rate(total float64) float64 { return round(total / e.window.Seconds()) }

func (e *env) podWorkloadRef(ns, name string) plans.ObjectRef {
	for _, p := range e.ix.PodsByNS[ns] {
		if p.Workload == name {
			return workloadRef(ns, &workload{name: name, kind: p.WorkloadKind})
		}
	}
	return plans.ObjectRef{APIVersion: "apps/v1", Kind: "Deployment", Namespace: ns, Name: name}
}

func describeFlow(e *env, f *telemetry.Flow) string {
	var parts []string
	if f.Requests > 0 {
		parts = append(parts, fmt.Sprintf("%g req/s", e.rate(f.Requests)))
	}
	if f.Connections > 0 {
		parts = append(parts, fmt.Sprintf("%g conn/s", e.rate(f.Connections)))
	}
	if f.Bytes > 0 && f.Requests == 0 {
		parts = append(parts, fmt.Sprintf("%g B/s", e.rate(f.Bytes)))
	}
	return fmt.Sprintf("%s (last seen %s)", strings.Join(parts, ", "), f.LastSeen.UTC().Format("2006-01-02T15:04Z"))
}

// plaintextObserved: plaintext from clients Istio could not identify (no
// sidecar, or outside the cluster), per destination workload.
func plaintextObserved(e *env, ns string, np *nsPlan) []plans.Risk {
	by := map[string][]*telemetry.Flow{}
	var dsts []string
	for _, f := range e.flowsBy[ns] {
		if f.SourceWorkload != "" && f.SourceWorkload != telemetry.Unknown {
			continue
		}
		if _, ok := by[f.DestinationWorkload]; !ok {
			dsts = append(dsts, f.DestinationWorkload)
		}
		by[f.DestinationWorkload] = append(by[f.DestinationWorkload], f)
	}
	sort.Strings(dsts)
	var out []plans.Risk
	for _, d := range dsts {
		var descr []string
		for _, f := range by[d] {
			who := "unidentified client"
			if f.SourcePrincipal != "" && f.SourcePrincipal != telemetry.Unknown {
				who += " " + f.SourcePrincipal
			}
			descr = append(descr, who+": "+describeFlow(e, f))
		}
		out = append(out, plans.Risk{
			Code: CodePlaintextObserved, Severity: plans.SeverityBlock,
			Message: fmt.Sprintf("plaintext into %s/%s from outside the mesh or from clients without a sidecar: %s; STRICT will reset these connections",
				ns, d, strings.Join(descr, "; ")),
			Object: e.podWorkloadRef(ns, d),
			Fix:    "find the clients (Service type LoadBalancer/NodePort, sidecar-less pods, kubelet probes, jobs) and give them a sidecar or route them through the ingress gateway; or keep this workload PERMISSIVE with a workload PeerAuthentication and accept the exception",
		})
	}
	return out
}

// meshedClientPlaintext: plaintext from a workload Istio identified, i.e. a
// meshed client that sends plaintext. The fix is on the client's side.
func meshedClientPlaintext(e *env, ns string, np *nsPlan) []plans.Risk {
	type key struct{ ns, wl string }
	by := map[key][]*telemetry.Flow{}
	var keys []key
	for _, f := range e.flowsBy[ns] {
		if f.SourceWorkload == "" || f.SourceWorkload == telemetry.Unknown {
			continue
		}
		k := key{f.SourceNamespace, f.SourceWorkload}
		if _, ok := by[k]; !ok {
			keys = append(keys, k)
		}
		by[k] = append(by[k], f)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].ns != keys[j].ns {
			return keys[i].ns < keys[j].ns
		}
		return keys[i].wl < keys[j].wl
	})
	sev, note := plans.SeverityBlock, ""
	if np.disable {
		// Under DISABLE every client sends plaintext; after the PERMISSIVE
		// stage auto mTLS switches meshed clients to mTLS.
		sev, note = plans.SeverityReview, " (the namespace is DISABLE today, so meshed clients send plaintext by design; after its PERMISSIVE stage auto mTLS sends them mTLS, and this stage's pre-flight refuses while plaintext still arrives)"
	}
	var out []plans.Risk
	for _, k := range keys {
		var descr []string
		for _, f := range by[k] {
			descr = append(descr, "to "+f.DestinationWorkload+": "+describeFlow(e, f))
		}
		out = append(out, plans.Risk{
			Code: CodeMeshedClientPlaintext, Severity: sev,
			Message: fmt.Sprintf("meshed client %s/%s sends plaintext into %s: %s%s", k.ns, k.wl, ns, strings.Join(descr, "; "), note),
			Object:  e.podWorkloadRef(k.ns, k.wl),
			// The client is the risk's object: a fix without its name is
			// the same for every client, and is written once.
			Fix: fmt.Sprintf("on each client (the risk's object): remove the DestinationRule tls.mode DISABLE toward %s, call the Service name rather than pod IPs, or drop the traffic.sidecar.istio.io/excludeOutboundPorts/IPRanges that bypass its sidecar", ns),
		})
	}
	return out
}

// externalService: LoadBalancer, NodePort or externalIPs Services reach
// meshed pods from outside the cluster, in plaintext.
func externalService(e *env, ns string, _ *nsPlan) []plans.Risk {
	var out []plans.Risk
	for _, s := range e.ix.ServicesByNS[ns] {
		if s.Type != "LoadBalancer" && s.Type != "NodePort" && !s.ExternalIPs {
			continue
		}
		meshed := 0
		for _, p := range e.ix.PodsByNS[ns] {
			if p.Sidecar && inventory.Selects(s.Selector, p.Labels) {
				meshed++
			}
		}
		if meshed == 0 {
			continue
		}
		typ := s.Type
		if s.ExternalIPs {
			typ += " with externalIPs"
		}
		out = append(out, plans.Risk{
			Code: CodeExternalService, Severity: plans.SeverityBlock,
			Message: fmt.Sprintf("Service %s/%s (%s) exposes %d meshed pod(s) to clients outside the cluster, which send plaintext; STRICT cuts them off", ns, s.Name, typ, meshed),
			Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Service", Namespace: ns, Name: s.Name},
			Fix:     "route external traffic through the Istio ingress gateway (Gateway + VirtualService) and make this Service ClusterIP, or keep its ports PERMISSIVE with a workload PeerAuthentication portLevelMtls",
		})
	}
	return out
}

// hostNamespace resolves a DestinationRule or route host to (service,
// namespace); service or namespace "*" are wildcards. Short names are
// relative to the object's namespace (DestinationRule reference: "host").
func hostNamespace(host, defaultNS string) (svc, ns string, ok bool) {
	if host == "*" {
		return "*", "*", true
	}
	parts := strings.Split(host, ".")
	switch {
	case len(parts) == 1:
		return parts[0], defaultNS, true
	case parts[0] == "*" && (len(parts) == 2 || parts[1] == "svc" || parts[1] == "cluster"):
		// *.local, *.svc.cluster.local, *.cluster.local
		return "*", "*", true
	case len(parts) == 2:
		return parts[0], parts[1], true
	case parts[2] == "svc":
		return parts[0], parts[1], true
	}
	return "", "", false
}

func (e *env) indexDestinationRules() {
	e.drsBy = map[string][]*inventory.DestinationRule{}
	for i := range e.inv.DestinationRules {
		d := &e.inv.DestinationRules[i]
		if len(d.DisableTLS) == 0 {
			continue
		}
		_, ns, ok := hostNamespace(d.Host, d.Namespace)
		if !ok {
			continue
		}
		if ns == "*" {
			e.drsAll = append(e.drsAll, d)
			continue
		}
		e.drsBy[ns] = append(e.drsBy[ns], d)
	}
}

// destinationRuleDisable: a DestinationRule anywhere in the mesh makes its
// clients send plaintext to hosts of this namespace.
func destinationRuleDisable(e *env, ns string, _ *nsPlan) []plans.Risk {
	var out []plans.Risk
	for _, d := range append(append([]*inventory.DestinationRule(nil), e.drsBy[ns]...), e.drsAll...) {
		svc, _, _ := hostNamespace(d.Host, d.Namespace)
		if svc != "*" && !e.services[svc+"."+ns] {
			continue
		}
		out = append(out, plans.Risk{
			Code: CodeDestinationRuleDisable, Severity: plans.SeverityBlock,
			Message: fmt.Sprintf("DestinationRule %s/%s sets tls.mode DISABLE (%s) for host %q: its clients send plaintext to %s, which STRICT refuses",
				d.Namespace, d.Name, strings.Join(d.DisableTLS, ", "), d.Host, ns),
			Object: plans.ObjectRef{APIVersion: "networking.istio.io/v1", Kind: "DestinationRule", Namespace: d.Namespace, Name: d.Name},
			Fix:    "set tls.mode ISTIO_MUTUAL (or remove the tls block to let auto mTLS decide) in this DestinationRule before the stage",
		})
	}
	return out
}

// webhookBackend: the kube-apiserver has no sidecar, so its calls to a
// webhook or aggregated API served from meshed pods are plaintext.
func webhookBackend(e *env, ns string, _ *nsPlan) []plans.Risk {
	var out []plans.Risk
	seen := map[string]bool{}
	for _, w := range e.hooks[ns] {
		k := w.Kind + "/" + w.Name + "/" + w.ServiceName
		if seen[k] {
			continue
		}
		seen[k] = true
		var svc *inventory.Service
		for _, s := range e.ix.ServicesByNS[ns] {
			if s.Name == w.ServiceName {
				svc = s
			}
		}
		ref := plans.ObjectRef{APIVersion: webhookAPI(w.Kind), Kind: w.Kind, Name: w.Name}
		if svc == nil {
			out = append(out, plans.Risk{
				Code: CodeWebhookBackend, Severity: plans.SeverityReview, Object: ref,
				Message: fmt.Sprintf("%s %s calls Service %s/%s, which does not exist (or has no selector): check what serves it before STRICT", w.Kind, w.Name, ns, w.ServiceName),
				Fix:     "confirm the backend has no sidecar, or keep its port PERMISSIVE with a workload PeerAuthentication",
			})
			continue
		}
		meshed := 0
		for _, p := range e.ix.PodsByNS[ns] {
			if p.Sidecar && inventory.Selects(svc.Selector, p.Labels) {
				meshed++
			}
		}
		if meshed == 0 {
			continue
		}
		out = append(out, plans.Risk{
			Code: CodeWebhookBackend, Severity: plans.SeverityBlock, Object: ref,
			Message: fmt.Sprintf("%s %s is served by Service %s/%s on %d meshed pod(s): the kube-apiserver has no sidecar and calls it in plaintext, so STRICT breaks the webhook", w.Kind, w.Name, ns, svc.Name, meshed),
			Fix:     "keep the webhook's target port PERMISSIVE with a workload PeerAuthentication portLevelMtls, or run the webhook without a sidecar",
		})
	}
	return out
}

func webhookAPI(kind string) string {
	switch kind {
	case "APIService":
		return "apiregistration.k8s.io/v1"
	case "CustomResourceDefinition":
		return "apiextensions.k8s.io/v1"
	}
	return "admissionregistration.k8s.io/v1"
}

// sidecarMissing: running pods without a sidecar are not covered by STRICT.
func sidecarMissing(e *env, ns string, np *nsPlan) []plans.Risk {
	cov := np.evidence.Sidecars
	if cov.Pods == cov.Meshed {
		return nil
	}
	var names []string
	seen := map[string]bool{}
	var first *inventory.Pod
	for _, p := range e.ix.PodsByNS[ns] {
		if p.Running && !p.Sidecar && !p.Gateway && !seen[p.Workload] {
			seen[p.Workload] = true
			names = append(names, p.Workload)
			if first == nil || p.Workload < first.Workload {
				first = p
			}
		}
	}
	sort.Strings(names)
	if len(names) > 5 {
		names = append(names[:5], fmt.Sprintf("and %d more", len(names)-5))
	}
	return []plans.Risk{{
		Code: CodeSidecarMissing, Severity: plans.SeverityReview,
		Message: fmt.Sprintf("%d of %d running pods have a sidecar (%s without): STRICT does not cover those, and as clients they send plaintext", cov.Meshed, cov.Pods, strings.Join(names, ", ")),
		Object:  workloadRef(ns, &workload{name: first.Workload, kind: first.WorkloadKind}),
		Fix:     "restart the pods so the injector adds a sidecar (check the istio-injection label and sidecar.istio.io/inject), or accept that they stay outside mTLS",
	}}
}

// workloadPolicyOverride: a workload or port policy that keeps PERMISSIVE
// or DISABLE after the namespace goes STRICT.
func workloadPolicyOverride(e *env, ns string, _ *nsPlan) []plans.Risk {
	after := e.after(ns, plans.ModeStrict)
	var out []plans.Risk
	for _, w := range e.workloads(ns) {
		eff := after.Effective(mtlsModeWorkload(ns, w))
		if eff.Workload == "" {
			continue
		}
		var open []string
		if eff.Mode != plans.ModeStrict {
			open = append(open, "all ports "+string(eff.Mode))
		}
		for _, port := range w.ports {
			if m := eff.PortMode(port); m != plans.ModeStrict && m != eff.Mode {
				open = append(open, fmt.Sprintf("port %d %s", port, m))
			}
		}
		if len(open) == 0 {
			continue
		}
		out = append(out, plans.Risk{
			Code: CodeWorkloadPolicyOverride, Severity: plans.SeverityReview,
			Message: fmt.Sprintf("PeerAuthentication %s/%s selects %s and keeps %s after the stage (a workload policy wins over the namespace's)", ns, eff.Workload, w.name, strings.Join(open, ", ")),
			Object:  plans.ObjectRef{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, Namespace: ns, Name: eff.Workload},
			Fix:     "confirm the exception is intended, or change that policy to STRICT (or UNSET to inherit) in a later change",
		})
	}
	return out
}

// excludedInboundPorts: ports outside the sidecar's inbound capture stay
// plaintext and are not affected by STRICT.
func excludedInboundPorts(e *env, ns string, _ *nsPlan) []plans.Risk {
	var out []plans.Risk
	for _, w := range e.workloads(ns) {
		var ports []string
		seen := map[int32]bool{}
		for _, p := range w.pods {
			for _, port := range p.ExcludedInboundPorts {
				if !seen[port] {
					seen[port] = true
					ports = append(ports, fmt.Sprint(port))
				}
			}
		}
		if len(ports) == 0 {
			continue
		}
		sort.Strings(ports)
		out = append(out, plans.Risk{
			Code: CodeExcludedInboundPorts, Severity: plans.SeverityReview,
			Message: fmt.Sprintf("%s excludes port(s) %s from inbound capture (traffic.sidecar.istio.io/excludeInboundPorts or includeInboundPorts): traffic on them bypasses the sidecar, stays plaintext after STRICT and is neither protected nor broken by this stage",
				w.name, strings.Join(ports, ", ")),
			Object: workloadRef(ns, w),
			Fix:    "remove the exclusion so STRICT covers the port, or record it as an accepted plaintext exception",
		})
	}
	return out
}

// serverFirst are protocols where the server speaks first: they misbehave
// with PERMISSIVE's protocol detection and must be checked after STRICT
// (https://istio.io/latest/docs/ops/deployment/application-requirements/#server-first-protocols).
var serverFirst = map[string]bool{"mysql": true, "mongo": true, "mongodb": true, "smtp": true, "ftp": true, "nats": true, "postgres-replication": true}
var serverFirstPorts = map[int32]string{3306: "mysql", 33060: "mysql", 27017: "mongo", 25: "smtp", 587: "smtp", 21: "ftp", 4222: "nats"}

func serverFirstProtocol(e *env, ns string, _ *nsPlan) []plans.Risk {
	var out []plans.Risk
	for _, s := range e.ix.ServicesByNS[ns] {
		for _, sp := range s.Ports {
			proto := strings.ToLower(sp.AppProtocol)
			if proto == "" {
				proto, _, _ = strings.Cut(strings.ToLower(sp.Name), "-")
			}
			if !serverFirst[proto] {
				p, ok := serverFirstPorts[sp.Port]
				if !ok || proto == "http" || proto == "grpc" || proto == "http2" {
					continue
				}
				proto = p
			}
			out = append(out, plans.Risk{
				Code: CodeServerFirstProtocol, Severity: plans.SeverityReview,
				Message: fmt.Sprintf("Service %s/%s port %d (%s) carries a server-first protocol: check its clients right after STRICT (and declare the port's protocol, e.g. name it tcp-%s)", ns, s.Name, sp.Port, proto, proto),
				Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Service", Namespace: ns, Name: s.Name},
				Fix:     "add an exec probe from a client pod to the stage, and make sure the port's protocol is declared explicitly",
			})
		}
	}
	return out
}

// probeRewriteDisabled: kubelet has no sidecar, so its HTTP probes to the
// app port fail under STRICT unless the injector rewrites them
// (https://istio.io/latest/docs/ops/configuration/mesh/app-health-check/).
func probeRewriteDisabled(e *env, ns string, _ *nsPlan) []plans.Risk {
	var out []plans.Risk
	for _, w := range e.workloads(ns) {
		for _, p := range w.pods {
			if p.RewriteProbesDisabled && len(p.HTTPProbePorts) > 0 {
				out = append(out, plans.Risk{
					Code: CodeProbeRewriteDisabled, Severity: plans.SeverityReview,
					Message: fmt.Sprintf("%s has HTTP health probes on port(s) %v with sidecar.istio.io/rewriteAppHTTPProbers: \"false\": kubelet's plaintext probes will fail under STRICT and the pods will be restarted or taken out of endpoints", w.name, p.HTTPProbePorts),
					Object:  workloadRef(ns, w),
					Fix:     "remove the annotation (or set it to \"true\") and restart the pods, or move the probes to a port excluded from capture",
				})
				break
			}
		}
	}
	return out
}

// noTelemetry: no data is not "no plaintext".
func noTelemetry(e *env, ns string, np *nsPlan) []plans.Risk {
	if np.evidence.HasTelemetry || np.evidence.Sidecars.Meshed == 0 {
		return nil
	}
	return []plans.Risk{{
		Code: CodeNoTelemetry, Severity: plans.SeverityReview,
		Message: fmt.Sprintf("%d running meshed pod(s) but no Istio metrics from %s in the last %s: the plan cannot tell whether anything sends plaintext here", np.evidence.Sidecars.Meshed, ns, plans.Duration(e.window)),
		Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: ns},
		Fix:     "check that Prometheus scrapes these sidecars (istio_requests_total, istio_tcp_* series), or widen --window; then re-run plan",
	}}
}

// partialTelemetry: Prometheus warned (partial response, truncated
// results): the evidence may miss plaintext.
func partialTelemetry(e *env, ns string, _ *nsPlan) []plans.Risk {
	if !e.tel.Partial {
		return nil
	}
	return []plans.Risk{{
		Code: CodePartialTelemetry, Severity: plans.SeverityReview,
		Message: "Prometheus answered with warnings (see the plan's queries and the command's log): the evidence may be incomplete",
		Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: ns},
		Fix:     "resolve the warnings (e.g. an unavailable store behind Thanos) and re-run plan",
	}}
}

// headlessService: peers that talk pod to pod (headless Services,
// StatefulSets) often use ports the Service does not declare.
func headlessService(e *env, ns string, _ *nsPlan) []plans.Risk {
	var out []plans.Risk
	meshedSel := func(sel map[string]string) bool {
		for _, p := range e.ix.PodsByNS[ns] {
			if p.Sidecar && inventory.Selects(sel, p.Labels) {
				return true
			}
		}
		return false
	}
	for _, s := range e.ix.ServicesByNS[ns] {
		if s.Headless && meshedSel(s.Selector) {
			out = append(out, plans.Risk{
				Code: CodeHeadlessService, Severity: plans.SeverityReview,
				Message: fmt.Sprintf("headless Service %s/%s: clients reach its pods directly by pod IP; peers that are not meshed, or ports not declared on the pods, will fail under STRICT", ns, s.Name),
				Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Service", Namespace: ns, Name: s.Name},
				Fix:     "check that every peer has a sidecar and every port peers use is declared; add exec probes between peers",
			})
		}
	}
	for _, st := range e.ix.StatefulSetsByNS[ns] {
		if meshedSel(st.Selector) {
			out = append(out, plans.Risk{
				Code: CodeHeadlessService, Severity: plans.SeverityReview,
				Message: fmt.Sprintf("StatefulSet %s/%s: its replicas talk to each other pod to pod (gossip, replication), often on ports the Service does not declare", ns, st.Name),
				Object:  plans.ObjectRef{APIVersion: "apps/v1", Kind: "StatefulSet", Namespace: ns, Name: st.Name},
				Fix:     "declare every peer port on the pods and check replication right after STRICT with an exec probe",
			})
		}
	}
	return out
}

// clientHit is a sidecar-less client naming a Service of a namespace.
type clientHit struct {
	ref  *inventory.ClientRef
	host string
}

func (e *env) indexClients() {
	e.clients = map[string][]clientHit{}
	for i := range e.inv.Clients {
		c := &e.inv.Clients[i]
		for _, h := range c.Hosts {
			svc, ns, ok := hostNamespace(h, c.Namespace)
			if !ok || ns == c.Namespace || !e.services[svc+"."+ns] {
				continue
			}
			e.clients[ns] = append(e.clients[ns], clientHit{ref: c, host: h})
		}
	}
}

// sidecarlessClient: a sidecar-less Pod or CronJob elsewhere names a Service
// of this namespace: a client the window may not have seen (a nightly job).
func sidecarlessClient(e *env, ns string, _ *nsPlan) []plans.Risk {
	var out []plans.Risk
	for _, h := range e.clients[ns] {
		api := "v1"
		if h.ref.Kind == "CronJob" {
			api = "batch/v1"
		}
		out = append(out, plans.Risk{
			Code: CodeSidecarlessClient, Severity: plans.SeverityReview,
			Message: fmt.Sprintf("%s %s/%s has no sidecar and names %q: it would send plaintext to %s, even if the telemetry window did not see it", h.ref.Kind, h.ref.Namespace, h.ref.Name, h.host, ns),
			Object:  plans.ObjectRef{APIVersion: api, Kind: h.ref.Kind, Namespace: h.ref.Namespace, Name: h.ref.Name},
			Fix:     "give it a sidecar (enable injection in its namespace) or confirm it no longer calls this namespace",
		})
	}
	return out
}

// currentModeDisable: never DISABLE to STRICT in one step.
func currentModeDisable(e *env, ns string, np *nsPlan) []plans.Risk {
	var out []plans.Risk
	if np.disable {
		out = append(out, plans.Risk{
			Code: CodeCurrentModeDisable, Severity: plans.SeverityReview,
			Message: fmt.Sprintf("%s is effectively DISABLE today: an earlier stage of this plan moves it to PERMISSIVE; this stage's evidence was observed under DISABLE, when even meshed clients send plaintext, so it says little about who would still send plaintext on PERMISSIVE", ns),
			Object:  plans.ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: ns},
			Fix:     "apply the PERMISSIVE stage first and let traffic run on it; this stage then applies without a new plan: its pre-flight requires the namespace's PeerAuthentications exactly as that stage left them (policyDigest after-stage:N) and refuses while plaintext still arrives since it; re-run plan for evidence gathered on PERMISSIVE",
		})
	}
	for _, w := range e.workloads(ns) {
		if eff := e.res.Effective(mtlsModeWorkload(ns, w)); eff.Workload != "" && eff.Mode == plans.ModeDisable && !np.disable {
			out = append(out, plans.Risk{
				Code: CodeCurrentModeDisable, Severity: plans.SeverityReview,
				Message: fmt.Sprintf("%s is DISABLE today through PeerAuthentication %s/%s, which this stage does not change", w.name, ns, eff.Workload),
				Object:  plans.ObjectRef{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, Namespace: ns, Name: eff.Workload},
				Fix:     "change that policy to PERMISSIVE first, observe, then to STRICT or UNSET",
			})
		}
	}
	return out
}

// existingNamespacePolicy: a namespace-wide policy someone else made is
// changed in place (Istio keeps the oldest of two, so adding one is not an
// option); whoever owns it (GitOps) may revert the change. With several
// namespace-wide policies, the stage writes every one of them.
func existingNamespacePolicy(e *env, ns string, _ *nsPlan) []plans.Risk {
	cur := e.res.NamespacePolicy(ns)
	t := e.target(ns)
	if cur == nil || (cur.Labels[peerauth.ManagedByLabel] == peerauth.ManagedByValue && len(t.AlsoUpdates) == 0) {
		return nil
	}
	var msg string
	fix := "make sure its owner (GitOps, Helm) will not revert the change, or change it at the source"
	if cur.Labels[peerauth.ManagedByLabel] != peerauth.ManagedByValue {
		msg = fmt.Sprintf("namespace-wide PeerAuthentication %s/%s (mode %s) was not made by mtls-migrate: the stage changes it in place, since a second namespace-wide policy would be ignored (Istio uses the oldest)", ns, cur.Name, cur.Mode)
	}
	if note := severalNamespacePolicies(t, plans.ModeStrict); note != "" {
		msg = strings.TrimPrefix(msg+"; "+note, "; ")
		fix = "make sure the owners of these policies (GitOps, Helm) will not revert the change; deleting all but one afterwards is tidier, and not needed"
	}
	return []plans.Risk{{
		Code: CodeExistingNamespacePolicy, Severity: plans.SeverityReview, Message: msg,
		Object: plans.ObjectRef{APIVersion: plans.PolicyAPIVersion, Kind: plans.PolicyKind, Namespace: ns, Name: cur.Name},
		Fix:    fix,
	}}
}

// severalNamespacePolicies says what a stage does to a namespace with more
// than one namespace-wide policy, "" for one or none.
func severalNamespacePolicies(t peerauth.Target, mode plans.Mode) string {
	if len(t.AlsoUpdates) == 0 {
		return ""
	}
	n := len(t.AlsoUpdates) + 1
	return fmt.Sprintf("namespace %s has %d namespace-wide policies; all %d are set to %s: Istio uses only the oldest, %s, and ignores %s, which the stage changes in place too so that deleting %s later cannot bring the old mode back; rollback restores each",
		t.Namespace, n, n, mode, t.Name, strings.Join(t.AlsoUpdates, ", "), t.Name)
}
