package planner

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// systemNamespaces never get a stage: Kubernetes' own.
var systemNamespaces = map[string]bool{"kube-system": true, "kube-public": true, "kube-node-lease": true}

// env is everything Decide computes once and each namespace reads.
type env struct {
	inv      *inventory.Inventory
	ix       *inventory.Index
	tel      *telemetry.Result
	res      *mtlsmode.Resolver
	opts     Options
	window   time.Duration
	flowsBy  map[string][]*telemetry.Flow
	drsBy    map[string][]*inventory.DestinationRule
	drsAll   []*inventory.DestinationRule
	routes   map[string][]gatewayRoute
	clients  map[string][]clientHit
	hooks    map[string][]*inventory.WebhookBackend
	services map[string]bool // "name.namespace"
}

// nsPlan is one namespace's analysis.
type nsPlan struct {
	name        string
	current     plans.Mode
	status      plans.Status
	risks       []plans.Risk
	evidence    plans.Evidence
	modes       []plans.ModeChange
	policy      plans.Policy
	digest      string
	probes      []plans.Probe
	gwProbes    []plans.Probe
	gates       []plans.Gate
	inboundRate float64
	dependents  int
	disable     bool
}

// Decide turns an inventory and telemetry into a plan. It is pure: the same
// inputs give the same plan, byte for byte once saved.
func Decide(inv *inventory.Inventory, tel *telemetry.Result, now time.Time, opts Options) (*plans.Plan, error) {
	opts.defaults()
	if err := checkNamespaces(inv, opts.Namespaces); err != nil {
		return nil, err
	}
	e := newEnv(inv, tel, opts)
	var nss []*nsPlan
	for _, name := range e.namespaces() {
		nss = append(nss, e.analyse(name))
	}
	p := &plans.Plan{
		APIVersion: plans.APIVersion,
		Kind:       plans.Kind,
		Metadata:   e.metadata(now),
	}
	p.Stages = e.order(nss)
	p.Stages = append(p.Stages, e.meshStage(nss))
	for i := range p.Stages {
		p.Stages[i].Number = i + 1
	}
	if probs := plans.Validate(p); len(probs) > 0 {
		return nil, fmt.Errorf("planner produced an invalid plan (a bug): %v", probs)
	}
	return p, nil
}

func newEnv(inv *inventory.Inventory, tel *telemetry.Result, opts Options) *env {
	e := &env{
		inv: inv, ix: inventory.NewIndex(inv), tel: tel, opts: opts, window: tel.Window,
		res:      mtlsmode.NewResolver(inv.RootNamespace, inv.PeerAuthentications),
		flowsBy:  map[string][]*telemetry.Flow{},
		services: make(map[string]bool, len(inv.Services)),
	}
	for i := range tel.Plaintext {
		f := &tel.Plaintext[i]
		e.flowsBy[f.DestinationNamespace] = append(e.flowsBy[f.DestinationNamespace], f)
	}
	for _, s := range inv.Services {
		e.services[s.Name+"."+s.Namespace] = true
	}
	e.indexDestinationRules()
	e.indexGatewayRoutes()
	e.indexClients()
	e.hooks = map[string][]*inventory.WebhookBackend{}
	for i := range inv.Webhooks {
		w := &inv.Webhooks[i]
		e.hooks[w.ServiceNamespace] = append(e.hooks[w.ServiceNamespace], w)
	}
	return e
}

// namespaces are those with meshed pods or injection enabled, minus
// Kubernetes' own and the root namespace (it is the mesh stage), filtered by
// the options.
func (e *env) namespaces() []string {
	only := toSet(e.opts.Namespaces)
	excl := toSet(e.opts.ExcludeNamespaces)
	var out []string
	for _, n := range e.inv.Namespaces {
		if systemNamespaces[n.Name] || n.Name == e.inv.RootNamespace || excl[n.Name] {
			continue
		}
		if len(only) > 0 && !only[n.Name] {
			continue
		}
		if n.InjectionEnabled() || e.meshedPods(n.Name) > 0 {
			out = append(out, n.Name)
		}
	}
	sort.Strings(out)
	return out
}

func toSet(ss []string) map[string]bool {
	m := make(map[string]bool, len(ss))
	for _, s := range ss {
		m[s] = true
	}
	return m
}

func (e *env) meshedPods(ns string) int {
	n := 0
	for _, p := range e.ix.PodsByNS[ns] {
		if p.Running && p.Sidecar {
			n++
		}
	}
	return n
}

func (e *env) metadata(now time.Time) plans.Metadata {
	gen := now.UTC().Truncate(time.Second)
	name := e.opts.Name
	if name == "" {
		name = "mtls-migrate-" + gen.Format("20060102-150405")
	}
	md := plans.Metadata{
		Name: name, GeneratedAt: gen, Window: plans.Duration(e.window),
		PrometheusURL: e.opts.PrometheusURL, ClusterServer: e.opts.ClusterServer,
		RootNamespace: e.inv.RootNamespace, IstioVersion: e.tel.IstioVersion,
		AutoMTLS: e.inv.AutoMTLS, Queries: e.tel.Queries,
		ConfigDigest: inventory.ConfigDigest(e.inv),
		Warnings:     Warnings(e.inv, e.tel),
	}
	return md
}

