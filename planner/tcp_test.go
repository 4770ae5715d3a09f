package planner

import (
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/gates"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry/telemetrytest"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// tcpFlow adds raw TCP traffic: connections and bytes per second over the
// window, as the destination's proxy reports them.
func (w *world) tcpFlow(srcNS, src, dstNS, dst, csp string, connsPerSecond, bytesPerSecond float64) *world {
	step := time.Hour.Seconds()
	if connsPerSecond > 0 {
		w.flows = append(w.flows, telemetrytest.Flow{DstNS: dstNS, DstWorkload: dst, SrcNS: srcNS, SrcWorkload: src, CSP: csp, Kind: "connections", PerStep: connsPerSecond * step})
	}
	w.flows = append(w.flows, telemetrytest.Flow{DstNS: dstNS, DstWorkload: dst, SrcNS: srcNS, SrcWorkload: src, CSP: csp, Kind: "bytes", PerStep: bytesPerSecond * step})
	return w
}

// TestTCPNamespaces: a namespace serving raw TCP (a cache, a database) gets
// a tcp probe and the TCP gates; one that nothing in its stage could judge
// is blocked up front, so the plan never offers what apply would refuse
// or, worse, record done having verified nothing.
func TestTCPNamespaces(t *testing.T) {
	redis := func(sidecar bool) *world {
		return newWorld().
			ns("cache", true).workload("cache", "redis", sidecar, []int32{6379}).service("cache", "redis", "", 6379, 6379, "tcp-redis").
			ns("web", true).workload("web", "web", true, []int32{8080})
	}
	tests := []struct {
		name        string
		world       *world
		wantProbe   bool
		wantBlocked bool
	}{
		// Busy: new connections every second, and bytes.
		{"busy redis", redis(true).tcpFlow("web", "web", "cache", "redis", "mutual_tls", 2, 500), true, false},
		// A pool: one connection opened long ago, bytes all week. Only the
		// bytes say there is a client; the bytes gate judges it.
		{"pooled redis", redis(true).tcpFlow("web", "web", "cache", "redis", "mutual_tls", 0, 500), true, false},
		// Nothing to probe (the pods run without sidecar) is SIDECAR_MISSING
		// anyway; with a trickle of connections and bytes no gate would
		// have samples either: UNVERIFIABLE.
		{"a trickle nothing can judge", redis(false).ns("batch", true).workload("batch", "job", true, nil).
			tcpFlow("batch", "job", "cache", "redis", "mutual_tls", 0.001, 1), false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := stageOf(tt.world.mustBuild(t), "cache")
			var probe *plans.Probe
			for i := range st.Probes {
				if st.Probes[i].Kind == plans.ProbeTCP {
					probe = &st.Probes[i]
				}
			}
			if (probe != nil) != tt.wantProbe {
				t.Fatalf("tcp probe = %+v, want one: %v", probe, tt.wantProbe)
			}
			if probe != nil && (!probe.Expect.Refused || !strings.HasPrefix(probe.URL, "tcp://") || !strings.HasSuffix(probe.URL, ":6379")) {
				t.Errorf("tcp probe = %+v, want a refusal on the pod's redis port", probe)
			}
			names := map[string]bool{}
			for _, g := range st.Gates {
				names[g.Name] = true
			}
			for _, g := range gates.TCPGates("cache", plans.Duration(time.Minute)) {
				if !names[g.Name] {
					t.Errorf("gate %s missing: gates %v", g.Name, names)
				}
			}
			r := hasRisk(st, CodeUnverifiable)
			if (r != nil) != tt.wantBlocked || tt.wantBlocked && (st.Status != plans.StatusBlocked || r.Severity != plans.SeverityBlock || r.Fix == "") {
				t.Fatalf("status %s, UNVERIFIABLE = %+v, want blocked: %v (risks %+v)", st.Status, r, tt.wantBlocked, st.Risks)
			}
			if r != nil && !strings.Contains(r.Message, "its TCP connections") {
				t.Errorf("message %q does not say what cannot be judged", r.Message)
			}
		})
	}
}

// TestForcedPlaintextTCPGetsItsGate: a namespace taking plaintext TCP
// today (blocked; someone may force it) gets the gate that sees those
// clients vanish.
func TestForcedPlaintextTCPGetsItsGate(t *testing.T) {
	w := newWorld().
		ns("cache", true).workload("cache", "redis", true, []int32{6379}).service("cache", "redis", "", 6379, 6379, "tcp-redis").
		tcpFlow("unknown", "unknown", "cache", "redis", "none", 1, 100)
	st := stageOf(w.mustBuild(t), "cache")
	if st.Status != plans.StatusBlocked || hasRisk(st, CodePlaintextObserved) == nil {
		t.Fatalf("status %s risks %+v, want blocked by plaintext", st.Status, st.Risks)
	}
	for _, g := range st.Gates {
		if g.Name == "plaintext-connection-rate" && g.Relative == plans.BaselineTimes {
			return
		}
	}
	t.Errorf("no plaintext-connection-rate gate in %+v", st.Gates)
}
