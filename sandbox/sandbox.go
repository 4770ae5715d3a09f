package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
	"github.com/mtls-migrate/mtls-migrate/sandbox/controlplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/prometheus"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
	"github.com/mtls-migrate/mtls-migrate/sandbox/xdsproxy"
)

// Options configures Start. Set ScenarioPath or Scenario.
type Options struct {
	ScenarioPath string
	Scenario     *scenario.Scenario
	// Dir holds the kubeconfig, logs and Prometheus data; a temporary
	// directory (removed by Stop) when empty.
	Dir              string
	APIServerBinary  string // "" = the cached build (scripts/build-kube-apiserver.sh)
	PrometheusBinary string // "" = prometheus on PATH
	// ScrapeInterval overrides the scenario's (default 15s).
	ScrapeInterval time.Duration
	Logger         *slog.Logger
	// Istiod requires the real istiod (scripts/build-istiod.sh): it runs
	// against the API server, every simulated sidecar holds an ADS stream
	// to it as its pod's proxy (IstiodURL, /debug/syncz), and the sidecars
	// enforce the listeners, clusters and endpoints it pushes; the data
	// plane's own rules only cross-check (Disagreements). Without Istiod
	// or NoIstiod, istiod runs when its binary is cached, and always when
	// CI=true (where a missing binary is an error); $SANDBOX_ISTIOD=off
	// (or on) overrides that default, e.g. for a whole e2e run.
	Istiod bool
	// NoIstiod turns istiod off: the data plane decides with its own rules.
	NoIstiod bool
}

// EnvIstiod names the environment variable that turns the default istiod
// off ("off") or requires it ("on").
const EnvIstiod = "SANDBOX_ISTIOD"

// wantIstiod decides whether Start runs istiod (see Options.Istiod).
func (o Options) wantIstiod() bool {
	switch {
	case o.Istiod:
		return true
	case o.NoIstiod:
		return false
	case os.Getenv(EnvIstiod) == "off":
		return false
	case os.Getenv(EnvIstiod) == "on", os.Getenv("CI") == "true":
		return true
	}
	_, err := controlplane.Binary.Find("")
	return err == nil
}

// FlowStats is the ground truth of one flow.
type FlowStats = dataplane.FlowStats

// TLSChoice overrides a meshed client's TLS decision in Probe.
type TLSChoice = dataplane.TLSChoice

// TLS choices for Probe.
const (
	TLSAuto  = dataplane.TLSAuto
	TLSForce = dataplane.TLSForce
	TLSNever = dataplane.TLSNever
)

// Job names of the Prometheus targets.
const (
	JobEnvoyStats = "envoy-stats"
	JobSandbox    = "sandbox"
)

// Sandbox is a running sandbox.
type Sandbox struct {
	log      *slog.Logger
	scn      *scenario.Scenario
	dir      string
	rmDir    bool
	cluster  *cluster.Cluster
	dp       *dataplane.DataPlane
	istiod   *controlplane.Istiod
	fleet    *xdsproxy.Fleet
	prom     *prometheus.Server
	httpSrv  *http.Server
	httpAddr string
	interval time.Duration
}

