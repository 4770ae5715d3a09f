// Package mtlsmode resolves the effective mutual TLS mode of a workload, per
// port, from PeerAuthentications, exactly as istiod does. It is a pure
// function over plain values (no clients), shared by `plan` (before and after
// each stage) and `status`.
//
// The rules, as implemented by istiod in pilot/pkg/model/authentication.go
// (getConfigsForWorkload: which policies can apply to a workload) and
// pilot/pkg/security/authn/policy_applier.go (ComposePeerAuthentication: how
// they combine), and documented in the PeerAuthentication reference
// (https://istio.io/latest/docs/reference/config/security/peer_authentication/):
//
//   - Three levels: a workload policy (selector with labels, in the
//     workload's namespace) over the namespace policy (no selector, in the
//     workload's namespace) over the mesh policy (no selector, in the root
//     namespace).
//   - Within one level the oldest policy wins (creationTimestamp; istiod
//     sorts configs by creation time, then name, so the name breaks ties).
//   - A policy with a selector in the root namespace is ignored
//     (ComposePeerAuthentication only takes selector policies whose
//     namespace is not the root namespace).
//   - A selector with empty matchLabels is namespace-wide.
//   - UNSET (or no mtls block) inherits from the level above; nothing set at
//     all means PERMISSIVE.
//   - portLevelMtls is read only from the winning workload policy, keyed by
//     the workload's (container, i.e. target) port; an UNSET port inherits
//     the workload's mode.
package mtlsmode

