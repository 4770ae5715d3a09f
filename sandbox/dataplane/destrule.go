package dataplane

import (
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// DestRule is the part of a networking.istio.io DestinationRule the data
// plane needs: the host and the client TLS mode.
type DestRule struct {
	Namespace, Name string
	Created         time.Time
	Host            string
	// TLSMode is spec.trafficPolicy.tls.mode ("" when not set).
	TLSMode string
	// PortTLS is spec.trafficPolicy.portLevelSettings[].tls.mode by port.
	PortTLS map[uint32]string
}

// DestRuleFromUnstructured converts a DestinationRule read through the
// dynamic client.
func DestRuleFromUnstructured(u *unstructured.Unstructured) DestRule {
	d := DestRule{Namespace: u.GetNamespace(), Name: u.GetName(), Created: u.GetCreationTimestamp().Time}
	d.Host, _, _ = unstructured.NestedString(u.Object, "spec", "host")
	d.TLSMode, _, _ = unstructured.NestedString(u.Object, "spec", "trafficPolicy", "tls", "mode")
	if pls, ok, _ := unstructured.NestedSlice(u.Object, "spec", "trafficPolicy", "portLevelSettings"); ok {
		for _, pl := range pls {
			m, ok := pl.(map[string]any)
			if !ok {
				continue
			}
			num, _, _ := unstructured.NestedInt64(m, "port", "number")
			mode, _, _ := unstructured.NestedString(m, "tls", "mode")
			if num > 0 && mode != "" {
				if d.PortTLS == nil {
					d.PortTLS = map[uint32]string{}
				}
				d.PortTLS[uint32(num)] = mode
			}
		}
	}
	return d
}

// hostMatch scores how well a DestinationRule host matches the Service
// svc.ns: 0 no match, higher is more specific. Short names are relative to
// the DestinationRule's namespace, as in Istio
// (https://istio.io/latest/docs/reference/config/networking/destination-rule/#DestinationRule
// "host": "Istio will interpret the short name based on the namespace of the
// rule, not the service").
func hostMatch(d DestRule, svc, ns string) int {
	fqdn := svc + "." + ns + ".svc.cluster.local"
	h := d.Host
	switch {
	case h == fqdn:
		return 4
	case h == svc && d.Namespace == ns:
		return 4
	case h == svc+"."+ns || h == svc+"."+ns+".svc":
		return 4
	case h == "*":
		return 1
	case strings.HasPrefix(h, "*."):
		suffix := h[1:]
		if strings.HasSuffix(fqdn, suffix) {
			return 2 + min(1, strings.Count(suffix, ".")/4)
		}
	}
	return 0
}

// ClientTLS decides what a meshed client sends to Service svc.ns on port
// servicePort: the DestinationRule's tls.mode when one applies ("DISABLE",
// "ISTIO_MUTUAL", "SIMPLE", "MUTUAL"), or "" for auto mTLS.
//
// DestinationRule lookup follows Istio: a rule in the client's namespace is
// preferred, then one in the Service's namespace, then the root namespace
// (https://istio.io/latest/docs/ops/best-practices/traffic-management/#cross-namespace-configuration);
// within a namespace the most specific host wins, then the oldest rule.
// Port-level settings override the rule-wide TLS mode.
func ClientTLS(rules []DestRule, rootNS, clientNS, svc, ns string, servicePort uint32) string {
	for _, lookIn := range []string{clientNS, ns, rootNS} {
		var best *DestRule
		bestScore := 0
		for i := range rules {
			d := &rules[i]
			if d.Namespace != lookIn {
				continue
			}
			s := hostMatch(*d, svc, ns)
			if s == 0 {
				continue
			}
			if s > bestScore || (s == bestScore && d.Created.Before(best.Created)) {
				best, bestScore = d, s
			}
		}
		if best != nil {
			if m, ok := best.PortTLS[servicePort]; ok {
				return m
			}
			return best.TLSMode
		}
	}
	return ""
}
