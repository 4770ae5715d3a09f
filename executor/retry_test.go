package executor

import (
	"context"
	"errors"
	"strings"
	"testing"

	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	applyv1 "istio.io/client-go/pkg/applyconfiguration/security/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	k8stesting "k8s.io/client-go/testing"

	"github.com/mtls-migrate/mtls-migrate/internal/kuberetry"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
)

var paGR = schema.GroupResource{Group: "security.istio.io", Resource: "peerauthentications"}

// instantRetries makes kuberetry's backoff zero for one test.
func instantRetries(t *testing.T) {
	old := kuberetry.Default
	kuberetry.Default = wait.Backoff{Steps: old.Steps, Factor: 2}
	t.Cleanup(func() { kuberetry.Default = old })
}

// scriptedWriter fails with errs in turn, then applies through fakeWriter;
// before runs before each call (a concurrent writer).
type scriptedWriter struct {
	inner  *fakeWriter
	errs   []error
	calls  int
	before func()
}

// call runs before and returns the next scripted error, if any.
func (w *scriptedWriter) call() error {
	w.calls++
	if w.before != nil {
		w.before()
	}
	if len(w.errs) == 0 {
		return nil
	}
	err := w.errs[0]
	w.errs = w.errs[1:]
	return err
}

func (w *scriptedWriter) Apply(ctx context.Context, cfg *applyv1.PeerAuthenticationApplyConfiguration, dry bool) (*securityv1.PeerAuthentication, error) {
	if err := w.call(); err != nil {
		return nil, err
	}
	return w.inner.Apply(ctx, cfg, dry)
}

func (w *scriptedWriter) Create(ctx context.Context, pa *securityv1.PeerAuthentication, dry bool) (*securityv1.PeerAuthentication, error) {
	if err := w.call(); err != nil {
		return nil, err
	}
	return w.inner.Create(ctx, pa, dry)
}

func TestTransientAPIErrorsAreRetried(t *testing.T) {
	instantRetries(t)
	e := newEnv(t, true)
	// PeerAuthentication reads fail twice (429, 503) before answering.
	reads := 0
	e.istio.PrependReactor("list", "peerauthentications", func(k8stesting.Action) (bool, runtime.Object, error) {
		reads++
		switch reads {
		case 1:
			return true, nil, apierrors.NewTooManyRequests("slow down", 0)
		case 2:
			return true, nil, apierrors.NewServiceUnavailable("etcd leader change")
		}
		return false, nil, nil
	})
	w := &scriptedWriter{errs: []error{apierrors.NewServerTimeout(paGR, "patch", 0), apierrors.NewInternalError(errors.New("boom"))}}
	res, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) {
		w.inner = &fakeWriter{e: e}
		d.Writer = w
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != OutcomeDone || e.phase() != state.Done {
		t.Fatalf("outcome %s phase %s", res.Outcome, e.phase())
	}
	if w.calls != 3 || reads < 3 {
		t.Fatalf("apply calls %d (want 3), list calls %d (want >= 3)", w.calls, reads)
	}
}

func TestPermanentAPIErrorOnApplyGivesUpAndRollsBack(t *testing.T) {
	instantRetries(t)
	e := newEnv(t, true)
	w := &scriptedWriter{}
	for i := 0; i < 100; i++ {
		w.errs = append(w.errs, apierrors.NewServiceUnavailable("down"))
	}
	_, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) {
		w.inner = &fakeWriter{e: e}
		d.Writer = w
	})
	if err == nil || !strings.Contains(err.Error(), "down") {
		t.Fatalf("err = %v, want the 503 after the retries", err)
	}
	if w.calls != kuberetry.Default.Steps {
		t.Fatalf("apply calls %d, want %d (bounded)", w.calls, kuberetry.Default.Steps)
	}
	if pa := e.policy(); pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE {
		t.Fatalf("policy changed: %v", pa.Spec.GetMtls().GetMode())
	}
}

