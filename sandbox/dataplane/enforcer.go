package dataplane

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Enforcer is where the sidecars take their mTLS orders from when it is set
// (SetEnforcer): with the real istiod, the listeners, clusters and
// endpoints it pushed to each pod's proxy (sandbox/xdsproxy). The data
// plane's own reading of Istio's rules (policy.go, destrule.go) then only
// cross-checks: when the two disagree the Enforcer wins and the
// disagreement is recorded (Disagreements).
type Enforcer interface {
	// Manages reports whether the pod's proxy takes its orders from the
	// Enforcer; other pods (the ingress gateway, which is not connected)
	// keep the data plane's rules.
	Manages(p PodRef) bool
	// Inbound decides a connection the pod's sidecar intercepted on port.
	// An error means there is no decision (no push yet, config the
	// sandbox cannot model): the data plane resets the connection.
	Inbound(p PodRef, port int, c InboundConn) (InboundVerdict, error)
	// Outbound decides the transport from the client's sidecar to one
	// endpoint of a Service port. An error means no decision: the request
	// fails (503 NC) instead of falling back to the data plane's rules.
	Outbound(client PodRef, to OutboundTarget) (OutboundVerdict, error)
}

// PodRef names a pod.
type PodRef struct{ Namespace, Name, IP string }

func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// InboundConn is what Envoy's listener filters see of a connection.
type InboundConn struct {
	TLS  bool     // tls_inspector: a TLS ClientHello
	ALPN []string // its application protocols
	HTTP bool     // http_inspector: plaintext HTTP/1.1
}

func (c InboundConn) String() string {
	if !c.TLS {
		return "plaintext"
	}
	return fmt.Sprintf("TLS alpn=%s", strings.Join(c.ALPN, ","))
}

// InboundVerdict is the Enforcer's decision on an inbound connection.
type InboundVerdict struct {
	Accept    bool // a filter chain matched
	Terminate bool // the chain terminates mTLS (else bytes go to the app as sent)
	Chain     string
	// Authz is the matched chain's authorization (its RBAC filters, as
	// istiod rendered them from AuthorizationPolicies); nil when the
	// Enforcer does not authorize.
	Authz Authorizer
}

// Authorizer judges what a filter chain accepted: the connection once
// (network RBAC), and each request on an HTTP chain (HTTP RBAC).
type Authorizer interface {
	Connection(AuthzInput) AuthzVerdict
	// Request reports ok=false when the chain has no HTTP filters (a TCP
	// chain), so requests are not judged one by one.
	Request(AuthzInput) (v AuthzVerdict, ok bool)
}

// AuthzInput is what the sidecar knows of a connection and request.
type AuthzInput struct {
	Source, Destination netip.AddrPort
	Principal           string // the peer's SPIFFE ID when mTLS was terminated
	SNI                 string
	Request             *http.Request // nil for the connection
}

// AuthzVerdict is an Authorizer's decision.
type AuthzVerdict struct {
	Allowed bool
	Policy  string
	// ShadowAllowed, ShadowDenied count the filters whose shadow rules
	// (dry-run AuthorizationPolicies) allowed or denied.
	ShadowAllowed, ShadowDenied int
}

// AuthzStats counts a sidecar's authorization decisions, as Envoy's RBAC
// stats do (allowed, denied, shadow_allowed, shadow_denied).
type AuthzStats struct {
	Allowed, Denied, ShadowAllowed, ShadowDenied int64
	// DeniedBy counts denials by effective policy ("" when an ALLOW
	// filter matched no policy).
	DeniedBy map[string]int64
}

func (v InboundVerdict) String() string {
	switch {
	case !v.Accept:
		return "reset (no filter chain matches)"
	case v.Terminate:
		return "accept, terminate mTLS (chain " + v.Chain + ")"
	}
	return "accept, pass through (chain " + v.Chain + ")"
}

// OutboundTarget is one endpoint of a Service port.
type OutboundTarget struct {
	ServiceFQDN  string
	ServicePort  int
	EndpointIP   string
	EndpointPort int
	Endpoint     PodRef
}