// Warnings lists what the plan's evidence may lack: what the inventory
// could not read and Prometheus' warnings and infos.
func Warnings(inv *inventory.Inventory, tel *telemetry.Result) []string {
	out := append([]string(nil), inv.Warnings...)
	return append(out, tel.Warnings...)
}

// analyse decides one namespace.
func (e *env) analyse(ns string) *nsPlan {
	np := &nsPlan{name: ns, current: e.res.NamespaceMode(ns)}
	np.disable = np.current == plans.ModeDisable
	np.evidence = e.evidence(ns)
	if t := e.tel.Inbound[ns]; t != nil {
		secs := e.window.Seconds()
		np.inboundRate = (t.MTLSRequests + t.PlaintextRequests + t.MTLSConnections + t.PlaintextConnections) / secs
		np.dependents = len(t.Sources)
	}
	np.policy, np.digest = e.policyFor(ns, plans.ModeStrict)
	for _, check := range riskChecks {
		np.risks = append(np.risks, check(e, ns, np)...)
	}
	np.modes = e.modeChanges(ns, plans.ModeStrict)
	np.probes, np.gwProbes = e.probes(ns, plans.ModeStrict)
	np.gates = append(e.stageGates(ns, np.evidence), e.plaintextGates(ns, np.evidence)...)
	if !np.disable {
		// A DISABLE namespace's STRICT stage follows its PERMISSIVE one,
		// which is checked on its own (permissiveStage).
		np.risks = append(np.risks, e.unverifiable(ns, np.evidence, e.stageProbes(np, np.probes), np.gates)...)
	}
	sortRisks(np.risks)
	writeFixOnce(np.risks)
	np.status = statusOf(np.risks)
	return np
}

func statusOf(risks []plans.Risk) plans.Status {
	st := plans.StatusReady
	for _, r := range risks {
		switch r.Severity {
		case plans.SeverityBlock:
			return plans.StatusBlocked
		case plans.SeverityReview:
			st = plans.StatusNeedsReview
		}
	}
	return st
}

var severityRank = map[plans.Severity]int{plans.SeverityBlock: 0, plans.SeverityReview: 1, plans.SeverityInfo: 2}

func sortRisks(rs []plans.Risk) {
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if severityRank[a.Severity] != severityRank[b.Severity] {
			return severityRank[a.Severity] < severityRank[b.Severity]
		}
		if a.Code != b.Code {
			return a.Code < b.Code
		}
		if a.Object != b.Object {
			return a.Object.Namespace+"/"+a.Object.Kind+"/"+a.Object.Name < b.Object.Namespace+"/"+b.Object.Kind+"/"+b.Object.Name
		}
		return a.Message < b.Message
	})
}

// writeFixOnce empties the fix of a risk that repeats the previous risk's
// code and fix. Risks are sorted by code, so a reviewer reads the fix once,
// above the risks it is for: PLAINTEXT_OBSERVED's is ~300 bytes repeated
// for every workload receiving plaintext, a quarter of a busy stage.
func writeFixOnce(rs []plans.Risk) {
	for i := len(rs) - 1; i > 0; i-- {
		if rs[i].Code == rs[i-1].Code && rs[i].Fix == rs[i-1].Fix {
			rs[i].Fix = ""
		}
	}
}

func (e *env) evidence(ns string) plans.Evidence {
	ev := plans.Evidence{HasTelemetry: e.tel.Reporting[ns]}
	secs := e.window.Seconds()
	if t := e.tel.Inbound[ns]; t != nil {
		ev.MTLSRequestRate = round(t.MTLSRequests / secs)
		ev.PlaintextRequestRate = round(t.PlaintextRequests / secs)
		ev.MTLSConnectionRate = round(t.MTLSConnections / secs)
		ev.PlaintextConnectionRate = round(t.PlaintextConnections / secs)
		ev.MTLSByteRate = round(t.MTLSBytes / secs)
	}
	var bytes float64
	for _, f := range e.flowsBy[ns] {
		bytes += f.Bytes
		principal := f.SourcePrincipal
		if principal == telemetry.Unknown {
			// Plaintext carries no peer certificate: Istio's "unknown" is
			// the rule here, not evidence; a real principal is kept.
			principal = ""
		}
		ev.PlaintextSources = append(ev.PlaintextSources, plans.Source{
			Workload: orUnknown(f.SourceWorkload), Namespace: orUnknown(f.SourceNamespace),
			Principal: principal, DestinationWorkload: f.DestinationWorkload,
			RequestRate: round(f.Requests / secs), ConnectionRate: round(f.Connections / secs),
			LastSeen: f.LastSeen.UTC(),
		})
	}
	ev.PlaintextByteRate = round(bytes / secs)
	sort.SliceStable(ev.PlaintextSources, func(i, j int) bool {
		a, b := ev.PlaintextSources[i], ev.PlaintextSources[j]
		if a.RequestRate+a.ConnectionRate != b.RequestRate+b.ConnectionRate {
			return a.RequestRate+a.ConnectionRate > b.RequestRate+b.ConnectionRate
		}
		return false // flows are already sorted by name
	})
	if len(ev.PlaintextSources) > 10 {
		ev.PlaintextSources = ev.PlaintextSources[:10]
	}
	for _, p := range e.ix.PodsByNS[ns] {
		if p.Running && !p.Gateway {
			ev.Sidecars.Pods++
			if p.Sidecar {
				ev.Sidecars.Meshed++
			}
		}
	}
	return ev
}

