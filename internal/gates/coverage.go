package gates

import (
	"fmt"
	"strings"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Traffic is a kind of traffic a probe or a gate can judge.
type Traffic string

// Kinds of traffic. A gate of the user's own (no Istio metric the tool
// knows, or both) is AnyTraffic: it is trusted to judge whatever it reads.
const (
	HTTP       Traffic = "HTTP requests"
	TCP        Traffic = "TCP connections"
	AnyTraffic Traffic = ""
)

// TrafficOf is the kind of traffic gate g reads, from the Istio metrics
// its queries name.
func TrafficOf(g plans.Gate) Traffic {
	q := g.Query + " " + g.SamplesQuery
	http, tcp := strings.Contains(q, istiometrics.RequestsTotal), strings.Contains(q, "istio_tcp_")
	switch {
	case http && !tcp:
		return HTTP
	case tcp && !http:
		return TCP
	}
	return AnyTraffic
}

// ProbeTraffic is the kind of traffic probe p exercises.
func ProbeTraffic(p plans.Probe) Traffic {
	if p.Kind == plans.ProbeTCP {
		return TCP
	}
	return HTTP
}

// Carried lists the kinds of traffic the plan's evidence saw into the
// stage's namespace. TCP counts bytes too: a pooled connection opened
// before the window opens no new connection in it.
func Carried(ev plans.Evidence) []Traffic {
	var out []Traffic
	if ev.MTLSRequestRate+ev.PlaintextRequestRate > 0 {
		out = append(out, HTTP)
	}
	if ev.MTLSConnectionRate+ev.PlaintextConnectionRate+ev.MTLSByteRate+ev.PlaintextByteRate > 0 {
		out = append(out, TCP)
	}
	return out
}

// Unjudged says which kinds of traffic the stage carries (as its evidence
// saw them) that neither a probe of that kind nor a gate of that kind that
// can judge (judges) covers, one phrase each: nothing would look at them,
// and a soak would end "done" whatever happened to them.
//
// The planner asks it with estimates from the evidence (Estimate) and
// blocks the stage (UNVERIFIABLE); pre-flight asks it with the baselines it
// measured and refuses. One rule for both, so the plan never offers a stage
// that apply would refuse for this. Pre-flight also refuses when no gate at
// all can judge right now (Blind): that depends on the traffic at apply
// time, which no plan can promise.
func Unjudged(st *plans.Stage, judges func(plans.Gate) bool) []string {
	probed, judged := map[Traffic]bool{}, map[Traffic]bool{}
	for _, p := range st.Probes {
		probed[ProbeTraffic(p)] = true
	}
	for _, g := range st.Gates {
		if judges(g) {
			judged[TrafficOf(g)] = true
		}
	}
	var out []string
	for _, k := range Carried(st.Evidence) {
		if !probed[k] && !judged[k] && !judged[AnyTraffic] {
			out = append(out, fmt.Sprintf("its %s: no probe exercises them and no gate can judge them", k))
		}
	}
	return out
}

// Blind says, for a stage whose evidence saw traffic, that no gate can
// judge any of it: probes show the mode took effect, only gates show the
// clients still work, and a soak of blind gates ends "done" whatever
// happened. "" when some gate judges or the plan saw no traffic.
func Blind(st *plans.Stage, judges func(plans.Gate) bool) string {
	if len(Carried(st.Evidence)) == 0 {
		return ""
	}
	for _, g := range st.Gates {
		if judges(g) {
			return ""
		}
	}
	return "its health: no gate can judge any of its traffic"
}

// Estimate is the planner's judges for Unjudged: whether gate g will have
// enough samples in its window, going by the evidence's average rates over
// the plan's window (a gate of the user's own is trusted to judge).
func Estimate(ev plans.Evidence, window plans.Duration) func(plans.Gate) bool {
	secs := window.Std().Seconds()
	return func(g plans.Gate) bool {
		var rate float64
		switch TrafficOf(g) {
		case AnyTraffic:
			return true
		case HTTP:
			rate = ev.MTLSRequestRate + ev.PlaintextRequestRate
		case TCP:
			rate = ev.MTLSConnectionRate + ev.PlaintextConnectionRate
			if strings.Contains(g.SamplesQuery, istiometrics.TCPReceivedBytes) {
				rate = ev.MTLSByteRate + ev.PlaintextByteRate
			}
		}
		if g.MinSamples <= 0 {
			return rate > 0
		}
		return rate*secs >= float64(g.MinSamples)
	}
}
