package dataplane

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// peerMetadataHeader carries the client sidecar's workload metadata to the
// server, as Istio's metadata exchange does with x-envoy-peer-metadata
// (https://istio.io/latest/docs/reference/config/metrics/#labels: the
// source_* labels come from peer metadata, so they are known even on
// plaintext). Istio encodes a protobuf Struct; the sandbox encodes JSON.
const peerMetadataHeader = "x-envoy-peer-metadata"

type peerMeta struct {
	Workload  string `json:"WORKLOAD_NAME"`
	Namespace string `json:"NAMESPACE"`
	App       string `json:"app"`
	Version   string `json:"version"`
	Canonical string `json:"CANONICAL_SERVICE"`
	Revision  string `json:"CANONICAL_REVISION"`
}

func encodePeer(p peer) string {
	b, _ := json.Marshal(peerMeta{p.workload, p.namespace, p.app, p.version, p.canonical, p.revision})
	return base64.StdEncoding.EncodeToString(b)
}

func decodePeer(v string) (peer, bool) {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return peer{}, false
	}
	var m peerMeta
	if json.Unmarshal(b, &m) != nil || m.Workload == "" {
		return peer{}, false
	}
	return peer{m.Workload, m.Namespace, unknown, orUnknown(m.App), orUnknown(m.Version), orUnknown(m.Canonical), orUnknown(m.Revision)}, true
}

// peekedConn replays bytes already read while sniffing the first byte.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// reset closes c with a TCP RST, as Envoy does when a listener's filter
// chain rejects a connection.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// serveInbound accepts connections on one container port of a pod.
func (d *DataPlane) serveInbound(p *Pod, port int, ln net.Listener) {
	d.acceptLoop(ln, func(c net.Conn) { d.handleInbound(p, port, c) })
}

// acceptLoop hands each connection of ln to handle in its own goroutine,
// tracked by the data plane's WaitGroup, until the listener closes.
func (d *DataPlane) acceptLoop(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			handle(c)
		}()
	}
}