// Start brings up the API server, creates the scenario's objects, starts the
// data plane and its traffic, and Prometheus; it returns once the objects
// exist, the sidecars enforce the current policies and Prometheus has
// scraped every target. On error everything started is torn down.
func Start(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	began := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	scn := opts.Scenario
	if scn == nil {
		if opts.ScenarioPath == "" {
			return nil, errors.New("sandbox: set Options.ScenarioPath or Options.Scenario")
		}
		if scn, err = scenario.Load(opts.ScenarioPath); err != nil {
			return nil, err
		}
	} else if err := scn.Validate(); err != nil {
		return nil, err
	}
	s := &Sandbox{log: log, scn: scn, dir: opts.Dir, interval: opts.ScrapeInterval}
	if s.interval == 0 {
		s.interval = scn.ScrapeEvery()
	}
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "mtls-sandbox-"); err != nil {
			return nil, err
		}
		s.rmDir = true
	} else if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if stopErr := s.Stop(); stopErr != nil {
				log.Warn("tear down after failed start", "err", stopErr)
			}
		}
	}()

	// Prerequisites first, so a missing binary fails fast.
	promBin := opts.PrometheusBinary
	if promBin == "" {
		if promBin, err = exec("prometheus"); err != nil {
			return nil, fmt.Errorf("prometheus not found on PATH: run scripts/install-prometheus.sh: %w", err)
		}
	}

	log.Info("starting cluster", "dir", s.dir)
	s.cluster, err = cluster.Start(ctx, cluster.Options{Dir: s.dir, APIServerBinary: opts.APIServerBinary, Logger: log.With("component", "cluster")})
	if err != nil {
		return nil, fmt.Errorf("start cluster (build the apiserver with scripts/build-kube-apiserver.sh): %w", err)
	}
	cfg := s.cluster.RESTConfig()
	cfg.QPS, cfg.Burst = 200, 400
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}

	s.dp, err = dataplane.New(dataplane.Config{Scenario: scn, Dynamic: dyn, Logger: log.With("component", "dataplane")})
	if err != nil {
		return nil, err
	}
	if err := s.dp.Listen(); err != nil {
		return nil, fmt.Errorf("data plane: %w", err)
	}
	// istiod first: its injection webhook must be serving when the pods
	// are created.
	if opts.wantIstiod() {
		if err := s.startIstiod(ctx); err != nil {
			return nil, err
		}
	}
	log.Info("creating objects", "scenario", scn.Name, "pods", len(s.dp.Pods()))
	etcd := s.cluster.EtcdClient()
	c := &creator{kube: kube, dyn: dyn, disc: kube.Discovery(), scn: scn, dp: s.dp, etcd: etcd, istiodInjects: opts.wantIstiod()}
	err = c.createAll(ctx)
	_ = etcd.Close()
	if err != nil {
		return nil, err
	}
	if err := s.dp.Watch(ctx); err != nil {
		return nil, err
	}
	if opts.wantIstiod() {
		// Before any traffic: the sidecars refuse what istiod has not
		// configured yet, so the flows start once every proxy has it.
		if err := s.connectProxies(ctx); err != nil {
			return nil, err
		}
	}
	s.dp.StartTraffic()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.httpAddr = ln.Addr().String()
	s.httpSrv = &http.Server{Handler: s.dp.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.httpSrv.Serve(ln) }()

	targets := s.targets()
	s.prom, err = prometheus.Start(ctx, prometheus.Options{
		Dir: filepath.Join(s.dir, "prometheus"), Binary: promBin, ScrapeInterval: s.interval,
		Targets: targets, Logger: log.With("component", "prometheus"),
	})
	if err != nil {
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	if err := s.waitScraped(ctx, len(targets)); err != nil {
		return nil, err
	}
	log.Info("sandbox ready", "scenario", scn.Name, "took", time.Since(began).Round(100*time.Millisecond),
		"kubeconfig", s.KubeconfigPath(), "prometheus", s.PrometheusURL(), "gateway", s.GatewayAddr())
	return s, nil
}

func exec(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", name)
}

func (s *Sandbox) targets() []prometheus.Target {
	var out []prometheus.Target
	for _, t := range s.dp.ScrapeTargets() {
		labels := copyMap(t.Labels)
		// Istio's example scrape config reads the sidecar at :15090/stats/prometheus.
		labels["__metrics_path__"] = "/stats/prometheus"
		out = append(out, prometheus.Target{Job: JobEnvoyStats, Address: t.Address, Labels: labels})
	}
	out = append(out, prometheus.Target{Job: JobSandbox, Address: s.httpAddr, Labels: map[string]string{"scenario": s.scn.Name}})
	return out
}

