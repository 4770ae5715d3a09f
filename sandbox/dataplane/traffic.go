package dataplane

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// FlowStats is the ground truth for one flow: every attempt's outcome as the
// client's application saw it.
type FlowStats struct {
	Name        string           `json:"name"`
	Source      string           `json:"source"`
	Destination string           `json:"destination"`
	Running     bool             `json:"running"`
	Total       int64            `json:"total"`
	Outcomes    map[string]int64 `json:"outcomes"`
	LastOutcome string           `json:"lastOutcome,omitempty"`
	LastAt      time.Time        `json:"lastAt,omitzero"`
	LastSuccess time.Time        `json:"lastSuccess,omitzero"`
	LastFailure time.Time        `json:"lastFailure,omitzero"`
}

// Successes is the number of successful attempts.
func (f FlowStats) Successes() int64 { return f.Outcomes[OutcomeSuccess] }

// Failures is the number of failed attempts.
func (f FlowStats) Failures() int64 { return f.Total - f.Outcomes[OutcomeSuccess] }

type flowRunner struct {
	flow    scenario.Flow
	source  string
	dest    string
	paused  atomic.Bool
	running atomic.Bool

	mu    sync.Mutex
	stats FlowStats
}

func (fr *flowRunner) record(outcome string) {
	now := time.Now()
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.stats.Total++
	fr.stats.Outcomes[outcome]++
	fr.stats.LastOutcome = outcome
	fr.stats.LastAt = now
	if outcome == OutcomeSuccess {
		fr.stats.LastSuccess = now
	} else {
		fr.stats.LastFailure = now
	}
}

// StartTraffic starts one goroutine per flow. Each sends requests at the
// flow's rate (±20% jitter) after startAfter, until stopAfter or Close.
func (d *DataPlane) StartTraffic() {
	for _, f := range d.scn.Flows {
		fr := &flowRunner{flow: f, source: f.From, dest: f.To}
		fr.stats = FlowStats{Name: f.Name, Source: f.From, Destination: f.To, Outcomes: map[string]int64{}}
		d.mu.Lock()
		d.flows[f.Name] = fr
		d.flowOrder = append(d.flowOrder, f.Name)
		d.mu.Unlock()
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.runFlow(fr) }()
	}
}

func (d *DataPlane) runFlow(fr *flowRunner) {
	ctx := d.ctx
	if fr.flow.StopAfter.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, fr.flow.StopAfter.Duration)
		defer cancel()
	}
	if w := fr.flow.StartAfter.Duration; w > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(w):
		}
	}
	fr.running.Store(true)
	defer fr.running.Store(false)
	rate := fr.flow.Rate
	if rate == 0 {
		rate = 1
	}
	interval := time.Duration(float64(time.Second) / rate)
	// At most a couple of seconds' worth of attempts in flight.
	sem := make(chan struct{}, max(4, int(rate*2)))
	var inflight sync.WaitGroup
	defer inflight.Wait()
	for {
		jitter := time.Duration((rand.Float64()*0.4 - 0.2) * float64(interval))
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval + jitter):
		}
		if fr.paused.Load() {
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // the previous attempts are still timing out
		}
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-sem }()
			out := d.request(d.ctx, fr.flow.From, fr.flow.To, fr.flow.Path, TLSAuto)
			if d.closed.Load() {
				return
			}
			fr.record(out)
			d.flowTotal.WithLabelValues(fr.flow.Name, fr.source, fr.dest, out).Inc()
		}()
	}
}

// request performs one attempt from a client ("external", "ns/workload" or
// a unique workload name) to a destination ("svc.ns:port" or a gateway host)
// and returns the outcome the client's app sees.
func (d *DataPlane) request(ctx context.Context, from, to, path string, choice TLSChoice) string {
	var client *Pod
	fromIP := d.externalIP
	if from != scenario.External {
		w, err := d.scn.FindWorkload(from)
		if err != nil {
			return OutcomeError
		}
		pods := d.topo.byWL[w.Namespace+"/"+w.Name]
		if len(pods) == 0 {
			return OutcomeError
		}
		client = pods[rand.IntN(len(pods))]
		fromIP = client.IP
	}
	if _, ok := d.scn.GatewayRoute(to); ok {
		gw := d.topo.service(GatewayName, GatewayNamespace)
		sp, _ := gw.port(GatewayServicePort)
		return d.plainRequest(ctx, fromIP, gw, sp, to, path).outcome
	}
	ref, err := scenario.ParseServiceRef(to)
	if err != nil {
		return OutcomeError
	}
	svc := d.topo.service(ref.Service, ref.Namespace)
	if svc == nil {
		return OutcomeError
	}
	sp, ok := svc.port(ref.Port)
	if !ok {
		return OutcomeError
	}
	if client != nil && client.Sidecar {
		return d.meshRequest(ctx, client, svc, sp, path, choice).outcome
	}
	host := fmt.Sprintf("%s.%s:%d", svc.Name, svc.Namespace, sp.Port)
	return d.plainRequest(ctx, fromIP, svc, sp, host, path).outcome
}

// Probe performs one request like a flow would, with an optional override
// of the client sidecar's TLS choice, and returns the outcome.
func (d *DataPlane) Probe(ctx context.Context, from, to string, choice TLSChoice) string {
	return d.request(ctx, from, to, "/", choice)
}