func (d *DataPlane) handleInbound(p *Pod, port int, c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	wp, _ := p.port(port)
	if p.Gateway {
		d.serveGateway(p, c)
		return
	}
	if !p.Captured(port) {
		// No sidecar, or a port excluded from inbound capture: iptables
		// delivers straight to the app, and Envoy never sees it (no metrics).
		d.serveApp(p, wp, c, inboundInfo{})
		return
	}
	// Large enough for a whole ClientHello record (at most 16 KiB + header).
	br := bufio.NewReaderSize(c, 16<<10+5)
	first, err := br.Peek(1)
	if err != nil {
		return
	}
	conn := InboundConn{TLS: first[0] == 0x16} // TLS handshake record: what Envoy's tls_inspector looks for
	if conn.TLS {
		conn.ALPN = clientHelloALPN(br)
	} else {
		conn.HTTP = scenario.IsHTTP(wp.ProtocolName())
	}
	// A rejected connection is reset before any filter runs, so it leaves no
	// istio_* series, as with Envoy.
	accept, terminate, authz := d.inboundDecision(p, port, conn)
	if !accept {
		reset(c)
		return
	}
	pc := &peekedConn{Conn: c, r: br}
	info := inboundInfo{captured: true, authz: authz, local: addrPort(c.LocalAddr()), remote: addrPort(c.RemoteAddr())}
	var app net.Conn = pc
	if terminate {
		cfg, err := d.ca.serverConfig(p.SPIFFE())
		if err != nil {
			d.log.Error("server TLS config", "pod", p.Name, "err", err)
			reset(c)
			return
		}
		tc := tls.Server(pc, cfg)
		if err := tc.Handshake(); err != nil {
			reset(c)
			return
		}
		st := tc.ConnectionState()
		info.mtls, info.principal, info.sni = true, peerSPIFFE(st), st.ServerName
		app = tc
	}
	// Otherwise plaintext, or TLS a passthrough chain hands to the app as
	// it came. Network RBAC judges the connection before the app (or the
	// HTTP connection manager) sees a byte; a denial closes it.
	if authz != nil && !d.authorized(p, authz.Connection(info.authzInput(nil))) {
		return
	}
	d.serveApp(p, wp, app, info)
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

type inboundInfo struct {
	captured  bool // through the sidecar: record reporter=destination
	mtls      bool
	principal string
	sni       string
	// authz judges the connection and its requests (nil: no RBAC).
	authz         Authorizer
	local, remote netip.AddrPort
}

func (i inboundInfo) authzInput(r *http.Request) AuthzInput {
	// Envoy's principal is the peer certificate's URI SAN (spiffe://...),
	// as peerSPIFFE reads it; none without terminated mTLS.
	principal := ""
	if i.mtls {
		principal = i.principal
	}
	return AuthzInput{Source: i.remote, Destination: i.local, Principal: principal, SNI: i.sni, Request: r}
}

func (i inboundInfo) csp() string {
	if i.mtls {
		return "mutual_tls"
	}
	return "none"
}

// serveApp is the application behind the sidecar: HTTP/1.1 on HTTP and
// gRPC ports (gRPC is simulated as HTTP/1.1), a line echo on TCP ports. When
// the connection came through the sidecar, it also records what Envoy's
// stats filter would as reporter="destination".
func (d *DataPlane) serveApp(p *Pod, wp scenario.WorkloadPort, c net.Conn, info inboundInfo) {
	proto := wp.ProtocolName()
	if !scenario.IsHTTP(proto) {
		d.serveTCP(p, wp, c, info)
		return
	}
	br := bufio.NewReader(c)
	for {
		start := time.Now()
		req, err := http.ReadRequest(br)
		if err != nil {
			if !errors.Is(err, io.EOF) && !info.mtls && !info.captured {
				// Not HTTP (e.g. a TLS hello sent to a pod without a sidecar):
				// answer like a Go/HTTP server would, then close.
				_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
			}
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(req.Body, 1<<20))
		_ = req.Body.Close()
		code := http.StatusOK
		isProbe := req.URL.Path == wp.Readiness || req.URL.Path == wp.Liveness
		if !isProbe && p.ErrorRate > 0 && rand.Float64() < p.ErrorRate {
			code = p.ErrorStatus
		}
		body := fmt.Sprintf("%s %s\n", p.Name, http.StatusText(code))
		if info.authz != nil {
			// The HTTP RBAC filter's local reply (Envoy's
			// "RBAC: access denied"), before the app sees the request.
			if v, ok := info.authz.Request(info.authzInput(req)); ok && !d.authorized(p, v) {
				code, body = http.StatusForbidden, "RBAC: access denied"
			}
		}
		resp := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n", code, http.StatusText(code), len(body))
		if info.captured {
			// Envoy's answer carries the server's peer metadata back too.
			resp += peerMetadataHeader + ": " + encodePeer(p.peer) + "\r\n"
		}
		if req.Close {
			resp += "Connection: close\r\n"
		}
		_, werr := io.WriteString(c, resp+"\r\n"+body)
		if info.captured {
			src, ok := decodePeer(req.Header.Get(peerMetadataHeader))
			if !ok {
				src = unknownPeer
			}
			src.principal = unknown
			if info.mtls && info.principal != "" {
				src.principal = info.principal
			}
			dst := p.peer
			p.metrics.request("destination", src, dst, d.topo.serviceFor(p, wp.Port, req.Host),
				requestProtocol(proto), code, "-", info.csp(), float64(time.Since(start).Microseconds())/1000)
		}
		if werr != nil || req.Close {
			return
		}
	}
}

// serveTCP answers every line with "+PONG" (a redis-like line protocol).
func (d *DataPlane) serveTCP(p *Pod, wp scenario.WorkloadPort, c net.Conn, info inboundInfo) {
	br := bufio.NewReader(c)
	var sent, received int
	for {
		line, err := br.ReadString('\n')
		received += len(line)
		if err != nil {
			break
		}
		n, werr := io.WriteString(c, "+PONG\r\n")
		sent += n
		if werr != nil {
			break
		}
		if strings.HasPrefix(strings.ToUpper(line), "QUIT") {
			break
		}
	}
	if info.captured {
		src := unknownPeer
		if info.mtls && info.principal != "" {
			// Over mTLS, Istio's TCP metadata exchange identifies the client.
			if sp, ok := d.podBySPIFFE(info.principal); ok {
				src = sp
			}
			src.principal = info.principal
		}
		p.metrics.tcpConn("destination", src, p.peer, d.topo.serviceFor(p, wp.Port, ""), "-", info.csp(), sent, received)
	}
}
