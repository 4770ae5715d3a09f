package dataplane

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// RequestTimeout bounds every simulated request.
const RequestTimeout = time.Second

// Outcome values recorded as ground truth.
const (
	OutcomeSuccess = "success"
	OutcomeReset   = "reset"   // the connection was reset (RST)
	OutcomeRefused = "refused" // nothing listening
	OutcomeTimeout = "timeout"
	OutcomeClosed  = "closed" // closed without an answer (EOF)
	OutcomeError   = "error"  // anything else (e.g. a TLS handshake error)
	OutcomeNoRoute = "no_route"
)

// StatusOutcome is the outcome for an HTTP answer with an error status.
func StatusOutcome(code int) string { return fmt.Sprintf("status_%d", code) }

func classify(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return OutcomeSuccess
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return OutcomeReset
	case errors.Is(err, syscall.ECONNREFUSED):
		return OutcomeRefused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return OutcomeTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return OutcomeClosed
	}
	return OutcomeError
}

// TLSChoice overrides how a meshed client talks to the server.
type TLSChoice int

// TLS choices for probes.
const (
	TLSAuto  TLSChoice = iota // auto mTLS and DestinationRules, as the sidecar would
	TLSForce                  // always mTLS
	TLSNever                  // always plaintext
)

// result of one attempt at the client side.
type result struct {
	outcome string
	code    int
}

// pickEndpoint chooses a random endpoint, as kube-proxy and Envoy's default
// (round robin/least request) spread load.
func pickEndpoint(svc *Service) *Pod {
	if len(svc.Endpoints) == 0 {
		return nil
	}
	return svc.Endpoints[rand.IntN(len(svc.Endpoints))]
}