// OutboundVerdict is the Enforcer's transport to an endpoint.
type OutboundVerdict struct {
	MTLS   bool
	ALPN   []string
	Socket string // what decided, e.g. "tlsMode-istio"
}

// Disagreement is one decision where istiod's configuration and the data
// plane's reading of Istio's rules differ. Istiod's decision was enforced.
type Disagreement struct {
	Direction string // "inbound" or "outbound"
	// Pod is the sidecar that decided (the server inbound, the client
	// outbound); Port its inbound port or the Service port.
	Pod  string
	Port int
	// Peer is the connection (inbound: "plaintext", "TLS alpn=...";
	// outbound: the Service and endpoint).
	Peer   string
	Istiod string
	Ours   string
	Count  int
	First  time.Time
	Last   time.Time
}

func (d Disagreement) String() string {
	return fmt.Sprintf("%s %s port %d (%s): istiod: %s; our rules: %s (%d times)", d.Direction, d.Pod, d.Port, d.Peer, d.Istiod, d.Ours, d.Count)
}

// DisagreementSettle is how long after a policy change (seen by the data
// plane's informers) decisions are not cross-checked: istiod debounces and
// pushes within that time, and a decision in between follows the old push,
// as a real proxy's would. That lag is not a disagreement.
const DisagreementSettle = 3 * time.Second

type disagreements struct {
	mu   sync.Mutex
	byID map[string]*Disagreement
	// decided counts the Enforcer's decisions by direction; undecided the
	// errors (no decision: failed closed) by direction and message.
	decided   map[string]int
	undecided map[string]int
}

func (ds *disagreements) count(direction string, err error) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if err == nil {
		if ds.decided == nil {
			ds.decided = map[string]int{}
		}
		ds.decided[direction]++
		return
	}
	if ds.undecided == nil {
		ds.undecided = map[string]int{}
	}
	ds.undecided[direction+": "+err.Error()]++
}

func (ds *disagreements) record(d Disagreement) {
	key := strings.Join([]string{d.Direction, d.Pod, fmt.Sprint(d.Port), d.Peer, d.Istiod, d.Ours}, "|")
	now := time.Now()
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.byID == nil {
		ds.byID = map[string]*Disagreement{}
	}
	cur, ok := ds.byID[key]
	if !ok {
		d.First = now
		cur = &d
		ds.byID[key] = cur
	}
	cur.Count++
	cur.Last = now
}

// SetEnforcer makes the sidecars take their orders from e (nil: the data
// plane's own rules again).
func (d *DataPlane) SetEnforcer(e Enforcer) {
	if e == nil {
		d.enforcer.Store(nil)
		return
	}
	d.enforcer.Store(&e)
}

func (d *DataPlane) enforcerFor(p *Pod) Enforcer {
	e := d.enforcer.Load()
	if e == nil || !(*e).Manages(p.ref()) {
		return nil
	}
	return *e
}

// Disagreements lists every disagreement seen so far, oldest first.
func (d *DataPlane) Disagreements() []Disagreement {
	d.dis.mu.Lock()
	defer d.dis.mu.Unlock()
	out := make([]Disagreement, 0, len(d.dis.byID))
	for _, v := range d.dis.byID {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].First.Before(out[j].First) })
	return out
}

// ResetDisagreements forgets the disagreements and decisions seen so far.
func (d *DataPlane) ResetDisagreements() {
	d.dis.mu.Lock()
	d.dis.byID, d.dis.decided, d.dis.undecided = nil, nil, nil
	d.dis.mu.Unlock()
}

// EnforcerDecisions counts the Enforcer's decisions by direction
// ("inbound", "outbound"), and the times it had none (the connection or
// request failed closed) by direction and reason.
func (d *DataPlane) EnforcerDecisions() (decided, undecided map[string]int) {
	d.dis.mu.Lock()
	defer d.dis.mu.Unlock()
	decided, undecided = map[string]int{}, map[string]int{}
	for k, v := range d.dis.decided {
		decided[k] = v
	}
	for k, v := range d.dis.undecided {
		undecided[k] = v
	}
	return decided, undecided
}

