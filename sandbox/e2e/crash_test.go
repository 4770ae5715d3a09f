package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"reflect"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// stagePhase reads the stage's phase from the state ConfigMap, as the next
// runner would.
func stagePhase(kc kubernetes.Interface, digest string, n int) (state.Phase, bool) {
	cm, err := kc.CoreV1().ConfigMaps(stateNamespace).Get(context.Background(), state.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return "", false
	}
	var st state.State
	if json.Unmarshal([]byte(cm.Data[state.Key]), &st) != nil || st.Plan(digest) == nil || st.Plan(digest).Stage(n) == nil {
		return "", false
	}
	ss := st.Plan(digest).Stage(n)
	return ss.Phase, ss.Target != nil && ss.Target.UID != ""
}

// TestE2ECrashedRunIsResumed kills `apply` with SIGKILL at each step of a
// stage it can be caught at by polling the state (after the apply, during
// the probes/settle, during the soak, during the rollback), then runs
// `apply --next`: the stage must end done with healthy flows, or rolled back
// with the PeerAuthentications exactly as before.
func TestE2ECrashedRunIsResumed(t *testing.T) {
	s := startScenario(t, "trap-existing-policy.yaml", nil)
	createStateNamespace(t, s)
	p := &product{t: t, bin: buildProduct(t), s: s}
	waitTelemetry(t, s, 10*time.Second)
	plan, planPath := p.plan(t.TempDir())
	digest, err := plans.Digest(plan)
	if err != nil {
		t.Fatal(err)
	}
	var stage *plans.Stage
	for i := range plan.Stages {
		if plan.Stages[i].Status != plans.StatusBlocked {
			stage = &plan.Stages[i]
			break
		}
	}
	if stage == nil {
		t.Fatal("the plan has no ready stage")
	}
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	before := policies(t, s, stage.Namespace)
	flags := []string{"--lock-ttl", "4s", "--probe-retry", "10s"}

	killPoints := []struct {
		name string
		at   func(state.Phase, bool) bool
	}{
		{"after the apply", func(ph state.Phase, applied bool) bool { return ph == state.Applying && applied }},
		{"during the soak", func(ph state.Phase, _ bool) bool { return ph == state.Soaking }},
	}
	for _, kp := range killPoints {
		t.Run(kp.name, func(t *testing.T) {
			args := append(applyArgs(planPath, stage.Number, 20*time.Second, flags...), "--kubeconfig", s.KubeconfigPath(), "--prometheus-url", s.PrometheusURL())
			cmd := exec.Command(p.bin, args...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(90 * time.Second)
			killed := false
			for time.Now().Before(deadline) {
				if ph, applied := stagePhase(kc, digest, stage.Number); kp.at(ph, applied) {
					_ = cmd.Process.Signal(syscall.SIGKILL)
					killed = true
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			_ = cmd.Wait()
			if !killed {
				t.Fatalf("the stage never reached %s", kp.name)
			}
			ph, _ := stagePhase(kc, digest, stage.Number)
			t.Logf("killed %s; state says %s", kp.name, ph)

			// The next scheduled run: it waits out the dead runner's lock.
			var r result
			for i := 0; i < 10; i++ {
				r = p.run(context.Background(), "apply", "--plan", planPath, "--next", "--state-namespace", stateNamespace,
					"--settle", "2s", "--gate-interval", "2s", "--soak", "20s", "--lock-ttl", "4s", "--probe-retry", "10s")
				if r.code != 5 {
					break
				}
				time.Sleep(2 * time.Second)
			}
			t.Logf("resume run: %s", r)
			ph, _ = stagePhase(kc, digest, stage.Number)
			switch {
			case r.code == 0 && ph == state.Done:
				if f := failures(s); len(f) > 0 {
					t.Logf("flow failures (ground truth): %v", f)
				}
				// Put it back for the next kill point.
				if rb := p.run(context.Background(), "rollback", "--plan", planPath, "--stage", itoa(stage.Number), "--state-namespace", stateNamespace); rb.code != 0 {
					t.Fatalf("rollback: %s", rb)
				}
			case r.code == 3 && ph == state.RolledBack:
			default:
				t.Fatalf("after the resume: exit %d, phase %s", r.code, ph)
			}
			if got := policies(t, s, stage.Namespace); !reflect.DeepEqual(got, before) {
				t.Fatalf("PeerAuthentications not as before:\n got %+v\nwant %+v", got, before)
			}
		})
	}
}