func orUnknown(s string) string {
	if s == "" {
		return telemetry.Unknown
	}
	return s
}

// target is what a stage writes in ns (peerauth.DecideTarget, which
// pre-flight runs again on the live objects: they agree by construction).
func (e *env) target(ns string) peerauth.Target {
	ps := make([]mtlsmode.Policy, 0, len(e.ix.PoliciesByNS[ns]))
	for _, p := range e.ix.PoliciesByNS[ns] {
		ps = append(ps, *p)
	}
	return peerauth.DecideTarget(ns, ps)
}

// after is the resolver as a stage moving ns to mode leaves it: the what-if
// over exactly the objects the stage writes. The plan's modes, its
// workload-policy risks and its probes all read it.
func (e *env) after(ns string, mode plans.Mode) *mtlsmode.Resolver {
	return e.target(ns).WhatIf(e.res, mode)
}

// policyFor is the PeerAuthentication a stage applies in ns, from its
// target (see peerauth.DecideTarget), and the digest of the namespace's
// policies the plan is made from.
func (e *env) policyFor(ns string, mode plans.Mode) (plans.Policy, string) {
	var ps []mtlsmode.Policy
	for _, p := range e.ix.PoliciesByNS[ns] {
		ps = append(ps, *p)
	}
	return e.target(ns).Policy(mode), peerauth.DigestPolicies(ps)
}

// workload groups a namespace's running meshed pods by workload name.
type workload struct {
	name  string
	kind  string
	pods  []*inventory.Pod
	ports []uint32
}

func (e *env) workloads(ns string) []*workload {
	by := map[string]*workload{}
	var out []*workload
	for _, p := range e.ix.PodsByNS[ns] {
		if !p.Running || !p.Sidecar {
			continue
		}
		w := by[p.Workload]
		if w == nil {
			w = &workload{name: p.Workload, kind: p.WorkloadKind}
			by[p.Workload] = w
			out = append(out, w)
		}
		w.pods = append(w.pods, p)
		for _, cp := range p.Ports {
			if !slices.Contains(w.ports, uint32(cp.Port)) {
				w.ports = append(w.ports, uint32(cp.Port))
			}
		}
	}
	// A Service's target port is a port of the workload even when the pod
	// does not declare it (containerPort is informational): port-level
	// settings and probes on it must agree.
	for _, s := range e.ix.ServicesByNS[ns] {
		for _, w := range out {
			for _, p := range w.pods {
				if !inventory.Selects(s.Selector, p.Labels) {
					continue
				}
				for _, sp := range s.Ports {
					if sp.Protocol != "" && sp.Protocol != "TCP" {
						continue
					}
					if tp := uint32(targetPort(sp, p)); tp > 0 && !slices.Contains(w.ports, tp) {
						w.ports = append(w.ports, tp)
					}
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	for _, w := range out {
		sort.Slice(w.pods, func(i, j int) bool { return w.pods[i].Name < w.pods[j].Name })
		sort.Slice(w.ports, func(i, j int) bool { return w.ports[i] < w.ports[j] })
	}
	return out
}

// modeChanges records each workload (and port) whose effective mode before
// or after the stage differs from the namespace's.
func (e *env) modeChanges(ns string, target plans.Mode) []plans.ModeChange {
	after := e.after(ns, target)
	nsBefore := e.res.NamespaceMode(ns)
	var out []plans.ModeChange
	for _, w := range e.workloads(ns) {
		mw := mtlsmode.Workload{Namespace: ns, Labels: w.pods[0].Labels, Ports: w.ports}
		b, a := e.res.Effective(mw), after.Effective(mw)
		if b.Mode != nsBefore || a.Mode != target {
			out = append(out, plans.ModeChange{Workload: w.name, Before: b.Mode, After: a.Mode})
		}
		for _, port := range w.ports {
			bp, ap := b.PortMode(port), a.PortMode(port)
			if bp != b.Mode || ap != a.Mode {
				out = append(out, plans.ModeChange{Workload: w.name, Port: int32(port), Before: bp, After: ap})
			}
		}
	}
	return out
}

func workloadRef(ns string, w *workload) plans.ObjectRef {
	kind := w.kind
	api := "apps/v1"
	switch kind {
	case "Pod":
		api = "v1"
	case "CronJob", "Job":
		api = "batch/v1"
	case "":
		kind = "Deployment"
	}
	return plans.ObjectRef{APIVersion: api, Kind: kind, Namespace: ns, Name: w.name}
}