func (d *DataPlane) dial(ctx context.Context, from string, to string) (net.Conn, error) {
	dl := net.Dialer{Timeout: RequestTimeout}
	if from != "" {
		dl.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	return dl.DialContext(ctx, "tcp", to)
}

// plainRequest is a client without a sidecar (or outside the cluster): the
// Service address is DNAT-ed to a random endpoint (kube-proxy), and the
// request is plaintext with no identity.
func (d *DataPlane) plainRequest(ctx context.Context, fromIP string, svc *Service, sp scenario.ServicePort, host, path string) result {
	ep := pickEndpoint(svc)
	if ep == nil {
		// No endpoints: kube-proxy rejects with ICMP, the client sees refused.
		return result{outcome: OutcomeRefused}
	}
	protocol := appProtocol(ep, sp)
	addr := net.JoinHostPort(ep.IP, fmt.Sprint(sp.Target()))
	return d.rawRequest(ctx, fromIP, addr, nil, protocol, host, path, "")
}

// rawRequest does one HTTP request or TCP exchange on a fresh connection.
func (d *DataPlane) rawRequest(ctx context.Context, fromIP, addr string, tlsCfg *tls.Config, protocol, host, path, peerHeader string) result {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	c, err := d.dial(ctx, fromIP, addr)
	if err != nil {
		return result{outcome: classify(err)}
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	if tlsCfg != nil {
		tc := tls.Client(c, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return result{outcome: classify(err)}
		}
		c = tc
	}
	if !scenario.IsHTTP(protocol) {
		if _, err := io.WriteString(c, "PING\r\n"); err != nil {
			return result{outcome: classify(err)}
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return result{outcome: classify(err)}
		}
		if !strings.HasPrefix(line, "+PONG") {
			return result{outcome: OutcomeError}
		}
		_, _ = io.WriteString(c, "QUIT\r\n")
		return result{outcome: OutcomeSuccess}
	}
	if path == "" {
		path = "/"
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sandbox\r\nConnection: close\r\n", path, host)
	if peerHeader != "" {
		req += peerMetadataHeader + ": " + peerHeader + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return result{outcome: classify(err)}
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return result{outcome: classify(err)}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	if resp.StatusCode >= 400 {
		return result{outcome: StatusOutcome(resp.StatusCode), code: resp.StatusCode}
	}
	return result{outcome: OutcomeSuccess, code: resp.StatusCode}
}

// meshRequest is a request from a meshed client's app through its sidecar
// (or from the ingress gateway). The sidecar picks the endpoint itself, uses
// mTLS or plaintext as auto mTLS and DestinationRules decide, and reports
// reporter="source" metrics. The app sees Envoy's answer: a 503 when the
// upstream connection fails, never a reset.
func (d *DataPlane) meshRequest(ctx context.Context, client *Pod, svc *Service, sp scenario.ServicePort, path string, choice TLSChoice) result {
	start := time.Now()
	ep := pickEndpoint(svc)
	protocol := servicePortProtocol(svc, sp)
	if ep != nil {
		protocol = appProtocol(ep, sp)
	}
	reqProto := requestProtocol(protocol)
	tcp := !scenario.IsHTTP(protocol)
	svcLabels := dstService{svc.FQDN(), svc.Name, svc.Namespace}
	record := func(dst peer, code int, flags string, sent int) {
		if client.metrics == nil {
			return
		}
		if tcp {
			client.metrics.tcpConn("source", client.peer, dst, svcLabels, flags, unknown, sent, 0)
			return
		}
		// connection_security_policy is "unknown" on reporter=source in Istio.
		client.metrics.request("source", client.peer, dst, svcLabels, reqProto, code, flags, unknown, float64(time.Since(start).Microseconds())/1000)
	}
	fail := func(dst peer, code int, flags string) result {
		record(dst, code, flags, 0)
		if tcp {
			// Envoy's tcp_proxy closes the app's connection.
			return result{outcome: OutcomeClosed}
		}
		return result{outcome: StatusOutcome(code), code: code}
	}
	if ep == nil {
		return fail(unknownPeer, 503, "UH") // no healthy upstream
	}
	dst := ep.peer
	useTLS, alpn := d.useMTLS(client, svc, sp, ep, choice)
	if choice == TLSAuto {
		var ok bool
		if useTLS, alpn, ok = d.outboundDecision(client, svc, sp.Port, sp.Target(), ep, useTLS, alpn); !ok {
			// No cluster or endpoint from istiod: Envoy answers 503 NC
			// (upstream cluster not found).
			return fail(unknownPeer, 503, "NC")
		}
	}
	if !useTLS {
		dst.principal = unknown
	}
	var tlsCfg *tls.Config
	if useTLS {
		cfg, err := d.ca.clientConfig(client.SPIFFE())
		if err != nil {
			return fail(dst, 503, "UF")
		}
		cfg.NextProtos = alpn
		tlsCfg = cfg
	}
	peerHeader := encodePeer(client.peer)
	if tcp {
		peerHeader = ""
	}
	host := fmt.Sprintf("%s:%d", svc.FQDN(), sp.Port)
	r := d.rawRequest(ctx, client.IP, net.JoinHostPort(ep.IP, fmt.Sprint(sp.Target())), tlsCfg, protocol, host, path, peerHeader)
	switch {
	case r.outcome == OutcomeSuccess:
		record(dst, r.code, "-", 8)
		if tcp {
			return r
		}
		return result{outcome: OutcomeSuccess, code: r.code}
	case r.code != 0:
		record(dst, r.code, "-", 0)
		return r
	case r.outcome == OutcomeTimeout:
		return fail(dst, 504, "UT")
	case r.outcome == OutcomeRefused:
		// Connection failure; Istio's default retry policy retries
		// connect-failure, hence URX
		// (https://istio.io/latest/docs/concepts/traffic-management/#retries).
		return fail(dst, 503, "UF,URX")
	case useTLS && (r.outcome == OutcomeReset || r.outcome == OutcomeClosed || r.outcome == OutcomeError):
		// The server closed or reset during the TLS handshake: an upstream
		// connection failure (transport failure), retried then given up.
		return fail(dst, 503, "UF,URX")
	default:
		// Reset/closed after the request went out: upstream connection
		// termination.
		return fail(dst, 503, "UC")
	}
}

// useMTLS decides whether the client sidecar originates Istio mTLS:
// a DestinationRule's tls.mode wins (DISABLE: plaintext; ISTIO_MUTUAL:
// mTLS even to a server without a sidecar); otherwise auto mTLS sends mTLS
// to endpoints that have a sidecar unless their PeerAuthentication mode is
// DISABLE (https://istio.io/latest/docs/ops/configuration/traffic-management/tls-configuration/#auto-mtls).
//
// It also returns the ALPN offered: Istio's on ISTIO_MUTUAL and auto mTLS;
// none on SIMPLE and MUTUAL, whose TLS is the application's kind (istiod's
// clusters set no ALPN there unless HTTP/2 is configured,
// pilot/pkg/networking/core/cluster_tls.go), which a PERMISSIVE server
// sidecar does not take for mTLS (ownInbound).
func (d *DataPlane) useMTLS(client *Pod, svc *Service, sp scenario.ServicePort, ep *Pod, choice TLSChoice) (bool, []string) {
	switch choice {
	case TLSForce:
		return true, istioALPN
	case TLSNever:
		return false, nil
	}
	snap := d.snapshot()
	switch strings.ToUpper(ClientTLS(snap.drs, snap.root, client.Namespace, svc.Name, svc.Namespace, uint32(sp.Port))) {
	case "DISABLE":
		return false, nil
	case "ISTIO_MUTUAL":
		return true, istioALPN
	case "MUTUAL", "SIMPLE":
		return true, nil
	}
	// Auto mTLS keys on the endpoint's sidecar (its tlsMode=istio label),
	// not on the port: a port excluded from inbound capture still gets mTLS.
	return ep.Sidecar && d.modeFor(ep, sp.Target()) != ModeDisable, istioALPN
}

// serveGateway is the ingress gateway: plaintext HTTP from outside, routed
// by Host header to a Service and forwarded through the mesh with the
// gateway's identity.
func (d *DataPlane) serveGateway(gw *Pod, c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	_ = req.Body.Close()
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	code := 404
	if route, ok := d.scn.GatewayRoute(host); ok {
		ref, _ := scenario.ParseServiceRef(route.Service)
		if svc := d.topo.service(ref.Service, ref.Namespace); svc != nil {
			sp, _ := svc.port(ref.Port)
			ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
			r := d.meshRequest(ctx, gw, svc, sp, req.URL.Path, TLSAuto)
			cancel()
			code = r.code
			if code == 0 {
				code = 503
			}
		}
	} else {
		// No route: Envoy answers 404 with response flag NR.
		gw.metrics.request("source", gw.peer, unknownPeer, unknownService, "http", 404, "NR", unknown, 0)
	}
	body := http.StatusText(code) + "\n"
	_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", code, http.StatusText(code), len(body), body)
}

// servicePortProtocol is the protocol Istio infers for a Service port:
// appProtocol, else the port name prefix
// (https://istio.io/latest/docs/ops/configuration/traffic-management/protocol-selection/),
// falling back to the backends' container port protocol.
func servicePortProtocol(svc *Service, sp scenario.ServicePort) string {
	if sp.AppProtocol != "" {
		return strings.ToLower(sp.AppProtocol)
	}
	prefix, _, _ := strings.Cut(strings.ToLower(sp.Name), "-")
	switch prefix {
	case "http", "http2", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql", "redis", "https":
		return prefix
	}
	for _, e := range svc.Endpoints {
		if wp, ok := e.port(sp.Target()); ok {
			return wp.ProtocolName()
		}
	}
	return "tcp"
}

// appProtocol is what the endpoint's app speaks on the Service's target port.
func appProtocol(ep *Pod, sp scenario.ServicePort) string {
	if wp, ok := ep.port(sp.Target()); ok {
		return wp.ProtocolName()
	}
	return "tcp"
}
