package scale

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"gopkg.in/yaml.v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
)

// StateNamespace is the --state-namespace the benchmark passes (the
// product's default).
const StateNamespace = "mtls-migrate"

// PlanConfigMap is where deploy/ keeps the plan for the scheduled Job.
const PlanConfigMap = "mtls-migrate-plan"

// Config is one benchmark run.
type Config struct {
	Namespaces int
	Workloads  int // per namespace, default 10
	Flows      int // per namespace, default 100
	// Window is plan's --window (default 7d).
	Window time.Duration
	// Load is how the world is written (default Fast).
	Load *LoadOptions
	// Baseline, when set, first loads the world into a cluster of its own
	// with these options, to compare (that cluster is then stopped).
	Baseline *LoadOptions
	// Binary is the built mtls-migrate (see BuildProduct).
	Binary string
	// Dir keeps the plan, the cluster's logs and the commands' stderr; a
	// temporary directory when empty.
	Dir string
	// PrometheusURL, when set, is the Prometheus plan and status use
	// instead of the synthetic one (then World must be the world it holds).
	PrometheusURL string
	World         *World
	// ExtraPlanArgs are appended to plan's arguments.
	ExtraPlanArgs []string
	Logf          func(format string, args ...any)
}

// Result is what a run measured.
type Result struct {
	Namespaces, Pods, Services, Flows, PlaintextFlows, Series int

	Baseline, Load *LoadStats
	// PodJSONBytes and PodProtoBytes are one stored pod as the API
	// server returns it.
	PodJSONBytes, PodProtoBytes int
	PodJSONBytesNoManagedFields int

	Plan, Status Command
	// PlanReplayed is the same plan with the synthetic Prometheus
	// replaying its first answers (PromServer.SetReplay): the product's
	// own time, without the server's evaluation.
	PlanReplayed Command
	// StatusNoPlan is status without --plan: what reading the plan costs.
	StatusNoPlan Command
	// Lists are every pod listed from this process as client-go would,
	// pages of 500, in each encoding: what the tool's own lists cost.
	Lists []ListStat
	// PlanProm and StatusProm are the queries each command sent (empty
	// against a real Prometheus).
	PlanProm, StatusProm PromTotals
	PlanBytes            int64
	// State is what the tool keeps in its namespace: ConfigMaps, their
	// data and binaryData bytes, the largest, after plan and status.
	State StoreStats
	// Publish is `plan publish` of the plan into the cluster, as deploy/
	// does for the scheduled Job; Published the ConfigMaps it added to
	// the namespace (the largest is the namespace's largest object).
	// StatusInCluster is status reading that published plan, as the Job
	// does. PublishErr is the failure, if publishing failed.
	Publish, StatusInCluster Command
	Published                StoreStats
	PublishErr               string

	Checked    int
	Mismatches []string
}

// Command is one run of the built binary.
type Command struct {
	Args        []string
	Wall        time.Duration
	MaxRSS      int64         // bytes, the child's VmHWM (peakRSS)
	CPU         time.Duration // user + system, from the child's rusage
	Code        int
	StdoutBytes int
	Stderr      string // its tail
}

// PromTotals sums the queries of one command.
type PromTotals struct {
	Queries              int
	JSONBytes, WireBytes int64
	Eval, Encode         time.Duration
	PerQuery             []QueryStat
	// Gzip: every query accepted a gzip answer.
	Gzip bool
}

// StoreStats sizes the tool's objects.
type StoreStats struct {
	ConfigMaps  int
	DataBytes   int64
	Largest     int64
	LargestName string
}

func totals(stats []QueryStat) PromTotals {
	t := PromTotals{Queries: len(stats), PerQuery: stats, Gzip: len(stats) > 0}
	for _, s := range stats {
		t.Gzip = t.Gzip && s.Gzip
		t.JSONBytes += int64(s.JSONBytes)
		t.WireBytes += int64(s.WireBytes)
		t.Eval += s.Eval
		t.Encode += s.Encode
	}
	return t
}

