package xdsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// EndpointType is EDS's resource type.
const EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

// virtualInbound is the sidecar listener every captured inbound connection
// reaches (iptables REDIRECT to 15006; pilot/pkg/networking/core/listener_inbound.go,
// inboundVirtualListener, in istio).
const virtualInbound = "virtualInbound"

// Names Envoy and istiod use in the resources decoded here.
const (
	tlsSocket             = "envoy.transport_sockets.tls"
	rawBufferSocket       = "envoy.transport_sockets.raw_buffer"
	httpInspector         = "envoy.filters.listener.http_inspector"
	transportSocketMatchK = "envoy.transport_socket_match"
)

// ErrNoConfig is returned before a proxy has had its first push, or for a
// cluster or endpoint istiod has not sent: there is no decision to follow.
var ErrNoConfig = errors.New("no xDS configuration from istiod for this")

// Table is what one proxy enforces: decoded from the last Listener,
// Cluster and ClusterLoadAssignment responses istiod sent it. It is
// immutable once built; a push replaces it as a whole.
type Table struct {
	// Versions is the version_info of the last response of each type.
	Versions map[string]string
	// At is when the last response was applied.
	At time.Time

	inbound  *inboundListener
	clusters map[string]*outCluster
	// endpoints by EDS service name.
	endpoints map[string]map[string]*structpb.Struct
	// Err is a decoding problem with the last push: the proxy then has no
	// decisions (fail closed) until a push decodes.
	Err error
}

type inboundListener struct {
	chains []chain
	// httpInspector is set when the listener sniffs plaintext HTTP (istiod
	// drops it when no chain needs it, e.g. under STRICT).
	httpInspector bool
	hasDefault    bool
}

// chain is one filter chain's match and what it does with the bytes.
type chain struct {
	name      string
	port      uint32 // 0: any
	prefixes  []netip.Prefix
	transport string   // "", "tls", "raw_buffer"
	alpn      []string // any of
	// terminates: the chain has a TLS transport socket (the sidecar
	// terminates mTLS); without one the bytes go to the app as they came.
	terminates bool
	// http: the chain ends in an HTTP connection manager (else tcp_proxy).
	http bool
	// netRBAC are the chain's network RBAC filters, httpRBAC the HTTP
	// RBAC filters of its connection manager, in order (rbac.go).
	netRBAC, httpRBAC []rbacFilter
}

type outCluster struct {
	name, edsName string
	eds           bool
	socket        *socket
	matches       []socketMatch
}

type socket struct {
	name string
	tls  bool
	alpn []string
	// istioCert: the client presents the proxy's mesh certificate (SDS
	// secret "default"), i.e. Istio mTLS rather than SIMPLE/MUTUAL TLS.
	istioCert bool
}

type socketMatch struct {
	name   string
	match  *structpb.Struct
	socket *socket
}

// Inbound is a decision about one inbound connection.
type Inbound struct {
	// Accept: a filter chain matched (else Envoy closes the connection).
	Accept bool
	// Terminate: the chain terminates TLS (mTLS with the proxy's cert);
	// false on an accepted TLS connection means TLS passes to the app.
	Terminate bool
	Chain     string
	// HTTP: the chain's filters are an HTTP connection manager, whose
	// RBAC filters judge each request (AuthorizeRequest).
	HTTP bool

	chain *chain
}

// AuthorizeConnection runs the chain's network RBAC filters over a
// connection it accepted (Envoy evaluates them on the connection's first
// bytes, before tcp_proxy or the HTTP connection manager sees them).
func (v Inbound) AuthorizeConnection(in AuthzInput) Authz {
	if v.chain == nil {
		return Authz{Allowed: false}
	}
	in.HTTP = nil
	return authorize(v.chain.netRBAC, &in)
}

// AuthorizeRequest runs the chain's HTTP RBAC filters over one request.
// A chain without a connection manager has none, and nothing to judge a
// request with: denied.
func (v Inbound) AuthorizeRequest(in AuthzInput) Authz {
	if v.chain == nil || !v.chain.http || in.HTTP == nil {
		return Authz{Allowed: false}
	}
	return authorize(v.chain.httpRBAC, &in)
}

