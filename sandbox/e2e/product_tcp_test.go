package e2e

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
)

// TestE2ETCPIsVerified: raw TCP, which no request metric sees. A forced
// stage on a cache that a sidecar-less worker reaches over plaintext TCP
// once ended "done" with every gate Inconclusive while the worker was cut
// off; it must be rolled back by a TCP gate. A stage on a TCP-only broker
// used by meshed clients must verify to done through its tcp probe and TCP
// gates, and STRICT must really refuse plaintext there.
func TestE2ETCPIsVerified(t *testing.T) {
	// With the real istiod: apply waits on its sync status for the
	// simulated proxies' acknowledgements before probing.
	s := startScenario(t, "trap-tcp-sidecarless-client.yaml", nil, func(o *sandbox.Options) { o.Istiod = true })
	p := &product{t: t, bin: buildProduct(t), s: s}
	ctx := context.Background()
	eventuallyPositive(t, s, `sum(istio_tcp_connections_opened_total{reporter="destination"})`, 30*time.Second)
	time.Sleep(12 * time.Second) // a gate window of traffic
	plan, planPath := p.plan(t.TempDir())
	createStateNamespace(t, s)

	tcpProbe := func(st plans.Stage) *plans.Probe {
		for i := range st.Probes {
			if st.Probes[i].Kind == plans.ProbeTCP && st.Probes[i].Expect.Refused {
				return &st.Probes[i]
			}
		}
		return nil
	}
	hasGate := func(st plans.Stage, name string) bool {
		for _, g := range st.Gates {
			if g.Name == name {
				return true
			}
		}
		return false
	}

	t.Run("meshed TCP clients only: done, and plaintext is refused", func(t *testing.T) {
		p.t = t
		st, ok := stageOf(plan, "queue")
		if !ok || st.Status != plans.StatusReady {
			t.Fatalf("queue stage %+v (risks %+v, probes %+v, evidence %+v), want ready", st.Status, st.Risks, st.Probes, st.Evidence)
		}
		if tcpProbe(st) == nil || !hasGate(st, "inbound-connection-rate") || !hasGate(st, "inbound-tcp-bytes") {
			t.Fatalf("queue stage probes %+v gates %+v, want a tcp refusal probe and the TCP gates", st.Probes, st.Gates)
		}
		s.ResetFlowStats()
		r := p.run(ctx, applyArgs(planPath, st.Number, 12*time.Second, "--istiod-url", s.IstiodURL())...)
		if r.code != exitDone || !strings.Contains(r.stdout, ": done") {
			t.Fatalf("apply queue: %s", r)
		}
		// Measured, not assumed: every proxy of queue (one broker pod)
		// acknowledged the change before the probes.
		prop := firstLine(r.stdout, "propagation:")
		if !strings.Contains(prop, "1 proxies acknowledged the change") {
			t.Errorf("propagation not measured from istiod: %q\n%s", prop, r.stdout)
		}
		t.Logf("MEASURE %s", prop)
		if !strings.Contains(r.stdout, "inbound-connection-rate") {
			t.Errorf("the output does not show the TCP gates' verdicts:\n%s", r.stdout)
		}
		if out := s.ProbePod(ctx, "queue", "broker", 5672, false); out == dataplane.OutcomeSuccess {
			t.Errorf("broker:5672 accepts plaintext TCP after its stage")
		}
		if f := failures(s); len(f) > 0 {
			t.Errorf("flows failed during the stage (ground truth): %v", f)
		}
	})

	t.Run("forced stage cutting off a sidecar-less TCP client is rolled back", func(t *testing.T) {
		p.t = t
		st, ok := stageOf(plan, "cache")
		if !ok || st.Status != plans.StatusBlocked {
			t.Fatalf("cache stage %+v (risks %v), want blocked by the worker's plaintext", st.Status, codes(st))
		}
		if tcpProbe(st) == nil || !hasGate(st, "plaintext-connection-rate") {
			t.Fatalf("cache stage probes %+v gates %+v, want a tcp probe and the plaintext connection gate", st.Probes, st.Gates)
		}
		old := policies(t, s, "cache")
		s.ResetFlowStats()
		start := time.Now()
		r := p.run(ctx, applyArgs(planPath, st.Number, 40*time.Second, "--force", "--reason", "e2e: prove TCP is judged")...)
		if r.code != exitRolledBack {
			t.Fatalf("forced cache stage: want exit 3 (rolled back), got %s", r)
		}
		reason := firstLine(r.stdout, "reason:")
		if !strings.Contains(reason, "connection-rate") && !strings.Contains(reason, "tcp-bytes") {
			t.Errorf("the rollback reason does not name a TCP gate: %q", reason)
		}
		if got := policies(t, s, "cache"); !reflect.DeepEqual(got, old) {
			t.Errorf("cache PeerAuthentications after the rollback:\n got %v\nwant %v", got, old)
		}
		// Ground truth: the worker was really cut off, and is served again.
		if f := failures(s)["worker-redis"]; len(f) == 0 {
			t.Errorf("the worker's flow never failed: the stage did not cut it off, so the test proves nothing (failures %v)", failures(s))
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := s.WaitFlow(wctx, "worker-redis", func(f sandbox.FlowStats) bool {
			return f.LastSuccess.After(start) && f.LastSuccess.After(time.Now().Add(-3*time.Second))
		}); err != nil {
			t.Errorf("worker-redis did not recover after the rollback: %v", err)
		}
	})
}