func (c *Config) defaults() {
	if c.Window <= 0 {
		c.Window = 7 * 24 * time.Hour
	}
	if c.Load == nil {
		c.Load = &Fast
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Run starts the real kube-apiserver, loads the world, serves its
// telemetry, runs the built binary's plan and status, measures them and
// checks the plan's decisions against the world.
func Run(ctx context.Context, c Config) (_ *Result, err error) {
	c.defaults()
	if c.Binary == "" {
		return nil, errors.New("scale: Config.Binary is required (see BuildProduct)")
	}
	dir := c.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "mtls-scale-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	}
	w := c.World
	if w == nil {
		w = NewWorld(WorldOptions{Namespaces: c.Namespaces, Workloads: c.Workloads, Flows: c.Flows})
	}
	r := &Result{Namespaces: len(w.Names), Pods: w.Pods(), Services: w.Pods(), Flows: len(w.Flows), PlaintextFlows: w.PlaintextFlows(), Series: w.Series()}
	c.Logf("world: %d namespaces, %d pods, %d Services, %d flows (%d plaintext), %d series", r.Namespaces, r.Pods, r.Services, r.Flows, r.PlaintextFlows, r.Series)

	if c.Baseline != nil {
		if r.Baseline, err = loadOnce(ctx, filepath.Join(dir, "baseline"), w, *c.Baseline, c.Logf, nil); err != nil {
			return r, fmt.Errorf("baseline load: %w", err)
		}
	}
	var cl *cluster.Cluster
	defer func() {
		if cl != nil {
			if stopErr := cl.Stop(); stopErr != nil && err == nil {
				err = stopErr
			}
		}
	}()
	if r.Load, err = loadOnce(ctx, filepath.Join(dir, "cluster"), w, *c.Load, c.Logf, &cl); err != nil {
		return r, fmt.Errorf("load: %w", err)
	}
	if !r.Load.Complete {
		return r, fmt.Errorf("the load did not finish: %s", r.Load)
	}
	kube, err := kubernetes.NewForConfig(cl.RESTConfig())
	if err != nil {
		return r, err
	}
	if r.PodJSONBytes, r.PodProtoBytes, r.PodJSONBytesNoManagedFields, err = podSizes(ctx, cl.RESTConfig(), w); err != nil {
		return r, err
	}
	c.Logf("a pod as the API server returns it: %d bytes of JSON (%d without managedFields), %d of protobuf", r.PodJSONBytes, r.PodJSONBytesNoManagedFields, r.PodProtoBytes)

	promURL := c.PrometheusURL
	var prom *PromServer
	if promURL == "" {
		prom = NewPromServer(w)
		if err := prom.Start(); err != nil {
			return r, err
		}
		defer prom.Close()
		promURL = prom.URL()
	}
	product := func(name string, args ...string) (Command, PromTotals, error) {
		if prom != nil {
			prom.ResetStats()
		}
		cmd, err := runBinary(ctx, c.Binary, cl.KubeconfigPath(), promURL, filepath.Join(dir, name+".stderr"), args...)
		var t PromTotals
		if prom != nil {
			t = totals(prom.Stats())
		}
		if err == nil && cmd.Code != 0 {
			err = fmt.Errorf("mtls-migrate %s exited %d:\n%s", name, cmd.Code, cmd.Stderr)
		}
		return cmd, t, err
	}

	if prom != nil {
		prom.SetReplay(true)
	}
	planPath := filepath.Join(dir, "plan.yaml")
	planArgs := append([]string{"plan", "--window", promDuration(c.Window), "--out", planPath}, c.ExtraPlanArgs...)
	if r.Plan, r.PlanProm, err = product("plan", planArgs...); err != nil {
		return r, err
	}
	c.Logf("plan: %s (CPU %s), max RSS %d MB, %d queries, %.1f MB of JSON (%.1f MB sent, gzip accepted: %t; server eval %s, encode %s)", r.Plan.Wall.Round(10*time.Millisecond), r.Plan.CPU.Round(10*time.Millisecond), r.Plan.MaxRSS>>20,
		r.PlanProm.Queries, mb(r.PlanProm.JSONBytes), mb(r.PlanProm.WireBytes), r.PlanProm.Gzip, r.PlanProm.Eval.Round(time.Millisecond), r.PlanProm.Encode.Round(time.Millisecond))
	for _, q := range r.PlanProm.PerQuery {
		c.Logf("  query: %d series, %.2f MB, eval %s: %.80s...", q.Series, mb(int64(q.JSONBytes)), q.Eval.Round(time.Millisecond), q.Query)
	}
	if prom != nil {
		// The same plan again, its answers replayed: what the product
		// itself takes, with a Prometheus that answers instantly.
		replayArgs := append([]string{"plan", "--window", promDuration(c.Window), "--out", filepath.Join(dir, "plan-replayed.yaml")}, c.ExtraPlanArgs...)
		if r.PlanReplayed, _, err = product("plan-replayed", replayArgs...); err != nil {
			return r, err
		}
		c.Logf("plan, answers replayed: %s (CPU %s), max RSS %d MB", r.PlanReplayed.Wall.Round(10*time.Millisecond), r.PlanReplayed.CPU.Round(10*time.Millisecond), r.PlanReplayed.MaxRSS>>20)
		// status is timed with its query evaluated, as a Prometheus would.
		prom.SetReplay(false)
	}
	fi, err := os.Stat(planPath)
	if err != nil {
		return r, fmt.Errorf("the plan was not written: %w", err)
	}
	r.PlanBytes = fi.Size()
	if r.Checked, r.Mismatches, err = checkPlan(planPath, w, c.Window); err != nil {
		return r, err
	}

	if r.Status, r.StatusProm, err = product("status", "status", "--plan", planPath, "--state-namespace", StateNamespace); err != nil {
		return r, err
	}
	c.Logf("status: %s (CPU %s), max RSS %d MB; %d queries, server eval %s", r.Status.Wall.Round(10*time.Millisecond), r.Status.CPU.Round(10*time.Millisecond), r.Status.MaxRSS>>20, r.StatusProm.Queries, r.StatusProm.Eval.Round(time.Millisecond))
	if r.StatusNoPlan, _, err = product("status-noplan", "status", "--state-namespace", StateNamespace); err != nil {
		return r, err
	}
	c.Logf("status without --plan: %s (CPU %s), max RSS %d MB", r.StatusNoPlan.Wall.Round(10*time.Millisecond), r.StatusNoPlan.CPU.Round(10*time.Millisecond), r.StatusNoPlan.MaxRSS>>20)
	for _, ct := range []string{runtime.ContentTypeJSON, runtime.ContentTypeProtobuf} {
		ls, err := listPods(ctx, cl.RESTConfig(), ct)
		if err != nil {
			return r, err
		}
		c.Logf("list every pod (%s, pages of 500): %s, %.1f MB", ct, ls.Took.Round(10*time.Millisecond), mb(ls.Bytes))
		r.Lists = append(r.Lists, ls)
	}
	if r.State, err = storeStats(ctx, kube, StateNamespace); err != nil {
		return r, err
	}
	source := "configmap:" + StateNamespace + "/" + PlanConfigMap
	if r.Publish, _, err = product("publish", "plan", "publish", "--plan", planPath, "--to", source); err != nil {
		r.PublishErr = tailLines(err.Error(), 3)
		return r, nil
	}
	after, err := storeStats(ctx, kube, StateNamespace)
	if err != nil {
		return r, err
	}
	r.Published = StoreStats{ConfigMaps: after.ConfigMaps - r.State.ConfigMaps, DataBytes: after.DataBytes - r.State.DataBytes, Largest: after.Largest, LargestName: after.LargestName}
	c.Logf("plan publish: %s, max RSS %d MB: %d ConfigMaps, %.2f MB, largest %s %.0f KiB", r.Publish.Wall.Round(10*time.Millisecond), r.Publish.MaxRSS>>20,
		r.Published.ConfigMaps, mb(r.Published.DataBytes), r.Published.LargestName, float64(r.Published.Largest)/1024)
	if r.StatusInCluster, _, err = product("status-incluster", "status", "--plan", source, "--state-namespace", StateNamespace); err != nil {
		return r, err
	}
	c.Logf("status --plan %s: %s (CPU %s), max RSS %d MB", source, r.StatusInCluster.Wall.Round(10*time.Millisecond), r.StatusInCluster.CPU.Round(10*time.Millisecond), r.StatusInCluster.MaxRSS>>20)
	return r, nil
}

func promDuration(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// loadOnce starts a cluster in dir and loads w into it; the cluster is
// handed back in keep, or stopped when keep is nil.
func loadOnce(ctx context.Context, dir string, w *World, o LoadOptions, logf func(string, ...any), keep **cluster.Cluster) (*LoadStats, error) {
	began := time.Now()
	cl, err := cluster.Start(ctx, cluster.Options{Dir: dir})
	if err != nil {
		return nil, fmt.Errorf("start the cluster (build the apiserver with scripts/build-kube-apiserver.sh): %w", err)
	}
	if keep != nil {
		*keep = cl
	} else {
		defer func() {
			if err := cl.Stop(); err != nil {
				logf("stop the load's cluster: %v", err)
			}
		}()
	}
	logf("cluster up in %s", time.Since(began).Round(100*time.Millisecond))
	o.Progress = func(kind string, done, total int, elapsed time.Duration) {
		logf("  loaded %d/%d %s in %s", done, total, kind, elapsed.Round(100*time.Millisecond))
	}
	if o.ServicesInEtcd && o.Etcd == nil {
		etcd := cl.EtcdClient()
		defer etcd.Close()
		o.Etcd = etcd
	}
	pid, self := cl.APIServerPID(), os.Getpid()
	apiCPU, localCPU := procCPU(pid), procCPU(self)
	st, err := Load(ctx, cl.RESTConfig(), w, StateNamespace, o)
	if st != nil {
		st.APIServerCPU, st.LocalCPU, st.APIServerRSS = procCPU(pid)-apiCPU, procCPU(self)-localCPU, procRSS(pid)
		logf("load %s", st)
	}
	return st, err
}

// podSizes is one pod as the API server returns it, in JSON and protobuf,
// and its JSON without metadata.managedFields.
func podSizes(ctx context.Context, base *rest.Config, w *World) (int, int, int, error) {
	var sizes [2]int
	var lean int
	for k, ct := range []string{runtime.ContentTypeJSON, runtime.ContentTypeProtobuf} {
		cfg := rest.CopyConfig(base)
		cfg.AcceptContentTypes = ct
		cfg.ContentType = ct
		kube, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return 0, 0, 0, err
		}
		raw, err := kube.CoreV1().RESTClient().Get().Namespace(w.Names[0]).Resource("pods").Name(w.PodName(0, 0)).DoRaw(ctx)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("read back pod %s/%s: %w", w.Names[0], w.PodName(0, 0), err)
		}
		sizes[k] = len(raw)
		if ct == runtime.ContentTypeJSON {
			var pod map[string]any
			if err := json.Unmarshal(raw, &pod); err != nil {
				return 0, 0, 0, err
			}
			if md, ok := pod["metadata"].(map[string]any); ok {
				delete(md, "managedFields")
			}
			b, _ := json.Marshal(pod)
			lean = len(b)
		}
	}
	return sizes[0], sizes[1], lean, nil
}

// runBinary runs the product as a user would, with only this kubeconfig.
func runBinary(ctx context.Context, bin, kubeconfig, promURL, stderrPath string, args ...string) (Command, error) {
	args = append(args, "--kubeconfig", kubeconfig, "--prometheus-url", promURL)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	var out countingWriter
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	began := time.Now()
	var peak int64
	err := cmd.Start()
	if err == nil {
		rss := watchRSS(cmd)
		err = cmd.Wait()
		peak = rss.stop()
	}
	c := Command{Args: args, Wall: time.Since(began), StdoutBytes: out.n, Stderr: tailLines(errb.String(), 30), MaxRSS: peak}
	_ = os.WriteFile(stderrPath, errb.Bytes(), 0o644)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		c.Code = ee.ExitCode()
	default:
		return c, fmt.Errorf("run %s %s: %w", bin, strings.Join(args, " "), err)
	}
	c.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return c, nil
}