// settled: long enough since the last policy change to compare.
func (d *DataPlane) settled() bool {
	return time.Since(time.Unix(0, d.policyAt.Load())) >= d.settle
}

func (p *Pod) ref() PodRef { return PodRef{Namespace: p.Namespace, Name: p.Name, IP: p.IP} }

// inboundDecision decides an intercepted connection: accept, and whether
// the sidecar terminates TLS. With an Enforcer its verdict is enforced and
// our rule (mode) cross-checked; without one, our rule decides.
//
// The verdict's Authorizer (nil without an Enforcer: the data plane's own
// rules do not read AuthorizationPolicies) judges what was accepted.
func (d *DataPlane) inboundDecision(p *Pod, port int, c InboundConn) (accept, terminate bool, authz Authorizer) {
	mode := d.modeFor(p, port)
	ours, oursTerminate, oursText := d.ownInbound(p, port, c, mode)
	e := d.enforcerFor(p)
	if e == nil {
		return ours, oursTerminate, nil
	}
	v, err := e.Inbound(p.ref(), port, c)
	d.dis.count("inbound", err)
	if err != nil {
		d.log.Debug("no inbound decision from istiod: reset", "pod", p.ref().String(), "port", port, "err", err)
		return false, false, nil
	}
	if d.settled() && (v.Accept != ours || (v.Accept && v.Terminate != oursTerminate)) {
		d.dis.record(Disagreement{Direction: "inbound", Pod: p.ref().String(), Port: port, Peer: c.String(), Istiod: v.String(), Ours: oursText})
	}
	if v.Terminate && !c.TLS {
		// A TLS transport socket on a plaintext connection: the handshake fails.
		return false, false, nil
	}
	return v.Accept, v.Terminate, v.Authz
}

// authorized records an Authorizer's verdict in the pod's counts.
func (d *DataPlane) authorized(p *Pod, v AuthzVerdict) bool {
	d.authzMu.Lock()
	defer d.authzMu.Unlock()
	if d.authz == nil {
		d.authz = map[string]*AuthzStats{}
	}
	st := d.authz[p.ref().String()]
	if st == nil {
		st = &AuthzStats{DeniedBy: map[string]int64{}}
		d.authz[p.ref().String()] = st
	}
	if v.Allowed {
		st.Allowed++
	} else {
		st.Denied++
		st.DeniedBy[v.Policy]++
	}
	st.ShadowAllowed += int64(v.ShadowAllowed)
	st.ShadowDenied += int64(v.ShadowDenied)
	return v.Allowed
}

// AuthzStats returns each sidecar's authorization counts, by "ns/pod".
func (d *DataPlane) AuthzStats() map[string]AuthzStats {
	d.authzMu.Lock()
	defer d.authzMu.Unlock()
	out := make(map[string]AuthzStats, len(d.authz))
	for k, v := range d.authz {
		c := *v
		c.DeniedBy = maps.Clone(v.DeniedBy)
		out[k] = c
	}
	return out
}

// ResetAuthzStats forgets the authorization counts.
func (d *DataPlane) ResetAuthzStats() {
	d.authzMu.Lock()
	d.authz = nil
	d.authzMu.Unlock()
}