// Inbound decides a connection to the pod's port: tls is what the
// tls_inspector sees; alpn the ClientHello's protocols; http whether the
// plaintext bytes are HTTP/1.1 (what http_inspector would detect).
func (t *Table) Inbound(ip netip.Addr, port uint32, tls bool, alpn []string, http bool) (Inbound, error) {
	if t == nil || t.Err != nil || t.inbound == nil {
		return Inbound{}, t.noConfig("the virtualInbound listener")
	}
	var protos []string
	switch {
	case tls:
		protos = alpn
	case http && t.inbound.httpInspector:
		protos = []string{"http/1.1"}
	}
	c := matchChain(t.inbound.chains, ip, port, tls, protos)
	if c == nil {
		// istiod sets no default_filter_chain on virtualInbound; with one
		// we would not know what it does.
		if t.inbound.hasDefault {
			return Inbound{}, fmt.Errorf("virtualInbound has a default filter chain, which the sandbox does not model")
		}
		return Inbound{}, nil
	}
	return Inbound{Accept: true, Terminate: c.terminates, Chain: c.name, HTTP: c.http, chain: c}, nil
}

func (t *Table) noConfig(what string) error {
	if t != nil && t.Err != nil {
		return fmt.Errorf("%s: %w (last push did not decode: %w)", what, ErrNoConfig, t.Err)
	}
	return fmt.Errorf("%s: %w", what, ErrNoConfig)
}

// matchChain selects a filter chain as Envoy does
// (envoy/config/listener/v3/listener_components.proto, FilterChainMatch,
// and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto#config-listener-v3-filterchainmatch):
// criteria in order destination port, destination IP, server name,
// transport protocol, application protocols, ...; at each step only the
// chains that match most specifically continue (a chain that names the
// value beats one that leaves it unset; one that names another value never
// matches), and there is no going back: if the port's chains all fail a
// later criterion, the connection matches nothing even when a port-less
// chain would have accepted it.
func matchChain(chains []chain, ip netip.Addr, port uint32, tls bool, alpn []string) *chain {
	cand := make([]*chain, 0, len(chains))
	for i := range chains {
		cand = append(cand, &chains[i])
	}
	// Destination port: exact beats unset.
	cand = narrow(cand, func(c *chain) (bool, int) {
		if c.port == 0 {
			return true, 0
		}
		return c.port == port, 1
	})
	// Destination IP: the longest matching prefix beats shorter, unset last.
	cand = narrow(cand, func(c *chain) (bool, int) {
		if len(c.prefixes) == 0 {
			return true, 0
		}
		best := -1
		for _, p := range c.prefixes {
			if p.Contains(ip) && p.Bits() > best {
				best = p.Bits()
			}
		}
		return best >= 0, best + 1
	})
	transport := "raw_buffer"
	if tls {
		transport = "tls"
	}
	cand = narrow(cand, func(c *chain) (bool, int) {
		if c.transport == "" {
			return true, 0
		}
		return c.transport == transport, 1
	})
	cand = narrow(cand, func(c *chain) (bool, int) {
		if len(c.alpn) == 0 {
			return true, 0
		}
		for _, a := range alpn {
			if slices.Contains(c.alpn, a) {
				return true, 1
			}
		}
		return false, 0
	})
	if len(cand) == 0 {
		return nil
	}
	// Envoy rejects listeners whose chains are not distinguishable; the
	// first is as good as any if that ever happens here.
	return cand[0]
}

// narrow keeps the chains that match with the highest specificity.
func narrow(cand []*chain, score func(*chain) (bool, int)) []*chain {
	best := -1
	var out []*chain
	for _, c := range cand {
		ok, s := score(c)
		if !ok {
			continue
		}
		switch {
		case s > best:
			best, out = s, append(out[:0], c)
		case s == best:
			out = append(out, c)
		}
	}
	return out
}

// Outbound is what the proxy sends to one endpoint of a cluster.
type Outbound struct {
	// MTLS: the transport socket is TLS (Istio mTLS when IstioCert).
	MTLS      bool
	IstioCert bool
	ALPN      []string
	// Socket names what decided: "tlsMode-istio" (a transport socket
	// match), "transport_socket", or "plaintext".
	Socket string
}

// OutboundClusterName is istiod's name for a Service port's cluster
// (pilot/pkg/model/service.go, BuildSubsetKey, in istio).
func OutboundClusterName(port int, fqdn string) string {
	return fmt.Sprintf("outbound|%d||%s", port, fqdn)
}