type countingWriter struct{ n int }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// storeStats sizes every ConfigMap in ns: the tool's state (and whatever
// else it comes to keep there).
func storeStats(ctx context.Context, kube kubernetes.Interface, ns string) (StoreStats, error) {
	var st StoreStats
	l, err := kube.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return st, fmt.Errorf("list ConfigMaps in %s: %w", ns, err)
	}
	for _, cm := range l.Items {
		if cm.Name == "kube-root-ca.crt" {
			continue // the controller-manager's, on a real cluster
		}
		st.ConfigMaps++
		var n int64
		for k, v := range cm.Data {
			n += int64(len(k) + len(v))
		}
		for k, v := range cm.BinaryData {
			n += int64(len(k) + len(v))
		}
		st.DataBytes += n
		if n > st.Largest {
			st.Largest, st.LargestName = n, cm.Name
		}
	}
	return st, nil
}

// planDoc is the part of the plan the checks read; a minimal view, so a
// plan that gains fields still reads.
type planDoc struct {
	Stages []struct {
		Namespace string `yaml:"namespace"`
		Scope     string `yaml:"scope"`
		Status    string `yaml:"status"`
		Evidence  struct {
			PlaintextSources []struct {
				LastSeen time.Time `yaml:"lastSeen"`
			} `yaml:"plaintextSources"`
		} `yaml:"evidence"`
		Risks []struct {
			Code     string `yaml:"code"`
			Severity string `yaml:"severity"`
		} `yaml:"risks"`
	} `yaml:"stages"`
}