func TestConflictOnApplyReReadsAndDoesNotOverwriteSomeoneElsesChange(t *testing.T) {
	instantRetries(t)
	e := newEnv(t, true)
	w := &scriptedWriter{errs: []error{apierrors.NewConflict(paGR, "default", errors.New("the object has been modified"))}}
	// Someone sets DISABLE between our snapshot and our apply.
	w.before = func() {
		pa := e.policy().DeepCopy()
		pa.Spec.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_DISABLE
		pa.ResourceVersion = "2"
		if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Update(context.Background(), pa, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	_, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) {
		w.inner = &fakeWriter{e: e}
		d.Writer = w
	})
	if !IsRefused(err) || !strings.Contains(err.Error(), "someone else") {
		t.Fatalf("err = %v, want a refusal naming the conflict", err)
	}
	if w.calls != 1 {
		t.Fatalf("apply calls %d, want 1 (a 409 is not retried blindly)", w.calls)
	}
	if pa := e.policy(); pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_DISABLE {
		t.Fatalf("their change was overwritten: mode %v", pa.Spec.GetMtls().GetMode())
	}
	if e.phase() != state.Pending {
		t.Fatalf("phase %s, want pending (nothing of ours landed)", e.phase())
	}
}

func TestConflictOnApplyOfOurOwnLandedWriteIsAccepted(t *testing.T) {
	instantRetries(t)
	e := newEnv(t, true)
	// The first apply lands but its response is lost (timeout); the retry
	// then gets 409 because the object's version moved: it was our write.
	first := true
	inner := &fakeWriter{e: e}
	var landed applyFunc = func(ctx context.Context, cfg *applyv1.PeerAuthenticationApplyConfiguration, dry bool) (*securityv1.PeerAuthentication, error) {
		if first {
			first = false
			if _, err := inner.Apply(ctx, cfg, dry); err != nil {
				return nil, err
			}
			return nil, apierrors.NewTimeoutError("response lost", 0)
		}
		return nil, apierrors.NewConflict(paGR, "default", errors.New("the object has been modified"))
	}
	res, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) { d.Writer = landed })
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != OutcomeDone || e.phase() != state.Done {
		t.Fatalf("outcome %s phase %s", res.Outcome, e.phase())
	}
}

type applyFunc func(context.Context, *applyv1.PeerAuthenticationApplyConfiguration, bool) (*securityv1.PeerAuthentication, error)

func (f applyFunc) Apply(ctx context.Context, cfg *applyv1.PeerAuthenticationApplyConfiguration, dry bool) (*securityv1.PeerAuthentication, error) {
	return f(ctx, cfg, dry)
}

func (f applyFunc) Create(context.Context, *securityv1.PeerAuthentication, bool) (*securityv1.PeerAuthentication, error) {
	return nil, errors.New("this test's stage patches an existing policy")
}

// TestCreateNeverAdoptsAPolicySomeoneElseCreated: the stage creates its
// policy; someone creates that name between the snapshot and the apply. The
// stage must not take their object over (a rollback would delete it).
func TestCreateNeverAdoptsAPolicySomeoneElseCreated(t *testing.T) {
	instantRetries(t)
	e := newEnv(t, false)
	theirs := &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "cart", UID: "uid-theirs", Labels: map[string]string{"team": "cart"}},
		Spec:       apisecurity.PeerAuthentication{Mtls: &apisecurity.PeerAuthentication_MutualTLS{Mode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE}},
	}
	w := &scriptedWriter{inner: &fakeWriter{e: e}}
	w.before = func() {
		if w.calls == 1 {
			if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Create(context.Background(), theirs, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, err, _ := e.run(testPlan(false, policyDigest()), func(d *Deps, _ *Options) { d.Writer = w })
	if !IsRefused(err) || !strings.Contains(err.Error(), "does not adopt it") {
		t.Fatalf("err = %v, want a refusal that does not adopt", err)
	}
	pa := e.policy()
	if pa.UID != "uid-theirs" || pa.Spec.GetMtls().GetMode() != apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE || pa.Labels["app.kubernetes.io/managed-by"] != "" {
		t.Fatalf("their policy was changed: %+v", pa)
	}
	if ph := e.phase(); ph != state.Pending {
		t.Fatalf("phase %s, want pending", ph)
	}
}
