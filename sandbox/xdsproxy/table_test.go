package xdsproxy

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

// The chains istiod sent prod/api in the sandbox (PERMISSIVE on 8080,
// STRICT on 9090; trimmed from /debug/config_dump).
func permissiveAndStrict() []chain {
	return []chain{
		{name: "virtualInbound-blackhole", port: 15006},
		{name: "virtualInbound-catchall-http", transport: "tls", alpn: []string{"istio-http/1.0", "istio-http/1.1", "istio-h2"}, terminates: true},
		{name: "virtualInbound-catchall-http", transport: "raw_buffer", alpn: []string{"http/1.1", "h2c"}},
		{name: "virtualInbound", transport: "tls", alpn: []string{"istio-peer-exchange", "istio"}, terminates: true},
		{name: "virtualInbound", transport: "raw_buffer"},
		{name: "virtualInbound", transport: "tls"},
		{name: "0.0.0.0_8080", port: 8080, transport: "tls", alpn: []string{"istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"}, terminates: true},
		{name: "0.0.0.0_8080", port: 8080, transport: "raw_buffer"},
		{name: "0.0.0.0_9090", port: 9090, transport: "tls", terminates: true},
	}
}

// TestInboundMatchesFilterChainsAsEnvoy: Envoy's order of criteria, the
// most specific match at each step, and no falling back to a port-less
// chain once the port's chains have been chosen.
func TestInboundMatchesFilterChainsAsEnvoy(t *testing.T) {
	tbl := &Table{inbound: &inboundListener{chains: permissiveAndStrict(), httpInspector: true}}
	ip := netip.MustParseAddr("127.1.0.1")
	istio := []string{"istio-peer-exchange", "istio"}
	for _, tc := range []struct {
		name      string
		port      uint32
		tls       bool
		alpn      []string
		http      bool
		accept    bool
		terminate bool
		chain     string
	}{
		{"PERMISSIVE port, plaintext", 8080, false, nil, true, true, false, "0.0.0.0_8080"},
		{"PERMISSIVE port, istio mTLS", 8080, true, istio, false, true, true, "0.0.0.0_8080"},
		{"PERMISSIVE port, TLS without istio ALPN: the port's chains all fail, no fallback", 8080, true, []string{"h2"}, false, false, false, ""},
		{"STRICT port, plaintext", 9090, false, nil, true, false, false, ""},
		{"STRICT port, any TLS", 9090, true, []string{"h2"}, false, true, true, "0.0.0.0_9090"},
		{"no Service port, plaintext HTTP: catch-all HTTP chain", 7070, false, nil, true, true, false, "virtualInbound-catchall-http"},
		{"no Service port, plaintext TCP", 7070, false, nil, false, true, false, "virtualInbound"},
		{"no Service port, istio mTLS", 7070, true, istio, false, true, true, "virtualInbound"},
		{"no Service port, other TLS passes through", 7070, true, []string{"h2"}, false, true, false, "virtualInbound"},
		{"the listener's own port", 15006, false, nil, false, true, false, "virtualInbound-blackhole"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := tbl.Inbound(ip, tc.port, tc.tls, tc.alpn, tc.http)
			if err != nil {
				t.Fatal(err)
			}
			if v.Accept != tc.accept || v.Terminate != tc.terminate || v.Chain != tc.chain {
				t.Errorf("got %+v, want accept=%v terminate=%v chain=%q", v, tc.accept, tc.terminate, tc.chain)
			}
		})
	}
}

func TestInboundWithoutPushHasNoDecision(t *testing.T) {
	var tbl *Table
	if _, err := tbl.Inbound(netip.MustParseAddr("127.1.0.1"), 8080, false, nil, false); err == nil {
		t.Fatal("a proxy without a push decided")
	}
}

// TestOutboundPicksTheTransportSocketAsEnvoy: auto mTLS (the tlsMode-istio
// match on endpoint metadata, else the empty match: plaintext), a cluster
// transport_socket (DestinationRule ISTIO_MUTUAL), none (DISABLE), and an
// endpoint istiod did not send.
func TestOutboundPicksTheTransportSocketAsEnvoy(t *testing.T) {
	istioMD, _ := structpb.NewStruct(map[string]any{"tlsMode": "istio"})
	matchIstio, _ := structpb.NewStruct(map[string]any{"tlsMode": "istio"})
	mtls := &socket{name: tlsSocket, tls: true, alpn: []string{"istio-peer-exchange", "istio"}, istioCert: true}
	auto := &outCluster{name: "outbound|8080||api.prod.svc.cluster.local", eds: true, edsName: "outbound|8080||api.prod.svc.cluster.local",
		matches: []socketMatch{{name: "tlsMode-istio", match: matchIstio, socket: mtls}, {name: "tlsMode-disabled", match: &structpb.Struct{}, socket: &socket{name: rawBufferSocket}}}}
	dr := &outCluster{name: "outbound|80||legacy.x.svc.cluster.local", eds: true, edsName: "outbound|80||legacy.x.svc.cluster.local", socket: mtls}
	plain := &outCluster{name: "outbound|90||plain.x.svc.cluster.local", eds: true, edsName: "outbound|90||plain.x.svc.cluster.local"}
	tbl := &Table{
		clusters: map[string]*outCluster{auto.name: auto, dr.name: dr, plain.name: plain},
		endpoints: map[string]map[string]*structpb.Struct{
			auto.edsName:  {"127.1.0.1:8080": istioMD, "127.1.0.2:8080": nil},
			dr.edsName:    {"127.1.0.3:80": nil},
			plain.edsName: {"127.1.0.4:90": istioMD},
		},
	}
	for _, tc := range []struct {
		cluster, ep string
		mtls        bool
		socket      string
		err         bool
	}{
		{auto.name, "127.1.0.1:8080", true, "tlsMode-istio", false},
		{auto.name, "127.1.0.2:8080", false, "tlsMode-disabled", false},
		{dr.name, "127.1.0.3:80", true, "transport_socket", false},
		{plain.name, "127.1.0.4:90", false, "plaintext", false},
		{auto.name, "127.1.0.9:8080", false, "", true},
		{"outbound|1||none.x.svc.cluster.local", "127.1.0.1:1", false, "", true},
	} {
		ap := netip.MustParseAddrPort(tc.ep)
		v, err := tbl.Outbound(tc.cluster, ap.Addr(), uint32(ap.Port()))
		if (err != nil) != tc.err {
			t.Errorf("%s %s: err = %v, want error %v", tc.cluster, tc.ep, err, tc.err)
			continue
		}
		if v.MTLS != tc.mtls || v.Socket != tc.socket {
			t.Errorf("%s %s: %+v, want mtls=%v socket=%q", tc.cluster, tc.ep, v, tc.mtls, tc.socket)
		}
	}
}