// ProbePod dials one container port of the first pod of workload ns/name
// directly: plaintext from outside the mesh (mtls=false), or mTLS with the
// identity of a meshed client (spiffe://cluster.local/ns/sandbox/sa/prober).
// It bypasses Services and DestinationRules: a precise tool for tests.
func (d *DataPlane) ProbePod(ctx context.Context, ns, workload string, port int, mtls bool) string {
	pods := d.topo.byWL[ns+"/"+workload]
	if len(pods) == 0 {
		return OutcomeError
	}
	p := pods[0]
	wp, ok := p.port(port)
	if !ok {
		return OutcomeError
	}
	var cfg *tls.Config
	if mtls {
		c, err := d.ca.clientConfig(SPIFFEID("sandbox", "prober"))
		if err != nil {
			return OutcomeError
		}
		cfg = c
	}
	return d.rawRequest(ctx, d.externalIP, net.JoinHostPort(p.IP, strconv.Itoa(port)), cfg, wp.ProtocolName(), p.Name, "/", "").outcome
}

// Flows returns a copy of the ground truth of every flow.
func (d *DataPlane) Flows() map[string]FlowStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]FlowStats, len(d.flows))
	for name, fr := range d.flows {
		fr.mu.Lock()
		s := fr.stats
		s.Outcomes = make(map[string]int64, len(fr.stats.Outcomes))
		for k, v := range fr.stats.Outcomes {
			s.Outcomes[k] = v
		}
		fr.mu.Unlock()
		s.Running = fr.running.Load() && !fr.paused.Load()
		out[name] = s
	}
	return out
}

// ResetFlowStats zeroes the Go-side counts (the Prometheus counters keep
// counting, as counters must).
func (d *DataPlane) ResetFlowStats() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, fr := range d.flows {
		fr.mu.Lock()
		fr.stats = FlowStats{Name: fr.stats.Name, Source: fr.source, Destination: fr.dest, Outcomes: map[string]int64{}}
		fr.mu.Unlock()
	}
}

// SetFlowPaused pauses or resumes a flow at run time.
func (d *DataPlane) SetFlowPaused(name string, paused bool) error {
	d.mu.Lock()
	fr, ok := d.flows[name]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("no flow %q", name)
	}
	fr.paused.Store(paused)
	return nil
}

// Handler serves /flows (JSON ground truth) and /metrics
// (sandbox_flow_requests_total) for Prometheus job "sandbox".
func (d *DataPlane) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.sandboxReg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/flows", func(w http.ResponseWriter, r *http.Request) {
		flows := d.Flows()
		names := sortedKeys(flows)
		list := make([]FlowStats, 0, len(names))
		for _, n := range names {
			list = append(list, flows[n])
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(list)
	})
	return mux
}

// PodInfo describes a simulated pod for creating its Kubernetes object.
type PodInfo struct {
	Name, Namespace, Workload, ServiceAccount string
	IP                                        string
	Labels, Annotations                       map[string]string
	Sidecar, Gateway                          bool
	Ports                                     []scenario.WorkloadPort
}

// Pods lists the simulated pods (the ingress gateway last).
func (d *DataPlane) Pods() []PodInfo {
	out := make([]PodInfo, 0, len(d.topo.pods))
	for _, p := range d.topo.pods {
		out = append(out, PodInfo{p.Name, p.Namespace, p.Workload, p.ServiceAccount, p.IP, copyMap(p.Labels), copyMap(p.Annotations), p.Sidecar, p.Gateway, p.Ports})
	}
	return out
}

// ScrapeTarget is one sidecar metrics endpoint (job envoy-stats).
type ScrapeTarget struct {
	Address string
	Labels  map[string]string // namespace, pod, app
}

// ScrapeTargets lists every sidecar's (and the gateway's) :15090 endpoint.
func (d *DataPlane) ScrapeTargets() []ScrapeTarget {
	var out []ScrapeTarget
	for _, p := range d.topo.pods {
		if p.metrics == nil {
			continue
		}
		out = append(out, ScrapeTarget{
			Address: net.JoinHostPort(p.IP, "15090"),
			Labels:  map[string]string{"namespace": p.Namespace, "pod": p.Name, "app": p.Labels["app"]},
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// ServiceAddr is the host:port of a Service port ("" if unknown).
func (d *DataPlane) ServiceAddr(name, ns string, port int) string {
	s := d.topo.service(name, ns)
	if s == nil {
		return ""
	}
	if _, ok := s.port(port); !ok {
		return ""
	}
	return net.JoinHostPort(s.IP, strconv.Itoa(port))
}

// GatewayAddr is the ingress gateway's plaintext HTTP address.
func (d *DataPlane) GatewayAddr() string {
	return d.ServiceAddr(GatewayName, GatewayNamespace, GatewayServicePort)
}

// EffectiveModeOf is the mode the sidecar of ns/workload enforces on port now.
func (d *DataPlane) EffectiveModeOf(ns, workload string, port int) (Mode, bool) {
	pods := d.topo.byWL[ns+"/"+workload]
	if len(pods) == 0 || !pods[0].Sidecar {
		return "", false
	}
	return d.modeFor(pods[0], port), true
}