// checkPlan compares every namespace's stage with the world: blocked with
// the expected codes where plaintext reached it in the window, ready
// elsewhere; the last-seen time of a stopped flow no earlier than its
// stop and late by less than a last-seen step plus 5m. It returns how many
// namespaces it checked and what disagreed.
func checkPlan(path string, w *World, window time.Duration) (int, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	var doc planDoc
	if err := yaml.NewDecoder(bufio.NewReaderSize(f, 1<<20)).Decode(&doc); err != nil {
		return 0, nil, fmt.Errorf("read the plan %s: %w", path, err)
	}
	exp := w.Expected(window)
	seen := map[string]bool{}
	var bad []string
	step := lastSeenStep(window) + 5*time.Minute
	for _, st := range doc.Stages {
		if st.Scope == "mesh" {
			if st.Status != "blocked" {
				bad = append(bad, fmt.Sprintf("mesh stage is %s, want blocked", st.Status))
			}
			continue
		}
		e, ok := exp[st.Namespace]
		if !ok {
			continue // not the world's (default, istio-system, the state namespace)
		}
		seen[st.Namespace] = true
		codes := map[string]bool{}
		for _, rk := range st.Risks {
			if rk.Severity == "block" {
				codes[rk.Code] = true
			}
		}
		want := "ready"
		if e.Blocked {
			want = "blocked"
		}
		if st.Status != want {
			bad = append(bad, fmt.Sprintf("%s (%s): %s, want %s (blocking risks %v)", st.Namespace, e.Class, st.Status, want, keys(codes)))
			continue
		}
		for _, code := range e.Codes {
			if !codes[code] {
				bad = append(bad, fmt.Sprintf("%s (%s): no %s risk (has %v)", st.Namespace, e.Class, code, keys(codes)))
			}
		}
		if len(codes) != len(e.Codes) {
			bad = append(bad, fmt.Sprintf("%s (%s): blocking risks %v, want %v", st.Namespace, e.Class, keys(codes), e.Codes))
		}
		if !e.LastSeen.IsZero() {
			for _, src := range st.Evidence.PlaintextSources {
				if src.LastSeen.Before(e.LastSeen) || src.LastSeen.After(e.LastSeen.Add(step)) {
					bad = append(bad, fmt.Sprintf("%s (%s): plaintext last seen %s, want between %s and %s", st.Namespace, e.Class,
						src.LastSeen.UTC().Format(time.RFC3339), e.LastSeen.UTC().Format(time.RFC3339), e.LastSeen.Add(step).UTC().Format(time.RFC3339)))
				}
			}
		}
	}
	for _, n := range w.Names {
		if !seen[n] {
			bad = append(bad, fmt.Sprintf("%s: no stage", n))
		}
	}
	return len(seen), bad, nil
}

