package gates

import (
	"fmt"

	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// MinTCPBytes is the fewest bytes received in a gate window for the bytes
// gate to judge: a kilobyte, so a connection pool's keep-alives alone do not
// make a baseline.
const MinTCPBytes = 1024

// TCPGates returns the gates for raw TCP traffic into namespace ("" for the
// mesh): databases, caches and queues, which istio_requests_total never
// sees. Istio's stats filter reports TCP connections with their own
// metrics (https://istio.io/latest/docs/reference/config/metrics/#metrics):
//
//  1. inbound-connection-rate: connections the namespace's proxies accept
//     must stay at 0.8 of the baseline or more. A plaintext client cut off
//     by STRICT matches no filter chain, so its connections are closed
//     before the stats filter sees them: they vanish, as requests do.
//  2. inbound-tcp-bytes: bytes received by the namespace must stay at half
//     the baseline or more. Connection pools open few connections and move
//     many bytes (Istio reports bytes of open connections periodically),
//     so this sees a pooled client the connection rate cannot.
//  3. client-tcp-connection-failures: meshed clients' own reports of
//     connections toward the namespace that failed upstream (response flags
//     UF, URX or UC, as the request gate counts them): at most 0.01 of
//     their connections. A client whose DestinationRule still sends
//     plaintext fails every connection.
func TCPGates(namespace string, window plans.Duration) []plans.Gate {
	w := window.String()
	dst, src := istiometrics.Destination(namespace), istiometrics.SourceToward(namespace)
	rate := func(metric string, matchers ...string) string {
		return fmt.Sprintf("sum(rate(%s{%s}[%s]))", metric, istiometrics.Selector(matchers...), w)
	}
	increase := func(metric, sel string) string {
		return fmt.Sprintf("sum(increase(%s{%s}[%s]))", metric, sel, w)
	}
	return []plans.Gate{
		{
			Name:         "inbound-connection-rate",
			Query:        rate(istiometrics.TCPConnectionsOpened, dst),
			Comparison:   plans.GreaterOrEqual,
			Threshold:    0.8,
			Relative:     plans.BaselineTimes,
			SamplesQuery: increase(istiometrics.TCPConnectionsOpened, dst),
			MinSamples:   DefaultMinSamples,
		},
		{
			Name:         "inbound-tcp-bytes",
			Query:        rate(istiometrics.TCPReceivedBytes, dst),
			Comparison:   plans.GreaterOrEqual,
			Threshold:    0.5,
			Relative:     plans.BaselineTimes,
			SamplesQuery: increase(istiometrics.TCPReceivedBytes, dst),
			MinSamples:   MinTCPBytes,
		},
		{
			Name: "client-tcp-connection-failures",
			Query: fmt.Sprintf("(%s or vector(0)) / %s",
				rate(istiometrics.TCPConnectionsClosed, src, istiometrics.Re(istiometrics.LabelResponseFlags, ".*(UF|URX|UC).*")),
				rate(istiometrics.TCPConnectionsClosed, src)),
			Comparison:   plans.LessOrEqual,
			Threshold:    0.01,
			SamplesQuery: increase(istiometrics.TCPConnectionsClosed, src),
			MinSamples:   DefaultMinSamples,
		},
	}
}

// PlaintextConnections is PlaintextSources for TCP: the gate of a forced
// stage whose namespace accepts plaintext TCP connections today. STRICT
// closes them before any metric is recorded, so the rate falls to zero.
func PlaintextConnections(namespace string, window plans.Duration) plans.Gate {
	return plans.Gate{
		Name:       "plaintext-connection-rate",
		Query:      fmt.Sprintf("sum(rate(%s{%s}[%s]))", istiometrics.TCPConnectionsOpened, istiometrics.DestinationPlaintext(namespace), window.String()),
		Comparison: plans.GreaterOrEqual,
		Threshold:  0.8,
		Relative:   plans.BaselineTimes,
	}
}