import (
	"slices"
	"sort"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Policy is a PeerAuthentication reduced to what decides the mode (plus the
// metadata the planner digests and reports), whichever API version it was
// read through.
type Policy struct {
	Namespace         string
	Name              string
	UID               string
	CreationTimestamp time.Time
	Labels            map[string]string
	Annotations       map[string]string
	// Selector is spec.selector.matchLabels; empty means namespace-wide.
	Selector map[string]string
	// Mode is spec.mtls.mode; UNSET when absent.
	Mode plans.Mode
	// PortModes is spec.portLevelMtls, keyed by container port.
	PortModes map[uint32]plans.Mode
	// Managers are the object's managedFields managers (who writes it); not
	// part of its precedence, nor of its digest.
	Managers []string
}

// NamespaceWide reports whether the policy has no workload selector.
func (p *Policy) NamespaceWide() bool { return len(p.Selector) == 0 }

// Workload is what the resolver needs to know about one workload.
type Workload struct {
	Namespace string
	Labels    map[string]string
	// Ports are the workload's container ports; the result has a mode for
	// each of them.
	Ports []uint32
}

// Effective is a workload's effective mode, and per port where a port-level
// setting applies.
type Effective struct {
	Mode plans.Mode
	// Ports holds the mode of every port asked about (the workload's mode
	// where no port-level setting applies).
	Ports map[uint32]plans.Mode
	// Workload, Namespace and Mesh name the policies that decided, "" when
	// none at that level.
	Workload, Namespace, Mesh string
}

// PortMode returns the mode on one port.
func (e Effective) PortMode(port uint32) plans.Mode {
	if m, ok := e.Ports[port]; ok {
		return m
	}
	return e.Mode
}

// Resolver answers effective-mode questions for one set of policies.
type Resolver struct {
	root string
	// byNS holds each namespace's policies oldest first.
	byNS map[string][]*Policy
	// overrideNS's policies are override instead of byNS's (what-if).
	overrideNS string
	override   []*Policy
}

// NewResolver indexes policies. rootNamespace is meshConfig.rootNamespace.
func NewResolver(rootNamespace string, policies []Policy) *Resolver {
	r := &Resolver{root: rootNamespace, byNS: map[string][]*Policy{}}
	for i := range policies {
		p := &policies[i]
		r.byNS[p.Namespace] = append(r.byNS[p.Namespace], p)
	}
	for _, ps := range r.byNS {
		SortOldestFirst(ps)
	}
	return r
}

// RootNamespace returns the root namespace the resolver was built with.
func (r *Resolver) RootNamespace() string { return r.root }

// SortOldestFirst orders one namespace's policies as istiod does, so the
// first match at a level is the one Istio uses: creation time, then name
// (sortConfigByCreationTime in pilot/pkg/model/config.go: "CreationTimestamp
// is stored in seconds", so equal times are common and the name decides).
func SortOldestFirst(ps []*Policy) {
	sort.SliceStable(ps, func(i, j int) bool {
		if !ps[i].CreationTimestamp.Equal(ps[j].CreationTimestamp) {
			return ps[i].CreationTimestamp.Before(ps[j].CreationTimestamp)
		}
		return ps[i].Name < ps[j].Name
	})
}

// Policies returns the namespace's policies, oldest first.
func (r *Resolver) Policies(namespace string) []*Policy {
	if r.override != nil && namespace == r.overrideNS {
		return r.override
	}
	return r.byNS[namespace]
}

// NamespacePolicy returns the namespace-wide policy Istio uses in the
// namespace (the oldest), or nil.
func (r *Resolver) NamespacePolicy(namespace string) *Policy {
	for _, p := range r.Policies(namespace) {
		if p.NamespaceWide() {
			return p
		}
	}
	return nil
}

func (r *Resolver) workloadPolicy(w Workload) *Policy {
	if w.Namespace == r.root {
		// Selector policies in the root namespace are ignored.
		return nil
	}
	for _, p := range r.Policies(w.Namespace) {
		if !p.NamespaceWide() && selects(p.Selector, w.Labels) {
			return p
		}
	}
	return nil
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// Effective resolves the workload's mode and the mode of each of its ports.
func (r *Resolver) Effective(w Workload) Effective {
	out := Effective{Mode: plans.ModePermissive}
	// Mesh level, then namespace, then workload: each set mode overrides,
	// UNSET inherits (ComposePeerAuthentication's order).
	if mesh := r.NamespacePolicy(r.root); mesh != nil {
		out.Mesh = mesh.Name
		if set(mesh.Mode) {
			out.Mode = mesh.Mode
		}
	}
	if w.Namespace != r.root {
		if ns := r.NamespacePolicy(w.Namespace); ns != nil {
			out.Namespace = ns.Name
			if set(ns.Mode) {
				out.Mode = ns.Mode
			}
		}
	}
	wp := r.workloadPolicy(w)
	if wp != nil {
		out.Workload = wp.Name
		if set(wp.Mode) {
			out.Mode = wp.Mode
		}
	}
	out.Ports = make(map[uint32]plans.Mode, len(w.Ports))
	for _, port := range w.Ports {
		out.Ports[port] = out.Mode
	}
	if wp != nil {
		for port, m := range wp.PortModes {
			if _, asked := out.Ports[port]; !asked && len(w.Ports) > 0 {
				// A port-level setting for a port the workload does not
				// expose applies to nothing.
				continue
			}
			if set(m) {
				out.Ports[port] = m
			} else {
				out.Ports[port] = out.Mode
			}
		}
	}
	return out
}

// NamespaceMode is the mode of a workload in the namespace that no workload
// policy selects.
func (r *Resolver) NamespaceMode(namespace string) plans.Mode {
	return r.Effective(Workload{Namespace: namespace}).Mode
}

func set(m plans.Mode) bool { return m != "" && m != plans.ModeUnset }

// WithNamespaceMode returns a resolver in which the namespace-wide policy of
// namespace has the given mode: every namespace-wide policy there is
// changed in place (the one Istio uses and those it ignores), or, with none,
// a new "default" policy is added. For namespace == root namespace this is
// the mesh-wide policy. The planner asks peerauth.Target.WhatIf instead,
// which names exactly the objects a stage writes; this is the same what-if
// for a namespace where "default" is free.
func (r *Resolver) WithNamespaceMode(namespace string, mode plans.Mode) *Resolver {
	var update []string
	for _, p := range r.Policies(namespace) {
		if p.NamespaceWide() {
			update = append(update, p.Name)
		}
	}
	create := ""
	if len(update) == 0 {
		create = "default"
	}
	return r.WithWrites(namespace, mode, update, create)
}

// WithWrites returns a resolver in which the policies of namespace named in
// update have the given mode (their spec.mtls.mode; port-level settings
// stay), and, when create is not "", a new namespace-wide policy of that
// name and mode is added as the namespace's youngest: what a stage that
// writes those objects leaves. The receiver is not modified, and the result
// shares its index (cheap to make per namespace). What-ifs do not stack: the
// result of WithWrites on a what-if resolver for another namespace keeps only
// the newer change.
func (r *Resolver) WithWrites(namespace string, mode plans.Mode, update []string, create string) *Resolver {
	out := &Resolver{root: r.root, byNS: r.byNS, overrideNS: namespace}
	ps := make([]*Policy, 0, len(r.Policies(namespace))+1)
	for _, p := range r.Policies(namespace) {
		for _, name := range update {
			if p.Name == name {
				c := *p
				c.Mode = mode
				p = &c
				break
			}
		}
		ps = append(ps, p)
	}
	if create != "" {
		// A new policy is the youngest of its namespace.
		ps = append(ps, &Policy{Namespace: namespace, Name: create, Mode: mode, CreationTimestamp: time.Unix(1<<40, 0)})
	}
	out.override = ps
	return out
}

// FromV1 converts a security.istio.io/v1 PeerAuthentication.
func FromV1(pa *securityv1.PeerAuthentication) Policy {
	p := Policy{
		Namespace: pa.Namespace, Name: pa.Name, UID: string(pa.UID),
		CreationTimestamp: pa.CreationTimestamp.Time.UTC(),
		Labels:            pa.Labels, Annotations: pa.Annotations,
		Mode: plans.ModeUnset,
	}
	for _, mf := range pa.ManagedFields {
		if mf.Manager != "" && !slices.Contains(p.Managers, mf.Manager) {
			p.Managers = append(p.Managers, mf.Manager)
		}
	}
	if sel := pa.Spec.GetSelector(); sel != nil {
		p.Selector = sel.GetMatchLabels()
	}
	if m := pa.Spec.GetMtls(); m != nil {
		p.Mode = plans.Mode(m.GetMode().String())
	}
	if pl := pa.Spec.GetPortLevelMtls(); len(pl) > 0 {
		p.PortModes = make(map[uint32]plans.Mode, len(pl))
		for port, m := range pl {
			p.PortModes[port] = plans.Mode(m.GetMode().String())
		}
	}
	return p
}