// lastSeenStep is internal/telemetry's Step: window/168, at least a minute.
func lastSeenStep(window time.Duration) time.Duration {
	step := (window + 167) / 168
	step = ((step + time.Second - 1) / time.Second) * time.Second
	return max(step, min(window, time.Minute))
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// BuildProduct builds ../cmd/mtls-migrate (the repository holding this
// sandbox, found from the working directory up) into dir.
func BuildProduct(dir string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "mtls-migrate")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/mtls-migrate")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/mtls-migrate in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/mtls-migrate/mtls-migrate\n")) {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("the mtls-migrate repository (go.mod of module github.com/mtls-migrate/mtls-migrate) is not above the working directory")
		}
		d = parent
	}
}

// FormatTable renders results as the table quoted in notes.
func FormatTable(rs []*Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-6s %-22s %-28s %-14s %-8s %-8s %-14s %-7s %-7s %-8s %-8s %-8s %s\n",
		"NS", "LOAD BEFORE s (Svc/s)", "LOAD AFTER s (obj/s, Svc/s)", "PLAN s (replay)", "RSS MB", "QUERIES", "PROM MB (wire)", "PLAN MB", "STATE", "STATUS s", "RSS MB", "CHECKED", "PLAN IN CLUSTER (publish s, CMs, largest KiB; Job's status s)")
	for _, r := range rs {
		before := "-"
		if r.Baseline != nil {
			before = fmt.Sprintf("%.1f (%.0f)", r.Baseline.Took.Seconds(), r.Baseline.ServicesPerSec)
			if !r.Baseline.Complete {
				before = fmt.Sprintf("%d/%d in %.0f (%.0f)", r.Baseline.Services, r.Services, r.Baseline.Took.Seconds(), r.Baseline.ServicesPerSec)
			}
		}
		after := "-"
		if r.Load != nil {
			after = fmt.Sprintf("%.1f (%.0f, %.0f)", r.Load.Took.Seconds(), r.Load.ObjectsPerSec, r.Load.ServicesPerSec)
		}
		inCluster := fmt.Sprintf("%.2f, %d, %.0f; %.2f", r.Publish.Wall.Seconds(), r.Published.ConfigMaps, float64(r.Published.Largest)/1024, r.StatusInCluster.Wall.Seconds())
		if r.PublishErr != "" {
			inCluster = "refused: " + r.PublishErr
		}
		fmt.Fprintf(&b, "%-6d %-22s %-28s %-14s %-8d %-8d %-14s %-7.2f %-7s %-8.2f %-8d %-8s %s\n",
			r.Namespaces, before, after, fmt.Sprintf("%.2f (%.2f)", r.Plan.Wall.Seconds(), r.PlanReplayed.Wall.Seconds()), r.Plan.MaxRSS>>20, r.PlanProm.Queries,
			fmt.Sprintf("%.2f (%.2f)", mb(r.PlanProm.JSONBytes), mb(r.PlanProm.WireBytes)), mb(r.PlanBytes),
			fmt.Sprintf("%d/%dB", r.State.ConfigMaps, r.State.DataBytes), r.Status.Wall.Seconds(), r.Status.MaxRSS>>20,
			fmt.Sprintf("%d/%d", r.Checked-len(r.Mismatches), r.Namespaces), inCluster)
	}
	return b.String()
}

