// Package dataplane is the sandbox's simulated Istio sidecar data plane.
//
// Each workload instance gets its own loopback address and listens on its
// container ports; a meshed pod's "sidecar" sniffs each inbound connection
// (TLS or plaintext), enforces the PeerAuthentication mode it resolves from
// the objects it watches through the API server, terminates mTLS with
// certificates from an in-memory mesh CA, and records Istio's standard
// metrics, served for Prometheus at <pod IP>:15090/stats/prometheus. Clients
// with a sidecar pick an endpoint and originate mTLS or plaintext as auto
// mTLS and DestinationRules say. Flows from the scenario generate traffic and
// every attempt's outcome is kept as ground truth.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/dynamic"

	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// Config configures a DataPlane.
type Config struct {
	Scenario *scenario.Scenario
	// Dynamic is used to watch PeerAuthentications, DestinationRules and the
	// mesh ConfigMap. Nil means no watching (mode PERMISSIVE everywhere),
	// which is only useful in unit tests.
	Dynamic dynamic.Interface
	Logger  *slog.Logger
	// Settle overrides DisagreementSettle (tests).
	Settle time.Duration
}

// DataPlane is the running simulation.
type DataPlane struct {
	scn  *scenario.Scenario
	dyn  dynamic.Interface
	log  *slog.Logger
	ca   *ca
	topo *topology

	snap atomic.Pointer[policySnapshot]
	// policyAt is when the snapshot last changed (UnixNano).
	policyAt atomic.Int64
	settle   time.Duration
	enforcer atomic.Pointer[Enforcer]
	blind    atomic.Bool
	dis      disagreements
	authzMu  sync.Mutex
	authz    map[string]*AuthzStats

	mu        sync.Mutex
	listeners []net.Listener
	servers   []*http.Server
	wg        sync.WaitGroup
	cancel    context.CancelFunc
	ctx       context.Context

	flows      map[string]*flowRunner
	flowOrder  []string
	sandboxReg *prometheus.Registry
	flowTotal  *prometheus.CounterVec
	bySPIFFE   map[string]*Pod
	externalIP string
	closed     atomic.Bool
}

// New lays the scenario out and creates the mesh CA; nothing listens yet.
func New(cfg Config) (*DataPlane, error) {
	if cfg.Scenario == nil {
		return nil, errors.New("dataplane: no scenario")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := newCA()
	if err != nil {
		return nil, err
	}
	d := &DataPlane{scn: cfg.Scenario, dyn: cfg.Dynamic, log: log, ca: c, flows: map[string]*flowRunner{}, settle: cfg.Settle}
	if d.settle == 0 {
		d.settle = DisagreementSettle
	}
	d.snap.Store(&policySnapshot{root: "istio-system"})
	d.sandboxReg = prometheus.NewRegistry()
	d.flowTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandbox_flow_requests_total",
		Help: "Ground truth: every request attempt of a scenario flow, by outcome as the client's app saw it.",
	}, []string{"flow", "source", "destination", "outcome"})
	d.sandboxReg.MustRegister(d.flowTotal)
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Listen picks a free loopback range and binds every pod port, sidecar
// metrics port and Service address. It retries another range when an
// address is taken (other sandboxes may run on the same machine).
func (d *DataPlane) Listen() error {
	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		base := 16 + rand.IntN(230)
		topo, err := buildTopology(d.scn, base)
		if err != nil {
			return err
		}
		d.topo = topo
		d.externalIP = fmt.Sprintf("127.%d.250.1", base)
		if err := d.bindAll(); err != nil {
			d.closeListeners()
			lastErr = err
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return err
		}
		return nil
	}
	return fmt.Errorf("no free loopback range after 8 attempts: %w", lastErr)
}

func (d *DataPlane) bindAll() error {
	d.bySPIFFE = map[string]*Pod{}
	type pending struct {
		ln  net.Listener
		run func(net.Listener)
	}
	var todo []pending
	listen := func(addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		d.listeners = append(d.listeners, ln)
		d.mu.Unlock()
		return ln, nil
	}
	for _, p := range d.topo.pods {
		p.peer = peerOf(p)
		if p.Sidecar || p.Gateway {
			p.metrics = newSidecarMetrics()
			d.bySPIFFE[p.SPIFFE()] = p
			ln, err := listen(net.JoinHostPort(p.IP, "15090"))
			if err != nil {
				return fmt.Errorf("sidecar metrics of %s/%s: %w", p.Namespace, p.Name, err)
			}
			mux := http.NewServeMux()
			h := promhttp.HandlerFor(p.metrics.reg, promhttp.HandlerOpts{})
			mux.Handle("/stats/prometheus", h)
			mux.Handle("/metrics", h)
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			d.servers = append(d.servers, srv)
			todo = append(todo, pending{ln, func(l net.Listener) { _ = srv.Serve(l) }})
		}
		for _, wp := range p.Ports {
			ln, err := listen(net.JoinHostPort(p.IP, fmt.Sprint(wp.Port)))
			if err != nil {
				return fmt.Errorf("pod %s/%s port %d: %w", p.Namespace, p.Name, wp.Port, err)
			}
			p, port := p, wp.Port
			todo = append(todo, pending{ln, func(l net.Listener) { d.serveInbound(p, port, l) }})
		}
	}
	for _, s := range d.topo.services {
		for _, sp := range s.Ports {
			ln, err := listen(net.JoinHostPort(s.IP, fmt.Sprint(sp.Port)))
			if err != nil {
				return fmt.Errorf("service %s/%s port %d: %w", s.Namespace, s.Name, sp.Port, err)
			}
			s, sp := s, sp
			todo = append(todo, pending{ln, func(l net.Listener) { d.serveKubeProxy(s, sp, l) }})
		}
	}
	for _, t := range todo {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			t.run(t.ln)
		}()
	}
	return nil
}

func (d *DataPlane) closeListeners() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.servers {
		_ = s.Close()
	}
	for _, l := range d.listeners {
		_ = l.Close()
	}
	d.servers, d.listeners = nil, nil
}

// Close stops traffic, listeners and watches, and waits for goroutines.
func (d *DataPlane) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.cancel()
	d.closeListeners()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("dataplane: goroutines still running 10s after close")
	}
}

func (d *DataPlane) podBySPIFFE(id string) (peer, bool) {
	p, ok := d.bySPIFFE[id]
	if !ok {
		return peer{}, false
	}
	return p.peer, true
}

// modeFor is the effective PeerAuthentication mode on a pod's port now.
func (d *DataPlane) modeFor(p *Pod, port int) Mode {
	s := d.snapshot()
	return EffectiveMode(s.pas, s.root, p.Namespace, p.Labels, uint32(port))
}
