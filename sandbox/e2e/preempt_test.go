package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// TestE2ERollbackDuringTheSoakWinsOverTheRunningApply: while `apply` soaks
// a stage, a person's `rollback` is refused (the lock is held) unless
// --preempt; with it the rollback restores the policies, and the running
// apply stops at its next state write without writing done over it.
func TestE2ERollbackDuringTheSoakWinsOverTheRunningApply(t *testing.T) {
	s := startScenario(t, "trap-existing-policy.yaml", nil)
	createStateNamespace(t, s)
	p := &product{t: t, bin: buildProduct(t), s: s}
	waitTelemetry(t, s, 10*time.Second)
	plan, planPath := p.plan(t.TempDir())
	var stage plans.Stage
	for _, st := range plan.Stages {
		if st.Scope != plans.ScopeMesh && st.Status != plans.StatusBlocked {
			stage = st
			break
		}
	}
	if stage.Number == 0 {
		t.Fatalf("no stage to apply in %+v", plan.Stages)
	}
	digest, err := plans.Digest(plan)
	if err != nil {
		t.Fatal(err)
	}
	before := policies(t, s, stage.Namespace)
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	args := append(applyArgs(planPath, stage.Number, 90*time.Second), "--kubeconfig", s.KubeconfigPath(), "--prometheus-url", s.PrometheusURL())
	apply := exec.CommandContext(ctx, p.bin, args...)
	var applyOut, applyErr bytes.Buffer
	apply.Stdout, apply.Stderr = &applyOut, &applyErr
	if err := apply.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- apply.Wait() }()
	if why := eventually(60*time.Second, func() string {
		if ph, _ := stagePhase(kc, digest, stage.Number); ph != state.Soaking {
			return "stage is " + string(ph)
		}
		return ""
	}); why != "" {
		t.Fatalf("the apply never reached the soak: %s\n%s", why, tail(applyErr.String(), 30))
	}

	rb := p.run(ctx, "rollback", "--plan", planPath, "--stage", itoa(stage.Number), "--state-namespace", stateNamespace)
	if rb.code != 5 || !strings.Contains(rb.stderr+rb.stdout, "--preempt") {
		t.Fatalf("rollback while the apply holds the lock: want exit 5 naming --preempt, got %s", rb)
	}
	rb = p.run(ctx, "rollback", "--plan", planPath, "--stage", itoa(stage.Number), "--state-namespace", stateNamespace, "--preempt")
	if rb.code != 0 {
		t.Fatalf("rollback --preempt: %s", rb)
	}
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("the apply went on soaking after the rollback took its stage\n%s", tail(applyErr.String(), 30))
	}
	if code := apply.ProcessState.ExitCode(); code == 0 || !strings.Contains(applyOut.String()+applyErr.String(), "took it over") {
		t.Fatalf("apply exit %d; want it stopped, naming the takeover\n--- stdout\n%s--- stderr\n%s", code, applyOut.String(), tail(applyErr.String(), 30))
	}
	ss := stageState(kc, digest, stage.Number)
	if ss == nil || ss.Phase != state.RolledBack {
		t.Fatalf("stage after the preempting rollback: %+v", ss)
	}
	for _, h := range ss.History {
		if h.Phase == state.Done {
			t.Fatalf("done was written: %+v", ss.History)
		}
	}
	if got := policies(t, s, stage.Namespace); !reflect.DeepEqual(got, before) {
		t.Fatalf("PeerAuthentications of %s not as before:\n got %+v\nwant %+v", stage.Namespace, got, before)
	}
	// The lock was the apply's; it is free again for the next run.
	if l, err := kc.CoordinationV1().Leases(stateNamespace).Get(ctx, "mtls-migrate-lock", metav1.GetOptions{}); err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
		t.Errorf("the lock is still held by %s", *l.Spec.HolderIdentity)
	}
}