// ListStat is one list of every pod.
type ListStat struct {
	ContentType string
	Took        time.Duration
	Bytes       int64
	Pods        int
}

// listPods lists every pod in pages of 500 with the given encoding and
// decodes them, as client-go's pager does for the tool.
func listPods(ctx context.Context, base *rest.Config, contentType string) (ListStat, error) {
	st := ListStat{ContentType: contentType}
	cfg := rest.CopyConfig(base)
	cfg.AcceptContentTypes, cfg.ContentType = contentType, contentType
	var n countingReads
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &countingTransport{rt, &n} })
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return st, err
	}
	began := time.Now()
	opts := metav1.ListOptions{Limit: 500}
	for {
		l, err := kube.CoreV1().Pods("").List(ctx, opts)
		if err != nil {
			return st, fmt.Errorf("list pods (%s): %w", contentType, err)
		}
		st.Pods += len(l.Items)
		if l.Continue == "" {
			break
		}
		opts.Continue = l.Continue
	}
	st.Took, st.Bytes = time.Since(began), n.n.Load()
	return st, nil
}

type countingReads struct{ n atomic.Int64 }

type countingTransport struct {
	rt http.RoundTripper
	n  *countingReads
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if resp != nil && resp.Body != nil {
		resp.Body = &countingBody{resp.Body, t.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *countingReads
}

func (b *countingBody) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	b.n.n.Add(int64(k))
	return k, err
}
