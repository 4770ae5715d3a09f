package dataplane

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// fakeEnforcer answers every inbound connection and outbound request as
// its fields say, and records what it was asked.
type fakeEnforcer struct {
	inbound  InboundVerdict
	outbound OutboundVerdict
	err      error
	mu       sync.Mutex
	asked    []InboundConn
}

func (f *fakeEnforcer) Manages(PodRef) bool { return true }
func (f *fakeEnforcer) Inbound(_ PodRef, _ int, c InboundConn) (InboundVerdict, error) {
	f.mu.Lock()
	f.asked = append(f.asked, c)
	f.mu.Unlock()
	return f.inbound, f.err
}
func (f *fakeEnforcer) Outbound(PodRef, OutboundTarget) (OutboundVerdict, error) {
	return f.outbound, f.err
}

const enforcerScenario = `
name: enforcer
namespaces:
  - {name: prod, injection: true}
  - {name: other, injection: true}
workloads:
  - {name: api, namespace: prod, ports: [{name: http, port: 8080}]}
  - {name: client, namespace: other}
services:
  - {name: api, namespace: prod, ports: [{name: http, port: 8080}]}
`

func startEnforced(t *testing.T, e Enforcer) *DataPlane {
	t.Helper()
	scn, err := scenario.Parse([]byte(enforcerScenario))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Scenario: scn})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	d.SetEnforcer(e)
	return d
}

// TestEnforcerWinsAndDisagreementIsReported: the data plane's own rules
// (no policies: PERMISSIVE, auto mTLS) would accept plaintext and send
// mTLS; an Enforcer that resets inbound and sends plaintext outbound is
// obeyed, and both disagreements are reported with pod, port, what istiod
// said and what our rule said.
func TestEnforcerWinsAndDisagreementIsReported(t *testing.T) {
	f := &fakeEnforcer{inbound: InboundVerdict{Accept: false}, outbound: OutboundVerdict{MTLS: false, Socket: "tlsMode-disabled"}}
	d := startEnforced(t, f)
	ctx := context.Background()
	if out := d.ProbePod(ctx, "prod", "api", 8080, false); out != OutcomeReset {
		t.Fatalf("plaintext with the Enforcer resetting: %s, want reset", out)
	}
	// Outbound: the client sends plaintext as told, which the server
	// (same Enforcer) then resets: Envoy reports 503 UC.
	if out := d.Probe(ctx, "other/client", "api.prod:8080", TLSAuto); out != StatusOutcome(503) {
		t.Fatalf("client -> api: %s, want status_503", out)
	}
	dis := d.Disagreements()
	var in, out *Disagreement
	for i := range dis {
		switch dis[i].Direction {
		case "inbound":
			in = &dis[i]
		case "outbound":
			out = &dis[i]
		}
	}
	if in == nil || out == nil {
		t.Fatalf("disagreements = %v, want one inbound and one outbound", dis)
	}
	if !strings.HasPrefix(in.Pod, "prod/api-") || in.Port != 8080 || in.Peer != "plaintext" ||
		!strings.HasPrefix(in.Istiod, "reset") || in.Ours != "accept plaintext (PERMISSIVE)" {
		t.Errorf("inbound disagreement: %+v", *in)
	}
	if !strings.HasPrefix(out.Pod, "other/client-") || out.Port != 8080 || !strings.Contains(out.Peer, "api.prod.svc.cluster.local:8080") ||
		out.Istiod != "plaintext (tlsMode-disabled)" || out.Ours != "mTLS" {
		t.Errorf("outbound disagreement: %+v", *out)
	}
	t.Logf("reported: %s; %s", in, out)
}

// TestEnforcerAgreeingRecordsNothing: the same decisions as our rules,
// and the ALPN the mTLS client offered reaches the Enforcer.
func TestEnforcerAgreeingRecordsNothing(t *testing.T) {
	f := &fakeEnforcer{inbound: InboundVerdict{Accept: true, Terminate: true, Chain: "0.0.0.0_8080"}, outbound: OutboundVerdict{MTLS: true, ALPN: istioALPN, Socket: "tlsMode-istio"}}
	d := startEnforced(t, f)
	ctx := context.Background()
	if out := d.ProbePod(ctx, "prod", "api", 8080, true); out != OutcomeSuccess {
		t.Fatalf("mTLS probe: %s", out)
	}
	if out := d.Probe(ctx, "other/client", "api.prod:8080", TLSAuto); out != OutcomeSuccess {
		t.Fatalf("client -> api: %s", out)
	}
	if dis := d.Disagreements(); len(dis) != 0 {
		t.Errorf("disagreements = %v, want none", dis)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.asked) == 0 || strings.Join(f.asked[0].ALPN, ",") != "istio-peer-exchange,istio" {
		t.Errorf("the Enforcer saw %v, want a TLS connection offering istio-peer-exchange,istio", f.asked)
	}
}

// TestNoDecisionFailsClosed: before istiod's first push the Enforcer has
// no decision; the sidecar resets inbound and refuses outbound (503 NC)
// rather than falling back to its own rules.
func TestNoDecisionFailsClosed(t *testing.T) {
	f := &fakeEnforcer{err: errNoPushYet}
	d := startEnforced(t, f)
	ctx := context.Background()
	if out := d.ProbePod(ctx, "prod", "api", 8080, true); out == OutcomeSuccess {
		t.Errorf("mTLS probe with no decision: %s, want a failure", out)
	}
	if out := d.Probe(ctx, "other/client", "api.prod:8080", TLSAuto); out != StatusOutcome(503) {
		t.Errorf("client -> api with no decision: %s, want status_503", out)
	}
	if dis := d.Disagreements(); len(dis) != 0 {
		t.Errorf("no decision is not a disagreement: %v", dis)
	}
}

var errNoPushYet = errors.New("no push yet")