// waitScraped waits until Prometheus reports every target up.
func (s *Sandbox) waitScraped(ctx context.Context, n int) error {
	api, err := s.PrometheusAPI()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60*time.Second + 3*s.interval)
	q := fmt.Sprintf(`count(up{job=~"%s|%s"} == 1)`, JobEnvoyStats, JobSandbox)
	var last string
	for time.Now().Before(deadline) {
		v, _, _, err := api.Query(ctx, q, time.Now())
		if err == nil {
			if vec, ok := v.(model.Vector); ok && len(vec) == 1 && int(vec[0].Value) >= n {
				return nil
			}
			last = v.String()
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("prometheus at %s did not scrape all %d targets in time (last: %s); see %s", s.PrometheusURL(), n, strings.TrimSpace(last), filepath.Join(s.dir, "prometheus"))
}

// PrometheusAPI is a client for the sandbox's Prometheus.
func (s *Sandbox) PrometheusAPI() (promv1.API, error) {
	c, err := promapi.NewClient(promapi.Config{Address: s.PrometheusURL()})
	if err != nil {
		return nil, err
	}
	return promv1.NewAPI(c), nil
}

// Scenario is the scenario the sandbox runs.
func (s *Sandbox) Scenario() *scenario.Scenario { return s.scn }

// Dir is the sandbox's working directory.
func (s *Sandbox) Dir() string { return s.dir }

// ScrapeInterval is Prometheus' scrape interval.
func (s *Sandbox) ScrapeInterval() time.Duration { return s.interval }

// KubeconfigPath is an admin kubeconfig for the API server.
func (s *Sandbox) KubeconfigPath() string { return s.cluster.KubeconfigPath() }

// RESTConfig is an admin client config.
func (s *Sandbox) RESTConfig() *rest.Config { return s.cluster.RESTConfig() }

// PrometheusURL is the base URL of Prometheus.
func (s *Sandbox) PrometheusURL() string { return s.prom.URL() }

// Prometheus is the Prometheus server (Kill/Restart simulate an outage).
func (s *Sandbox) Prometheus() *prometheus.Server { return s.prom }

// FlowsURL serves the ground truth as JSON.
func (s *Sandbox) FlowsURL() string { return "http://" + s.httpAddr + "/flows" }

// Flows is the ground truth per flow name.
func (s *Sandbox) Flows() map[string]FlowStats { return s.dp.Flows() }

// ResetFlowStats zeroes the Go-side ground truth counts.
func (s *Sandbox) ResetFlowStats() { s.dp.ResetFlowStats() }

// PauseFlow stops (paused=true) or resumes a flow at run time.
func (s *Sandbox) PauseFlow(name string, paused bool) error { return s.dp.SetFlowPaused(name, paused) }

// WaitFlow polls the flow's ground truth until pred holds or ctx ends.
func (s *Sandbox) WaitFlow(ctx context.Context, name string, pred func(FlowStats) bool) error {
	for {
		f, ok := s.dp.Flows()[name]
		if !ok {
			return fmt.Errorf("no flow %q", name)
		}
		if pred(f) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flow %s: condition not met (last outcome %q, outcomes %v): %w", name, f.LastOutcome, f.Outcomes, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Probe sends one request as a flow would: from "external", "ns/workload"
// or a unique workload name, to "svc.ns:port" or a gateway host. choice
// overrides a meshed client's TLS decision. It returns the outcome
// ("success", "reset", "status_503", ...).
func (s *Sandbox) Probe(ctx context.Context, from, to string, choice TLSChoice) string {
	return s.dp.Probe(ctx, from, to, choice)
}

// ProbePod dials a container port of the first pod of ns/workload directly,
// with plaintext or with mTLS (a mesh identity from the sandbox CA).
func (s *Sandbox) ProbePod(ctx context.Context, ns, workload string, port int, mtls bool) string {
	return s.dp.ProbePod(ctx, ns, workload, port, mtls)
}

// EffectiveMode is the PeerAuthentication mode the sidecar of ns/workload
// enforces on a container port right now.
func (s *Sandbox) EffectiveMode(ns, workload string, port int) (dataplane.Mode, bool) {
	return s.dp.EffectiveModeOf(ns, workload, port)
}

// Addr is the host:port of a Service port, for probes ("" if unknown).
func (s *Sandbox) Addr(service, namespace string, port int) string {
	return s.dp.ServiceAddr(service, namespace, port)
}

// GatewayAddr is the ingress gateway's plaintext HTTP host:port.
func (s *Sandbox) GatewayAddr() string { return s.dp.GatewayAddr() }

// WriteFiles writes DIR/env (KUBECONFIG, PROMETHEUS_URL, SANDBOX_GATEWAY,
// SANDBOX_FLOWS_URL, and ISTIOD_URL when istiod runs: what
// `apply --istiod-url` takes) and then, last, DIR/ready.
func (s *Sandbox) WriteFiles(dir string) error {
	kc, err := filepath.Abs(s.KubeconfigPath())
	if err != nil {
		return err
	}
	env := fmt.Sprintf("KUBECONFIG=%s\nPROMETHEUS_URL=%s\nSANDBOX_GATEWAY=%s\nSANDBOX_FLOWS_URL=%s\n", kc, s.PrometheusURL(), s.GatewayAddr(), s.FlowsURL())
	if u := s.IstiodURL(); u != "" {
		env += "ISTIOD_URL=" + u + "\n"
	}
	if err := writeAtomic(filepath.Join(dir, "env"), []byte(env)); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, "ready"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"))
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Stop tears everything down: traffic, data plane, Prometheus, the API
// server and etcd, and the temporary directory if Start made one.
func (s *Sandbox) Stop() error {
	var errs []error
	if s.fleet != nil {
		s.fleet.Close()
	}
	if s.istiod != nil {
		errs = append(errs, s.istiod.Stop())
	}
	if s.dp != nil {
		errs = append(errs, s.dp.Close())
	}
	if s.httpSrv != nil {
		errs = append(errs, s.httpSrv.Close())
	}
	if s.prom != nil {
		errs = append(errs, s.prom.Stop())
	}
	if s.cluster != nil {
		errs = append(errs, s.cluster.Stop())
	}
	if s.rmDir {
		errs = append(errs, os.RemoveAll(s.dir))
	} else {
		for _, f := range []string{"ready", "env"} {
			_ = os.Remove(filepath.Join(s.dir, f))
		}
	}
	return errors.Join(errs...)
}

// startIstiod runs istiod with its sidecar injection webhook registered.
func (s *Sandbox) startIstiod(ctx context.Context) error {
	i, err := controlplane.Start(ctx, controlplane.Options{Kubeconfig: s.KubeconfigPath(), Dir: filepath.Join(s.dir, "istiod"), Injection: true})
	if err != nil {
		return fmt.Errorf("start istiod (build it with scripts/build-istiod.sh): %w", err)
	}
	s.istiod = i
	s.log.Info("istiod ready", "took", i.StartedIn.Round(10*time.Millisecond), "webhook", i.WebhookReadyIn.Round(10*time.Millisecond), "debug", i.HTTPAddr)
	return nil
}

// connectProxies connects every sidecar pod to istiod.
func (s *Sandbox) connectProxies(ctx context.Context) error {
	i := s.istiod
	var err error
	var pods []xdsproxy.Pod
	for _, p := range s.dp.Pods() {
		if p.Sidecar || p.Gateway {
			pods = append(pods, xdsproxy.Pod{Name: p.Name, Namespace: p.Namespace, IP: p.IP, ServiceAccount: p.ServiceAccount, Labels: p.Labels, Router: p.Gateway})
		}
	}
	// The streams live until Stop, not as long as the start-up context.
	s.fleet, err = xdsproxy.Connect(context.WithoutCancel(ctx), i.GRPCAddr, "1.30.0", pods)
	if err != nil {
		return err
	}
	s.dp.SetEnforcer(newXDSEnforcer(s.fleet))
	began := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := s.fleet.WaitReady(wctx); err != nil {
		return fmt.Errorf("%w\n%s", err, i.LogTail(20))
	}
	s.log.Info("proxies connected to istiod", "proxies", len(pods), "first config in", time.Since(began).Round(10*time.Millisecond))
	return nil
}

// Disagreements lists where istiod's configuration and the data plane's
// own reading of Istio's rules decided a connection differently (istiod's
// decision was enforced). Empty without istiod.
func (s *Sandbox) Disagreements() []dataplane.Disagreement { return s.dp.Disagreements() }

// ResetDisagreements forgets the disagreements and decisions seen so far.
func (s *Sandbox) ResetDisagreements() { s.dp.ResetDisagreements() }

// EnforcerDecisions counts the decisions taken from istiod's configuration
// by direction, and the connections and requests refused for want of one
// (by direction and reason): after start-up there should be none.
func (s *Sandbox) EnforcerDecisions() (decided, undecided map[string]int) {
	return s.dp.EnforcerDecisions()
}

// AuthzStats counts each connected sidecar's authorization decisions (the
// RBAC filters istiod rendered from AuthorizationPolicies), by "ns/pod".
func (s *Sandbox) AuthzStats() map[string]dataplane.AuthzStats { return s.dp.AuthzStats() }

// ResetAuthzStats forgets the authorization counts.
func (s *Sandbox) ResetAuthzStats() { s.dp.ResetAuthzStats() }

// BlindOwnRules hides, for tests, every PeerAuthentication and
// DestinationRule from the data plane's own rules, so only istiod's
// configuration can still enforce them.
func (s *Sandbox) BlindOwnRules(blind bool) { s.dp.BlindOwnRules(blind) }

// IstiodURL is istiod's debug server, for `apply --istiod-url` ("" without
// Options.Istiod).
func (s *Sandbox) IstiodURL() string {
	if s.istiod == nil {
		return ""
	}
	return "http://" + s.istiod.HTTPAddr
}

// Istiod is the running istiod (nil without Options.Istiod).
func (s *Sandbox) Istiod() *controlplane.Istiod { return s.istiod }

// Fleet is the simulated proxies' ADS streams (nil without Options.Istiod).
func (s *Sandbox) Fleet() *xdsproxy.Fleet { return s.fleet }