// Outbound decides the transport to endpoint ip:port of cluster: the first
// transport_socket_match whose match is a subset of the endpoint's
// "envoy.transport_socket_match" metadata, else the cluster's
// transport_socket, else plaintext
// (envoy/config/cluster/v3/cluster.proto, transport_socket_matches). That is
// how auto mTLS works: istiod gives the endpoints of sidecar pods
// tlsMode=istio unless mTLS is disabled for them
// (pilot/pkg/xds/endpoints/mtls_checker.go) and the cluster a tlsMode-istio
// match (pilot/pkg/networking/core/cluster_tls.go).
func (t *Table) Outbound(cluster string, ip netip.Addr, port uint32) (Outbound, error) {
	if t == nil || t.Err != nil || t.clusters == nil {
		return Outbound{}, t.noConfig("cluster " + cluster)
	}
	c, ok := t.clusters[cluster]
	if !ok {
		return Outbound{}, t.noConfig("cluster " + cluster)
	}
	var md *structpb.Struct
	if c.eds {
		eps, ok := t.endpoints[c.edsName]
		if !ok {
			return Outbound{}, t.noConfig("endpoints of " + c.edsName)
		}
		if md, ok = eps[netip.AddrPortFrom(ip, uint16(port)).String()]; !ok {
			return Outbound{}, t.noConfig(fmt.Sprintf("endpoint %s:%d of %s", ip, port, c.edsName))
		}
	}
	for _, m := range c.matches {
		if subset(m.match, md) {
			return m.socket.outbound(m.name), nil
		}
	}
	if c.socket != nil {
		return c.socket.outbound("transport_socket"), nil
	}
	return Outbound{Socket: "plaintext"}, nil
}

func (s *socket) outbound(name string) Outbound {
	if s == nil || !s.tls {
		return Outbound{Socket: name}
	}
	return Outbound{MTLS: true, IstioCert: s.istioCert, ALPN: s.alpn, Socket: name}
}

// subset: every field of match has the same value in md.
func subset(match, md *structpb.Struct) bool {
	for k, v := range match.GetFields() {
		if got, ok := md.GetFields()[k]; !ok || !proto.Equal(got, v) {
			return false
		}
	}
	return true
}

// decodeListeners finds virtualInbound among a LDS response (nil for a
// gateway, which has none).
func decodeListeners(res []*anypb.Any) (*inboundListener, error) {
	for _, a := range res {
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			return nil, fmt.Errorf("decode listener: %w", err)
		}
		if l.GetName() != virtualInbound {
			continue
		}
		in := &inboundListener{hasDefault: l.GetDefaultFilterChain() != nil}
		for _, lf := range l.GetListenerFilters() {
			in.httpInspector = in.httpInspector || lf.GetName() == httpInspector
		}
		for _, fc := range l.GetFilterChains() {
			c, err := decodeChain(fc)
			if err != nil {
				return nil, fmt.Errorf("listener %s: %w", l.GetName(), err)
			}
			in.chains = append(in.chains, c)
		}
		return in, nil
	}
	return nil, nil
}

func decodeChain(fc *listenerv3.FilterChain) (chain, error) {
	m := fc.GetFilterChainMatch()
	c := chain{name: fc.GetName(), port: m.GetDestinationPort().GetValue(), transport: m.GetTransportProtocol(), alpn: m.GetApplicationProtocols()}
	// Criteria the sandbox does not evaluate: refuse rather than ignore.
	if len(m.GetServerNames()) > 0 || len(m.GetSourcePrefixRanges()) > 0 || len(m.GetDirectSourcePrefixRanges()) > 0 ||
		len(m.GetSourcePorts()) > 0 || m.GetSourceType() != listenerv3.FilterChainMatch_ANY {
		return chain{}, fmt.Errorf("filter chain %q matches on criteria the sandbox does not model: %v", fc.GetName(), m)
	}
	for _, r := range m.GetPrefixRanges() {
		a, err := netip.ParseAddr(r.GetAddressPrefix())
		if err != nil {
			return chain{}, fmt.Errorf("filter chain %q prefix %q: %w", fc.GetName(), r.GetAddressPrefix(), err)
		}
		c.prefixes = append(c.prefixes, netip.PrefixFrom(a, int(r.GetPrefixLen().GetValue())))
	}
	s, err := decodeSocket(fc.GetTransportSocket())
	if err != nil {
		return chain{}, fmt.Errorf("filter chain %q: %w", fc.GetName(), err)
	}
	c.terminates = s != nil && s.tls
	if err := decodeFilters(&c, fc.GetFilters()); err != nil {
		return chain{}, fmt.Errorf("filter chain %q: %w", fc.GetName(), err)
	}
	return c, nil
}