// ownInbound is the data plane's own reading of what a sidecar does with
// an inbound connection in mode, following the filter chains istiod builds
// for it (getFilterChainMatchOptions in istio's
// pilot/pkg/networking/core/filterchain_options.go):
//   - PERMISSIVE accepts plaintext, and terminates TLS that offers one of
//     Istio's ALPN values (istio, istio-peer-exchange, istio-http/1.0,
//     istio-http/1.1, istio-h2); other TLS is reset on a port a Service
//     declares HTTP (its chains all want those ALPN values), and passed to
//     the app as it came on a TCP, unnamed or undeclared port;
//   - STRICT terminates any TLS and resets plaintext;
//   - DISABLE accepts plaintext and resets TLS
//
// (https://istio.io/latest/docs/reference/config/security/peer_authentication/#PeerAuthentication-MutualTLS-Mode).
func (d *DataPlane) ownInbound(p *Pod, port int, c InboundConn, mode Mode) (accept, terminate bool, text string) {
	switch {
	case !c.TLS && mode == ModeStrict, c.TLS && mode == ModeDisable:
		return false, false, fmt.Sprintf("reset (%s)", mode)
	case !c.TLS:
		return true, false, fmt.Sprintf("accept plaintext (%s)", mode)
	case mode == ModeStrict || slices.ContainsFunc(c.ALPN, func(a string) bool { return slices.Contains(istioMTLSALPNs, a) }):
		return true, true, fmt.Sprintf("accept, terminate mTLS (%s)", mode)
	case d.topo.httpServicePort(p, port):
		return false, false, fmt.Sprintf("reset (%s, HTTP Service port, TLS without Istio's ALPN)", mode)
	}
	return true, false, fmt.Sprintf("accept, pass TLS through (%s, TLS without Istio's ALPN)", mode)
}

// istioMTLSALPNs are the ALPN values istiod's PERMISSIVE chains terminate
// (allIstioMtlsALPNs in filterchain_options.go).
var istioMTLSALPNs = []string{"istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"}

// outboundDecision decides whether the client's sidecar sends mTLS to ep
// (and with which ALPN); ok=false means there is no decision.
func (d *DataPlane) outboundDecision(client *Pod, svc *Service, servicePort, targetPort int, ep *Pod, ours bool, oursALPN []string) (mtls bool, alpn []string, ok bool) {
	e := d.enforcerFor(client)
	if e == nil {
		return ours, oursALPN, true
	}
	to := OutboundTarget{ServiceFQDN: svc.FQDN(), ServicePort: servicePort, EndpointIP: ep.IP, EndpointPort: targetPort, Endpoint: ep.ref()}
	v, err := e.Outbound(client.ref(), to)
	d.dis.count("outbound", err)
	if err != nil {
		d.log.Debug("no outbound decision from istiod: refuse", "pod", client.ref().String(), "to", to.ServiceFQDN, "err", err)
		return false, nil, false
	}
	if v.MTLS != ours && d.settled() {
		word := func(m bool) string {
			if m {
				return "mTLS"
			}
			return "plaintext"
		}
		d.dis.record(Disagreement{Direction: "outbound", Pod: client.ref().String(), Port: servicePort,
			Peer:   fmt.Sprintf("%s:%d endpoint %s:%d (%s)", svc.FQDN(), servicePort, ep.IP, targetPort, ep.ref()),
			Istiod: fmt.Sprintf("%s (%s)", word(v.MTLS), v.Socket), Ours: word(ours)})
	}
	return v.MTLS, v.ALPN, true
}

// clientHelloALPN reads the ALPN protocols of the TLS ClientHello at the
// head of br without consuming it, as Envoy's tls_inspector does. The
// record is parsed by crypto/tls itself, on a copy.
func clientHelloALPN(br *bufio.Reader) []string {
	hdr, err := br.Peek(5)
	if err != nil {
		return nil
	}
	rec, err := br.Peek(5 + (int(hdr[3])<<8 | int(hdr[4])))
	if err != nil {
		return nil
	}
	var protos []string
	stop := errors.New("hello read")
	srv := tls.Server(&helloConn{r: bytes.NewReader(rec)}, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		protos = append([]string(nil), h.SupportedProtos...)
		return nil, stop
	}})
	_ = srv.Handshake()
	return protos
}

// helloConn feeds a recorded ClientHello to crypto/tls and discards what it
// writes back.
type helloConn struct{ r *bytes.Reader }

func (c *helloConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *helloConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *helloConn) Close() error                     { return nil }
func (c *helloConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *helloConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *helloConn) SetDeadline(time.Time) error      { return nil }
func (c *helloConn) SetReadDeadline(time.Time) error  { return nil }
func (c *helloConn) SetWriteDeadline(time.Time) error { return nil }
