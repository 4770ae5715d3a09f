package sandbox

import (
	"fmt"
	"net/netip"

	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/xdsproxy"
)

// xdsEnforcer makes each connected pod's simulated sidecar enforce the
// configuration istiod pushed to its proxy (xdsproxy.Table).
type xdsEnforcer struct {
	byPod map[string]*xdsproxy.Proxy // "ns/name"
}

func newXDSEnforcer(f *xdsproxy.Fleet) *xdsEnforcer {
	e := &xdsEnforcer{byPod: map[string]*xdsproxy.Proxy{}}
	for _, p := range f.Proxies {
		e.byPod[p.Pod.Namespace+"/"+p.Pod.Name] = p
	}
	return e
}

func (e *xdsEnforcer) Manages(p dataplane.PodRef) bool { return e.byPod[p.String()] != nil }

func (e *xdsEnforcer) table(p dataplane.PodRef) (*xdsproxy.Table, error) {
	px := e.byPod[p.String()]
	if px == nil {
		return nil, fmt.Errorf("%s is not connected to istiod", p)
	}
	return px.Table(), nil
}

func (e *xdsEnforcer) Inbound(p dataplane.PodRef, port int, c dataplane.InboundConn) (dataplane.InboundVerdict, error) {
	t, err := e.table(p)
	if err != nil {
		return dataplane.InboundVerdict{}, err
	}
	ip, err := netip.ParseAddr(p.IP)
	if err != nil {
		return dataplane.InboundVerdict{}, fmt.Errorf("pod %s IP %q: %w", p, p.IP, err)
	}
	v, err := t.Inbound(ip, uint32(port), c.TLS, c.ALPN, c.HTTP)
	if err != nil {
		return dataplane.InboundVerdict{}, fmt.Errorf("%s port %d: %w", p, port, err)
	}
	out := dataplane.InboundVerdict{Accept: v.Accept, Terminate: v.Terminate, Chain: v.Chain}
	if v.Accept {
		out.Authz = xdsAuthorizer{v}
	}
	return out, nil
}

func (e *xdsEnforcer) Outbound(client dataplane.PodRef, to dataplane.OutboundTarget) (dataplane.OutboundVerdict, error) {
	t, err := e.table(client)
	if err != nil {
		return dataplane.OutboundVerdict{}, err
	}
	ip, err := netip.ParseAddr(to.EndpointIP)
	if err != nil {
		return dataplane.OutboundVerdict{}, fmt.Errorf("endpoint IP %q: %w", to.EndpointIP, err)
	}
	v, err := t.Outbound(xdsproxy.OutboundClusterName(to.ServicePort, to.ServiceFQDN), ip, uint32(to.EndpointPort))
	if err != nil {
		return dataplane.OutboundVerdict{}, fmt.Errorf("%s: %w", client, err)
	}
	return dataplane.OutboundVerdict{MTLS: v.MTLS, ALPN: v.ALPN, Socket: v.Socket}, nil
}

// xdsAuthorizer is the RBAC filters of the chain a connection matched.
type xdsAuthorizer struct{ v xdsproxy.Inbound }

func (a xdsAuthorizer) Connection(in dataplane.AuthzInput) dataplane.AuthzVerdict {
	return verdict(a.v.AuthorizeConnection(authzInput(in)))
}

func (a xdsAuthorizer) Request(in dataplane.AuthzInput) (dataplane.AuthzVerdict, bool) {
	if !a.v.HTTP || in.Request == nil {
		return dataplane.AuthzVerdict{}, false
	}
	return verdict(a.v.AuthorizeRequest(authzInput(in))), true
}

func authzInput(in dataplane.AuthzInput) xdsproxy.AuthzInput {
	out := xdsproxy.AuthzInput{Source: in.Source, Destination: in.Destination, Principal: in.Principal, SNI: in.SNI}
	if r := in.Request; r != nil {
		out.HTTP = &xdsproxy.HTTPRequest{Method: r.Method, Host: r.Host, Path: r.RequestURI, Header: r.Header}
	}
	return out
}

func verdict(a xdsproxy.Authz) dataplane.AuthzVerdict {
	v := dataplane.AuthzVerdict{Allowed: a.Allowed, Policy: a.Policy}
	for _, s := range a.Shadow {
		if s.Allowed {
			v.ShadowAllowed++
		} else {
			v.ShadowDenied++
		}
	}
	return v
}
