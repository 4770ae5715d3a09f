package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
	"github.com/mtls-migrate/mtls-migrate/sandbox/controlplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// stateNamespace is where the product tests keep the migration state.
const stateNamespace = "mtls-migrate"

// startScenario starts a sandbox of its own for one product test, stopped at
// the test's end. The machine runs one sandbox at a time, so the dataplane
// tests' shared sandbox is stopped first (those tests run before these: Go
// runs test files in name order). mutate may change the scenario before the
// start (e.g. when a flow begins).
func startScenario(t *testing.T, file string, mutate func(*scenario.Scenario), options ...func(*sandbox.Options)) *sandbox.Sandbox {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	skip := func(why string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	if _, err := cluster.FindAPIServerBinary(""); err != nil {
		skip("no kube-apiserver binary: run scripts/build-kube-apiserver.sh (" + err.Error() + ")")
	}
	if _, err := exec.LookPath("prometheus"); err != nil {
		skip("no prometheus on PATH: run scripts/install-prometheus.sh")
	}
	if shared != nil {
		if err := shared.Stop(); err != nil {
			t.Logf("stop the dataplane tests' sandbox: %v", err)
		}
		shared, why = nil, "stopped: the product tests needed the machine"
	}
	scn, err := scenario.Load(filepath.Join("..", "scenarios", file))
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(scn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	opts := sandbox.Options{Scenario: scn, ScrapeInterval: time.Second}
	for _, o := range options {
		o(&opts)
	}
	if opts.Istiod {
		if _, err := controlplane.Binary.Find(""); err != nil {
			skip("no istiod binary: run scripts/build-istiod.sh (" + err.Error() + ")")
		}
	}
	s, err := sandbox.Start(ctx, opts)
	if err != nil {
		skip("sandbox did not start: " + err.Error())
	}
	t.Logf("sandbox %s started in %s", scn.Name, time.Since(began).Round(100*time.Millisecond))
	t.Cleanup(func() {
		// Where istiod and the data plane's own rules decided differently
		// (istiod's decision was enforced).
		for _, d := range s.Disagreements() {
			t.Errorf("istiod and the sandbox's rules disagree: %s", d)
		}
		if _, undecided := s.EnforcerDecisions(); len(undecided) > 0 {
			t.Errorf("refused for want of istiod's configuration: %v", undecided)
		}
		if err := s.Stop(); err != nil {
			t.Errorf("stop sandbox: %v", err)
		}
	})
	return s
}

// buildProduct builds mtls-migrate from the repository root (the Go build
// cache makes every build after the first a link).
func buildProduct(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mtls-migrate")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/mtls-migrate")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/mtls-migrate: %v\n%s", err, out)
	}
	return bin
}

// product runs the built binary against one sandbox, as a user would.
type product struct {
	t   *testing.T
	bin string
	s   *sandbox.Sandbox
	// promURL, when set, is the --prometheus-url instead of the sandbox's.
	promURL string
}

type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r result) String() string {
	return "exit " + itoa(r.code) + "\n--- stdout\n" + r.stdout + "--- stderr (tail)\n" + tail(r.stderr, 40)
}

func itoa(i int) string { return strconv.Itoa(i) }

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

// run runs `mtls-migrate args... --kubeconfig K --prometheus-url P` (the
// sandbox's Prometheus unless promURL is set) and
// returns its output and exit code; it fails the test only when the binary
// could not run at all.
func (p *product) run(ctx context.Context, args ...string) result {
	p.t.Helper()
	return p.runWith(ctx, p.s.KubeconfigPath(), args...)
}

