package dataplane

import (
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Mode is a PeerAuthentication mTLS mode.
type Mode string

// The PeerAuthentication mTLS modes.
const (
	ModeUnset      Mode = "UNSET"
	ModeDisable    Mode = "DISABLE"
	ModePermissive Mode = "PERMISSIVE"
	ModeStrict     Mode = "STRICT"
)

// PeerAuthn is the part of a security.istio.io PeerAuthentication the data
// plane needs.
type PeerAuthn struct {
	Namespace, Name string
	Created         time.Time
	// Selector is spec.selector.matchLabels; empty means the policy is
	// namespace-wide (or mesh-wide in the root namespace).
	Selector map[string]string
	// Mode is spec.mtls.mode; "" (no mtls block) is treated as UNSET.
	Mode      Mode
	PortLevel map[uint32]Mode
}

// PeerAuthnFromUnstructured converts a PeerAuthentication read through the
// dynamic client. Malformed fields are treated as absent (the CRD schema has
// already rejected invalid values).
func PeerAuthnFromUnstructured(u *unstructured.Unstructured) PeerAuthn {
	p := PeerAuthn{Namespace: u.GetNamespace(), Name: u.GetName(), Created: u.GetCreationTimestamp().Time}
	if sel, ok, _ := unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels"); ok {
		p.Selector = sel
	}
	if m, ok, _ := unstructured.NestedString(u.Object, "spec", "mtls", "mode"); ok {
		p.Mode = Mode(strings.ToUpper(m))
	}
	if pl, ok, _ := unstructured.NestedMap(u.Object, "spec", "portLevelMtls"); ok {
		p.PortLevel = map[uint32]Mode{}
		for k, v := range pl {
			var port uint32
			for _, c := range k {
				if c < '0' || c > '9' {
					port = 0
					break
				}
				port = port*10 + uint32(c-'0')
			}
			if port == 0 {
				continue
			}
			mode := ModeUnset
			if vm, ok := v.(map[string]any); ok {
				if s, ok := vm["mode"].(string); ok {
					mode = Mode(strings.ToUpper(s))
				}
			}
			p.PortLevel[port] = mode
		}
	}
	return p
}

func (p PeerAuthn) hasSelector() bool { return len(p.Selector) > 0 }

func unset(m Mode) bool { return m == "" || m == ModeUnset }

// older orders policies the way istiod does: the oldest creationTimestamp
// first, ties broken by name.
func older(a, b PeerAuthn) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// EffectiveMode returns the mTLS mode a sidecar enforces on inbound port
// (the container/target port) of a workload with labels in namespace ns.
//
// The rules are Istio's, from
// https://istio.io/latest/docs/reference/config/security/peer_authentication/
// and https://istio.io/latest/docs/concepts/security/#peer-authentication:
//   - a policy with a workload selector applies to the selected workloads in
//     its namespace; one without applies to the whole namespace; one without a
//     selector in the root namespace applies to the whole mesh; the narrowest
//     level that sets a mode wins ("workload-specific policy takes
//     precedence over namespace-wide, which takes precedence over mesh-wide");
//   - "PeerAuthentication policies with workload selectors are ignored when
//     deployed in the root namespace";
//   - when several policies match at one level, the oldest one is used
//     ("Istio picks the oldest", concepts page, "Peer authentication");
//   - UNSET (or no mtls block) inherits from the parent level; with nothing set
//     at all the mode is PERMISSIVE;
//   - portLevelMtls is honoured only on a policy with a workload selector and
//     is keyed by the workload's (target) port; an UNSET port inherits the
//     workload's resolved mode.
func EffectiveMode(policies []PeerAuthn, rootNS, ns string, labels map[string]string, port uint32) Mode {
	var mesh, namespace, workload *PeerAuthn
	pick := func(cur **PeerAuthn, p *PeerAuthn) {
		if *cur == nil || older(*p, **cur) {
			*cur = p
		}
	}
	for i := range policies {
		p := &policies[i]
		switch {
		case p.Namespace == rootNS && !p.hasSelector():
			if ns == rootNS {
				// In the root namespace itself a selector-less policy is
				// both mesh- and namespace-wide; treat it as namespace level.
				pick(&namespace, p)
			} else {
				pick(&mesh, p)
			}
		case p.Namespace == rootNS && p.hasSelector():
			// Ignored, see the note in the PeerAuthentication reference.
		case p.Namespace != ns:
		case !p.hasSelector():
			pick(&namespace, p)
		default:
			if matches(p.Selector, labels) {
				pick(&workload, p)
			}
		}
	}
	mode := ModePermissive
	for _, p := range []*PeerAuthn{mesh, namespace, workload} {
		if p != nil && !unset(p.Mode) {
			mode = p.Mode
		}
	}
	if workload != nil {
		if pm, ok := workload.PortLevel[port]; ok && !unset(pm) {
			return pm
		}
	}
	return mode
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// sortPolicies sorts oldest first, for stable listings.
func sortPolicies(ps []PeerAuthn) {
	sort.Slice(ps, func(i, j int) bool { return older(ps[i], ps[j]) })
}
