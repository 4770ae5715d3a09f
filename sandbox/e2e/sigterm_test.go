package e2e

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"reflect"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
)

// TestE2ESIGTERMDuringTheSoakRollsBack: Kubernetes stops a Job's pod with
// SIGTERM (a node drain, `kubectl delete job`, activeDeadlineSeconds), then
// SIGKILL after the grace period. A run told to stop in the middle of its
// soak cannot say the stage holds: it must roll back within the grace
// period, record rolled-back, leave the PeerAuthentications exactly as it
// found them, and release the lock (renewal goes on until the release, so
// the Lease cannot expire mid-rollback for another runner to take).
func TestE2ESIGTERMDuringTheSoakRollsBack(t *testing.T) {
	s := startScenario(t, "trap-existing-policy.yaml", meshedOnly)
	createStateNamespace(t, s)
	p := &product{t: t, bin: buildProduct(t), s: s}
	waitTelemetry(t, s, 10*time.Second)
	plan, planPath := p.plan(t.TempDir())
	st, ok := stageOf(plan, "inventory")
	if !ok || st.Status == plans.StatusBlocked {
		t.Fatalf("inventory has no ready stage (risks %v)", codes(st))
	}
	digest, err := plans.Digest(plan)
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	before := policies(t, s, "inventory")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	events := watchStage(ctx, t, kc, "", digest, st.Number)

	cmd := exec.Command(p.bin, "apply", "--plan", planPath, "--stage", itoa(st.Number), "--state-namespace", stateNamespace,
		"--soak", "60s", "--settle", "3s", "--gate-interval", "2s", "--lock-ttl", "4s",
		"--kubeconfig", s.KubeconfigPath(), "--prometheus-url", s.PrometheusURL())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	timeout := time.After(90 * time.Second)
soaking:
	for {
		select {
		case ss, ok := <-events:
			if !ok {
				t.Fatal("the state watch ended before the soak")
			}
			if ss.Phase == state.Soaking {
				break soaking
			}
		case err := <-exited:
			t.Fatalf("the run ended (%v) before its soak\n%s\n%s", err, stdout.String(), tail(stderr.String(), 30))
		case <-timeout:
			_ = cmd.Process.Kill()
			t.Fatalf("the stage never reached its soak\n%s", tail(stderr.String(), 30))
		}
	}
	if m, _ := s.EffectiveMode("inventory", "inventory", 8080); m != dataplane.ModeStrict {
		t.Logf("inventory enforces %s at the SIGTERM", m)
	}
	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Kubernetes' default grace period is 30 s; the run must be out by then.
	var runErr error
	select {
	case runErr = <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the run was still going 30 s after SIGTERM: Kubernetes would SIGKILL it mid-rollback\n%s", tail(stderr.String(), 30))
	}
	t.Logf("MEASURE SIGTERM -> exit: %s", time.Since(sent).Round(100*time.Millisecond))
	var ee *exec.ExitError
	if !errors.As(runErr, &ee) || ee.ExitCode() != exitRolledBack {
		t.Errorf("exit after SIGTERM: %v, want %d (rolled back)\n%s\n%s", runErr, exitRolledBack, stdout.String(), tail(stderr.String(), 20))
	}
	if ph := phaseOf(stageState(kc, digest, st.Number)); ph != state.RolledBack {
		t.Errorf("state after SIGTERM: %s, want rolled-back", ph)
	}
	if got := policies(t, s, "inventory"); !reflect.DeepEqual(got, before) {
		t.Errorf("PeerAuthentications after SIGTERM:\n got %+v\nwant %+v", got, before)
	}
	if why := eventually(10*time.Second, func() string {
		if out := s.ProbePod(ctx, "inventory", "inventory", 8080, false); out != dataplane.OutcomeSuccess {
			return "inventory:8080 refuses plaintext after the rollback: " + out
		}
		return ""
	}); why != "" {
		t.Error(why)
	}
	leases, err := kc.CoordinationV1().Leases(stateNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Items {
		if h := l.Spec.HolderIdentity; h != nil && *h != "" {
			t.Errorf("Lease %s still held by %q after the run exited: the next scheduled run would wait it out", l.Name, *h)
		}
	}
}
