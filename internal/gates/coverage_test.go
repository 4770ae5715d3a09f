package gates

import (
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

func TestTrafficOf(t *testing.T) {
	w := plans.Duration(time.Minute)
	for _, g := range Defaults("cart", w) {
		if TrafficOf(g) != HTTP {
			t.Errorf("%s reads %q, want HTTP", g.Name, TrafficOf(g))
		}
	}
	for _, g := range append(TCPGates("cart", w), PlaintextConnections("cart", w)) {
		if TrafficOf(g) != TCP {
			t.Errorf("%s reads %q, want TCP", g.Name, TrafficOf(g))
		}
	}
	if k := TrafficOf(plans.Gate{Query: `sum(rate(app_errors_total[1m]))`}); k != AnyTraffic {
		t.Errorf("a gate of the user's own reads %q, want any", k)
	}
}

// TestUnjudged: the rule the planner blocks with and pre-flight refuses
// with (each kind of traffic the evidence saw needs a probe or a judging
// gate of its kind), and pre-flight's own (some gate must judge at all).
func TestUnjudged(t *testing.T) {
	w := plans.Duration(time.Minute)
	http, tcp := Defaults("cart", w), TCPGates("cart", w)
	tcpProbe := plans.Probe{Name: "redis", Kind: plans.ProbeTCP, URL: "tcp://10.0.0.1:6379", Expect: plans.Expect{Refused: true}}
	httpProbe := plans.Probe{Name: "web", Kind: plans.ProbeHTTP, URL: "http://10.0.0.1:8080/", Expect: plans.Expect{Refused: true}}
	own := plans.Gate{Name: "app-errors", Query: "sum(rate(app_errors_total[1m])) or vector(0)", Comparison: plans.LessOrEqual, Threshold: 1}
	all := func(plans.Gate) bool { return true }
	none := func(plans.Gate) bool { return false }
	only := func(k Traffic) func(plans.Gate) bool { return func(g plans.Gate) bool { return TrafficOf(g) == k } }
	httpEv := plans.Evidence{MTLSRequestRate: 5}
	tcpEv := plans.Evidence{MTLSConnectionRate: 2}
	pooled := plans.Evidence{MTLSByteRate: 300} // one long-lived connection: bytes, no new connections
	both := plans.Evidence{MTLSRequestRate: 5, MTLSConnectionRate: 2}
	tests := []struct {
		name   string
		ev     plans.Evidence
		probes []plans.Probe
		gates  []plans.Gate
		judges func(plans.Gate) bool
		want   []string // substrings, one per gap
	}{
		{"no traffic: nothing to judge", plans.Evidence{}, nil, http, none, nil},
		{"HTTP judged by its gates", httpEv, nil, http, all, nil},
		// The defect: every default gate counts requests; a TCP namespace
		// was verified by nothing and recorded done.
		{"TCP with request gates only", tcpEv, nil, http, none, []string{"its TCP connections", "its health"}},
		{"TCP judged by TCP gates", tcpEv, nil, append(http, tcp...), only(TCP), nil},
		{"pooled TCP is TCP traffic too", pooled, nil, http, none, []string{"its TCP connections", "its health"}},
		{"TCP probed, HTTP gates judge", both, []plans.Probe{tcpProbe}, append(http, tcp...), only(HTTP), nil},
		{"TCP probed, no gate judges anything", tcpEv, []plans.Probe{tcpProbe}, append(http, tcp...), none, []string{"its health"}},
		{"an HTTP probe does not cover TCP", both, []plans.Probe{httpProbe}, append(http, tcp...), only(HTTP), []string{"its TCP connections"}},
		{"a gate of the user's own covers any traffic", both, nil, append(http, own), only(AnyTraffic), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &plans.Stage{Evidence: tt.ev, Probes: tt.probes, Gates: tt.gates}
			got := Unjudged(st, tt.judges)
			if b := Blind(st, tt.judges); b != "" {
				got = append(got, b)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("gaps %q, want %d matching %q", got, len(tt.want), tt.want)
			}
			for i := range got {
				if !strings.Contains(got[i], tt.want[i]) {
					t.Errorf("gap %d = %q, want %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

// TestEstimate: the planner's guess of whether a gate will have enough
// samples in its window errs towards "cannot judge".
func TestEstimate(t *testing.T) {
	w := plans.Duration(time.Minute)
	byName := map[string]plans.Gate{}
	for _, g := range append(append(Defaults("cart", w), TCPGates("cart", w)...), PlaintextConnections("cart", w)) {
		byName[g.Name] = g
	}
	tests := []struct {
		ev   plans.Evidence
		gate string
		want bool
	}{
		{plans.Evidence{MTLSRequestRate: 1}, "inbound-request-rate", true},       // 60 in a minute
		{plans.Evidence{MTLSRequestRate: 0.1}, "inbound-request-rate", false},    // 6
		{plans.Evidence{MTLSConnectionRate: 1}, "inbound-connection-rate", true}, // 60
		{plans.Evidence{MTLSConnectionRate: 0.01}, "inbound-connection-rate", false},
		{plans.Evidence{MTLSByteRate: 100}, "inbound-tcp-bytes", true},       // 6 KB
		{plans.Evidence{MTLSByteRate: 10}, "inbound-tcp-bytes", false},       // 600 B
		{plans.Evidence{MTLSConnectionRate: 50}, "inbound-tcp-bytes", false}, // connections say nothing of bytes
		{plans.Evidence{PlaintextConnectionRate: 0.01}, "plaintext-connection-rate", true},
		{plans.Evidence{MTLSRequestRate: 5}, "inbound-connection-rate", false},
	}
	for _, tt := range tests {
		if got := Estimate(tt.ev, w)(byName[tt.gate]); got != tt.want {
			t.Errorf("%s with %+v: %v, want %v", tt.gate, tt.ev, got, tt.want)
		}
	}
}