// runWith runs the binary with the given kubeconfig and no ambient one
// ($KUBECONFIG emptied), so a test sees exactly those credentials.
func (p *product) runWith(ctx context.Context, kubeconfig string, args ...string) result {
	p.t.Helper()
	promURL := p.s.PrometheusURL()
	if p.promURL != "" {
		promURL = p.promURL
	}
	args = append(args, "--kubeconfig", kubeconfig, "--prometheus-url", promURL)
	cmd := exec.CommandContext(ctx, p.bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	began := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(began)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		p.t.Fatalf("run mtls-migrate %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// plan runs `mtls-migrate plan` into dir/plan.yaml and loads it back.
func (p *product) plan(dir string, extra ...string) (*plans.Plan, string) {
	p.t.Helper()
	path := filepath.Join(dir, "plan.yaml")
	args := append([]string{"plan", "--window", "5m", "--gate-window", "10s", "--soak", "20s", "--out", path}, extra...)
	r := p.run(context.Background(), args...)
	if r.code != 0 {
		p.t.Fatalf("plan: %s", r)
	}
	p.t.Logf("plan:\n%s", r.stdout)
	pl, err := plans.LoadFile(path)
	if err != nil {
		p.t.Fatalf("the written plan does not load back: %v", err)
	}
	return pl, path
}

// applyArgs are the flags of a short, sandbox-sized stage.
func applyArgs(planPath string, stage int, soak time.Duration, extra ...string) []string {
	return append([]string{"apply", "--plan", planPath, "--stage", itoa(stage), "--soak", soak.String(),
		"--state-namespace", stateNamespace, "--settle", "2s", "--gate-interval", "2s"}, extra...)
}

func createStateNamespace(t *testing.T, s *sandbox.Sandbox) {
	t.Helper()
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	_, err := kc.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: stateNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", stateNamespace, err)
	}
}

// waitTelemetry waits until Prometheus has seen requests for a while, so a
// plan and a baseline have something to read.
func waitTelemetry(t *testing.T, s *sandbox.Sandbox, d time.Duration) {
	t.Helper()
	eventuallyPositive(t, s, `sum(istio_requests_total{reporter="destination"})`, 30*time.Second)
	time.Sleep(d)
}

// policySnapshot is what must survive a rollback unchanged.
type policySnapshot struct {
	UID, Created string
	Labels       map[string]string
	Annotations  map[string]string
	Spec         any
}

func policies(t *testing.T, s *sandbox.Sandbox, ns string) map[string]policySnapshot {
	t.Helper()
	list, err := dyn(t, s).Resource(dataplane.PeerAuthenticationGVR).Namespace(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list PeerAuthentications in %s: %v", ns, err)
	}
	out := map[string]policySnapshot{}
	for _, u := range list.Items {
		out[u.GetName()] = snapshotOf(u)
	}
	return out
}

func snapshotOf(u unstructured.Unstructured) policySnapshot {
	return policySnapshot{
		UID: string(u.GetUID()), Created: u.GetCreationTimestamp().UTC().Format(time.RFC3339),
		Labels: u.GetLabels(), Annotations: u.GetAnnotations(), Spec: u.Object["spec"],
	}
}

// workloadPorts lists the scenario's workloads of ns with their ports.
func workloadPorts(s *sandbox.Sandbox, ns string) map[string][]int {
	out := map[string][]int{}
	for _, w := range s.Scenario().Workloads {
		if w.Namespace != ns {
			continue
		}
		for _, p := range w.Ports {
			out[w.Name] = append(out[w.Name], p.Port)
		}
	}
	return out
}

// failures sums the failed requests per flow since the last reset.
func failures(s *sandbox.Sandbox) map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	for name, f := range s.Flows() {
		if f.Failures() > 0 {
			o := map[string]int64{}
			for k, v := range f.Outcomes {
				if k != dataplane.OutcomeSuccess {
					o[k] = v
				}
			}
			out[name] = o
		}
	}
	return out
}

// savePlan writes plan (edited by the test) to path and returns it as
// loaded back, with its digest: what a run reading path sees.
func savePlan(t *testing.T, path string, plan *plans.Plan) (*plans.Plan, string) {
	t.Helper()
	if err := plans.SaveFile(path, plan); err != nil {
		t.Fatal(err)
	}
	saved, err := plans.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := plans.Digest(saved)
	if err != nil {
		t.Fatal(err)
	}
	return saved, digest
}
