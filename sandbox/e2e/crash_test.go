package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// stageState reads the stage's record from the state ConfigMap, as the next
// runner would; nil when there is none.
// markProbed records in the migration state that plaintext probes into ns
// end at until, as the tool does for its own (state.ProbedAt).
func markProbed(t *testing.T, kc kubernetes.Interface, ns string, until time.Time) {
	t.Helper()
	err := state.NewConfigMapStore(kc, stateNamespace).Update(context.Background(), func(s *state.State) error {
		if s.ProbedAt == nil {
			s.ProbedAt = map[string]time.Time{}
		}
		s.ProbedAt[ns] = until.UTC()
		return nil
	})
	if err != nil {
		t.Fatalf("mark the test's plaintext probes in the state: %v", err)
	}
	time.Sleep(time.Until(until))
}

func stageState(kc kubernetes.Interface, digest string, n int) *state.StageState {
	st, err := state.NewConfigMapStore(kc, stateNamespace).Load(context.Background())
	if err != nil || st.Plan(digest) == nil {
		return nil
	}
	return st.Plan(digest).Stage(n)
}

// stagePhase is the stage's phase in the state, and whether the apply's
// target UID is recorded.
func stagePhase(kc kubernetes.Interface, digest string, n int) (state.Phase, bool) {
	ss := stageState(kc, digest, n)
	return phaseOf(ss), ss != nil && ss.Target != nil && ss.Target.UID != ""
}

// stageOfConfigMap is stage n of plan digest if cm is the state's shard
// that holds it.
func stageOfConfigMap(cm *corev1.ConfigMap, digest string, n int) *state.StageState {
	d, stages, ok := state.StagesOf(cm)
	if !ok || d != digest {
		return nil
	}
	for i := range stages {
		if stages[i].Number == n {
			return &stages[i]
		}
	}
	return nil
}

func phaseOf(ss *state.StageState) state.Phase {
	if ss == nil {
		return ""
	}
	return ss.Phase
}