// decodeFilters reads the authorization filters of a chain's network
// filters and, in its HTTP connection manager, its HTTP filters. A
// filter that could deny what the sandbox does not evaluate (external
// authorization: CUSTOM AuthorizationPolicies) is an error.
func decodeFilters(c *chain, filters []*listenerv3.Filter) error {
	for _, f := range filters {
		tc := f.GetTypedConfig()
		switch {
		case tc.MessageIs(&netrbacv3.RBAC{}):
			rf, err := decodeRBAC(tc, &netrbacv3.RBAC{})
			if err != nil {
				return fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			c.netRBAC = append(c.netRBAC, rf)
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			hcm := &hcmv3.HttpConnectionManager{}
			if err := tc.UnmarshalTo(hcm); err != nil {
				return fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			c.http = true
			for _, hf := range hcm.GetHttpFilters() {
				htc := hf.GetTypedConfig()
				switch {
				case htc.MessageIs(&httprbacv3.RBAC{}):
					rf, err := decodeRBAC(htc, &httprbacv3.RBAC{})
					if err != nil {
						return fmt.Errorf("HTTP filter %s: %w", hf.GetName(), err)
					}
					c.httpRBAC = append(c.httpRBAC, rf)
				case strings.Contains(htc.GetTypeUrl(), "ext_authz"):
					return fmt.Errorf("HTTP filter %s (external authorization) is not modelled by the sandbox", hf.GetName())
				}
			}
		case strings.Contains(tc.GetTypeUrl(), "ext_authz"):
			return fmt.Errorf("filter %s (external authorization) is not modelled by the sandbox", f.GetName())
		}
	}
	return nil
}

func decodeSocket(ts *corev3.TransportSocket) (*socket, error) {
	if ts == nil {
		return nil, nil
	}
	s := &socket{name: ts.GetName()}
	switch ts.GetName() {
	case rawBufferSocket:
		return s, nil
	case tlsSocket:
	default:
		return nil, fmt.Errorf("transport socket %q is not modelled", ts.GetName())
	}
	s.tls = true
	var common *tlsv3.CommonTlsContext
	switch {
	case ts.GetTypedConfig().MessageIs(&tlsv3.UpstreamTlsContext{}):
		u := &tlsv3.UpstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(u); err != nil {
			return nil, err
		}
		common = u.GetCommonTlsContext()
	case ts.GetTypedConfig().MessageIs(&tlsv3.DownstreamTlsContext{}):
		d := &tlsv3.DownstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(d); err != nil {
			return nil, err
		}
		common = d.GetCommonTlsContext()
	}
	s.alpn = common.GetAlpnProtocols()
	for _, sc := range common.GetTlsCertificateSdsSecretConfigs() {
		// istiod's SDS name for the workload certificate
		// (pkg/model/authentication.go SDSDefaultResourceName in istio).
		s.istioCert = s.istioCert || sc.GetName() == "default"
	}
	return s, nil
}

func decodeClusters(res []*anypb.Any) (map[string]*outCluster, error) {
	out := make(map[string]*outCluster, len(res))
	for _, a := range res {
		c := &clusterv3.Cluster{}
		if err := a.UnmarshalTo(c); err != nil {
			return nil, fmt.Errorf("decode cluster: %w", err)
		}
		if !strings.HasPrefix(c.GetName(), "outbound|") {
			continue
		}
		oc := &outCluster{name: c.GetName(), eds: c.GetType() == clusterv3.Cluster_EDS}
		if oc.eds {
			oc.edsName = c.GetEdsClusterConfig().GetServiceName()
			if oc.edsName == "" {
				oc.edsName = c.GetName()
			}
		}
		s, err := decodeSocket(c.GetTransportSocket())
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
		oc.socket = s
		for _, m := range c.GetTransportSocketMatches() {
			ms, err := decodeSocket(m.GetTransportSocket())
			if err != nil {
				return nil, fmt.Errorf("cluster %s match %s: %w", c.GetName(), m.GetName(), err)
			}
			oc.matches = append(oc.matches, socketMatch{name: m.GetName(), match: m.GetMatch(), socket: ms})
		}
		out[c.GetName()] = oc
	}
	return out, nil
}

// edsNames lists the EDS service names of the clusters, sorted: what the
// proxy subscribes to.
func edsNames(cs map[string]*outCluster) []string {
	var out []string
	for _, c := range cs {
		if c.eds {
			out = append(out, c.edsName)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

func decodeEndpoints(res []*anypb.Any) (map[string]map[string]*structpb.Struct, error) {
	out := make(map[string]map[string]*structpb.Struct, len(res))
	for _, a := range res {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			return nil, fmt.Errorf("decode endpoints: %w", err)
		}
		eps := map[string]*structpb.Struct{}
		for _, le := range cla.GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
				ip, err := netip.ParseAddr(sa.GetAddress())
				if err != nil {
					continue // not an IP endpoint (e.g. an internal address)
				}
				key := netip.AddrPortFrom(ip, uint16(sa.GetPortValue())).String()
				eps[key] = lb.GetMetadata().GetFilterMetadata()[transportSocketMatchK]
			}
		}
		out[cla.GetClusterName()] = eps
	}
	return out, nil
}