// watchStage sends the stage's record on every write to the state's
// ConfigMaps after resourceVersion rv (a watch, not a poll: a phase held for
// one API call, like rolling-back, is not missed).
func watchStage(ctx context.Context, t *testing.T, kc kubernetes.Interface, rv, digest string, n int) <-chan *state.StageState {
	t.Helper()
	w, err := kc.CoreV1().ConfigMaps(stateNamespace).Watch(ctx, metav1.ListOptions{
		LabelSelector: state.ShardLabel + "=" + state.ConfigMapName, ResourceVersion: rv,
	})
	if err != nil {
		t.Fatalf("watch the state ConfigMap: %v", err)
	}
	out := make(chan *state.StageState, 64)
	go func() {
		defer w.Stop()
		defer close(out)
		for ev := range w.ResultChan() {
			cm, ok := ev.Object.(*corev1.ConfigMap)
			if !ok || (ev.Type != watch.Added && ev.Type != watch.Modified) {
				continue
			}
			if ss := stageOfConfigMap(cm, digest, n); ss != nil {
				select {
				case out <- ss:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// lineWatcher is a process's stderr: it keeps everything and reports the
// first line containing match.
type lineWatcher struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	part  string
	match string
	hit   chan string
}

func (l *lineWatcher) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(b)
	l.part += string(b)
	for {
		i := strings.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		line := l.part[:i]
		l.part = l.part[i+1:]
		if l.match != "" && strings.Contains(line, l.match) {
			select {
			case l.hit <- line:
			default:
			}
		}
	}
	return len(b), nil
}

func (l *lineWatcher) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// liveModes maps each PeerAuthentication of ns to its namespace-wide mTLS
// mode.
func liveModes(t *testing.T, s *sandbox.Sandbox, ns string) map[string]string {
	t.Helper()
	list, err := dyn(t, s).Resource(dataplane.PeerAuthenticationGVR).Namespace(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list PeerAuthentications in %s: %v", ns, err)
	}
	out := map[string]string{}
	for _, u := range list.Items {
		mode, _, _ := unstructured.NestedString(u.Object, "spec", "mtls", "mode")
		out[u.GetName()] = mode
	}
	return out
}

// eventually retries check for up to d; it returns the last failure ("" on
// success).
func eventually(d time.Duration, check func() string) string {
	deadline := time.Now().Add(d)
	for {
		why := check()
		if why == "" || time.Now().After(deadline) {
			return why
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestE2ECrashedRunIsResumed kills `apply` with SIGKILL at each step of a
// stage the issue names (after the snapshot, after the apply, during the
// probes, during the soak, during the rollback), then runs `apply --next`
// as the next scheduled run would. Every time, the stage must end either
// done with STRICT enforced and healthy flows, or rolled back (or back to
// pending) with the namespace's PeerAuthentications exactly as before —
// never STRICT left with the stage not done. The cases share one sandbox
// and are reset between them with `mtls-migrate rollback`.
//
// The scenario is trap-existing-policy without its sidecar-less auditor and
// with a meshed flow into storefront, so both namespaces receive mTLS
// traffic only: inventory (a pre-existing namespace-wide policy,
// legacy-permissive, patched in place) can be taken STRICT healthily, and
// storefront (a policy the stage creates) carries a plan gate that always
// fails (vector(1) >= 2), which forces its rollback.
// meshedOnly is trap-existing-policy without its sidecar-less auditor and
// with a meshed flow into storefront: both namespaces receive mTLS only.
func meshedOnly(scn *scenario.Scenario) {
	flows := scn.Flows[:0]
	for _, f := range scn.Flows {
		if f.Name != "auditor-inventory" {
			flows = append(flows, f)
		}
	}
	scn.Flows = append(flows, scenario.Flow{Name: "inventory-storefront", From: "inventory/inventory", To: "storefront.storefront:80", Rate: 2})
}

func TestE2ECrashedRunIsResumed(t *testing.T) {
	s := startScenario(t, "trap-existing-policy.yaml", meshedOnly)
	createStateNamespace(t, s)
	p := &product{t: t, bin: buildProduct(t), s: s}
	waitTelemetry(t, s, 10*time.Second)
	plan, planPath := p.plan(t.TempDir())
	inventory, ok := stageOf(plan, "inventory")
	if !ok || inventory.Status == plans.StatusBlocked {
		t.Fatalf("inventory has no ready stage (risks %v)", codes(inventory))
	}
	storefront, ok := stageOf(plan, "storefront")
	if !ok || storefront.Status == plans.StatusBlocked {
		t.Fatalf("storefront has no ready stage (risks %v)", codes(storefront))
	}
	for i := range plan.Stages {
		if plan.Stages[i].Number == storefront.Number {
			plan.Stages[i].Gates = append(plan.Stages[i].Gates, plans.Gate{
				Name: "always-fails", Query: "vector(1)", Comparison: plans.GreaterOrEqual, Threshold: 2,
			})
		}
	}
	_, digest := savePlan(t, planPath, plan)
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	before := map[string]map[string]policySnapshot{
		"inventory":  policies(t, s, "inventory"),
		"storefront": policies(t, s, "storefront"),
	}
	t.Logf("PeerAuthentications before: %+v", before)
	common := []string{"--plan", planPath, "--state-namespace", stateNamespace, "--soak", "12s", "--settle", "3s",
		"--gate-interval", "2s", "--lock-ttl", "4s", "--probe-retry", "10s"}

	type killPoint struct {
		name  string
		stage plans.Stage
		// The run is killed at the first state write atState accepts, or
		// at the first stderr line containing atLog.
		atState func(*state.StageState) bool
		atLog   string
	}
	killPoints := []killPoint{
		{name: "after the snapshot", stage: inventory,
			atState: func(ss *state.StageState) bool { return ss.Phase == state.Applying }},
		{name: "after the apply", stage: inventory,
			atState: func(ss *state.StageState) bool {
				return ss.Phase == state.Applying && ss.Target != nil && ss.Target.UID != ""
			}},
		{name: "during the probes", stage: inventory, atLog: "step=probes"},
		{name: "during the soak", stage: inventory,
			atState: func(ss *state.StageState) bool { return ss.Phase == state.Soaking }},
		{name: "during the rollback (state rolling-back)", stage: storefront,
			atState: func(ss *state.StageState) bool {
				return ss.Phase == state.RollingBack || ss.Phase == state.RolledBack
			}},
		{name: "during the rollback (failing gate logged)", stage: storefront, atLog: "step=rollback"},
	}
	outcomes := make([]string, 0, len(killPoints))
	for _, kp := range killPoints {
		ns, n := kp.stage.Namespace, kp.stage.Number
		t.Run(kp.name, func(t *testing.T) {
			s.ResetFlowStats()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			rv := ""
			if cm, err := kc.CoreV1().ConfigMaps(stateNamespace).Get(ctx, state.ConfigMapName, metav1.GetOptions{}); err == nil {
				rv = cm.ResourceVersion
			}
			events := watchStage(ctx, t, kc, rv, digest, n)

			args := append([]string{"apply", "--stage", itoa(n)}, common...)
			args = append(args, "--kubeconfig", s.KubeconfigPath(), "--prometheus-url", s.PrometheusURL())
			cmd := exec.Command(p.bin, args...)
			stderr := &lineWatcher{match: kp.atLog, hit: make(chan string, 1)}
			var stdout bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()

			var why string
			timeout := time.After(90 * time.Second)
		wait:
			for {
				select {
				case ss, ok := <-events:
					if !ok {
						events = nil // the watch ended; the stderr trigger or the timeout remain
						continue
					}
					if kp.atState != nil && kp.atState(ss) {
						_ = cmd.Process.Signal(syscall.SIGKILL)
						why = fmt.Sprintf("state write seen: phase %s, target UID recorded %v", ss.Phase, ss.Target != nil && ss.Target.UID != "")
						break wait
					}
				case line := <-stderr.hit:
					_ = cmd.Process.Signal(syscall.SIGKILL)
					why = "stderr line seen: " + line
					break wait
				case err := <-exited:
					t.Fatalf("the run ended (%v) before %s\n--- stdout\n%s--- stderr\n%s", err, kp.name, stdout.String(), tail(stderr.String(), 40))
				case <-timeout:
					_ = cmd.Process.Signal(syscall.SIGKILL)
					<-exited
					t.Fatalf("the stage never reached %s\n--- stderr\n%s", kp.name, tail(stderr.String(), 40))
				}
			}
			<-exited
			left := stageState(kc, digest, n)
			t.Logf("KILLED %s: %s; state left %s; live PeerAuthentications %v", kp.name, why, phaseOf(left), liveModes(t, s, ns))
			t.Logf("killed run's stderr (tail):\n%s", tail(stderr.String(), 6))
			if left == nil {
				// Killed between writing the record's new shard and the
				// root that names it (the store's commit): the record was
				// never committed, and the change comes after it. Nothing
				// changed, so there is nothing to resume; `apply --next`
				// would just run the plan's first stage, which is not this
				// case's subject. Wait out the dead run's lock for the next
				// case.
				for pns, want := range before {
					if got := policies(t, s, pns); !reflect.DeepEqual(got, want) {
						t.Fatalf("killed before its record was committed, yet the PeerAuthentications of %s changed:\n got %+v\nwant %+v", pns, got, want)
					}
				}
				outcomes = append(outcomes, kp.name+": killed before the record was committed; nothing changed")
				time.Sleep(5 * time.Second)
				return
			}

			// The next scheduled run: it waits out the dead runner's lock.
			var r result
			for i := 0; i < 10; i++ {
				r = p.run(ctx, append([]string{"apply", "--next"}, common...)...)
				if r.code != 5 {
					break
				}
				time.Sleep(2 * time.Second)
			}
			t.Logf("resume run: %s", r)
			ph := phaseOf(stageState(kc, digest, n))
			modes := liveModes(t, s, ns)
			switch {
			case r.code == 0 && ph == state.Done:
				if why := eventually(10*time.Second, func() string {
					for w, ports := range workloadPorts(s, ns) {
						for _, port := range ports {
							if out := s.ProbePod(ctx, ns, w, port, false); out == dataplane.OutcomeSuccess {
								return fmt.Sprintf("%s/%s:%d accepts plaintext", ns, w, port)
							}
							if out := s.ProbePod(ctx, ns, w, port, true); out != dataplane.OutcomeSuccess {
								return fmt.Sprintf("%s/%s:%d refuses mTLS: %s", ns, w, port, out)
							}
						}
					}
					return ""
				}); why != "" {
					t.Errorf("stage done but not STRICT in the data plane: %s", why)
				}
				if f := failures(s); len(f) > 0 {
					t.Errorf("stage done but mTLS flows failed during the case (ground truth): %v", f)
				}
				outcomes = append(outcomes, kp.name+": done (STRICT enforced, flows healthy), reset with rollback")
				// Put it back for the next kill point.
				if rb := p.run(ctx, "rollback", "--plan", planPath, "--stage", itoa(n), "--state-namespace", stateNamespace); rb.code != 0 {
					t.Fatalf("rollback: %s", rb)
				}
			case (r.code == exitRolledBack && ph == state.RolledBack) || (r.code == 0 && ph == state.Pending):
				for name, mode := range modes {
					if mode == "STRICT" {
						t.Errorf("PeerAuthentication %s/%s is STRICT while the stage is %s", ns, name, ph)
					}
				}
				if why := eventually(10*time.Second, func() string {
					for w, ports := range workloadPorts(s, ns) {
						for _, port := range ports {
							if out := s.ProbePod(ctx, ns, w, port, false); out != dataplane.OutcomeSuccess {
								return fmt.Sprintf("%s/%s:%d refuses plaintext: %s", ns, w, port, out)
							}
						}
					}
					return ""
				}); why != "" {
					t.Errorf("stage %s but plaintext is not accepted again: %s", ph, why)
				}
				// Those ground-truth probes are plaintext clients like any
				// other to the next pre-flight (it looks back to the plan,
				// new series included): mark them as the tool marks its
				// own, a few scrapes past the last one.
				markProbed(t, kc, ns, time.Now().Add(3*time.Second))
				if f := failures(s); len(f) > 0 {
					t.Logf("flow failures during the case (ground truth): %v", f)
				}
				outcomes = append(outcomes, fmt.Sprintf("%s: %s (exit %d), PeerAuthentications as before", kp.name, ph, r.code))
			default:
				t.Fatalf("after the resume: exit %d, phase %s, live PeerAuthentications %v", r.code, ph, modes)
			}
			for pns, want := range before {
				if got := policies(t, s, pns); !reflect.DeepEqual(got, want) {
					t.Fatalf("PeerAuthentications of %s not as before:\n got %+v\nwant %+v", pns, got, want)
				}
			}
		})
	}
	t.Logf("kill points:\n  %s", strings.Join(outcomes, "\n  "))
}
