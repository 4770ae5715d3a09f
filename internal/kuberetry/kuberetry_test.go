package kuberetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// instant is a backoff with the default's steps and no waiting.
var instant = wait.Backoff{Steps: Default.Steps, Duration: 0, Factor: 2, Jitter: 0.5}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

var cmGR = corev1.Resource("configmaps")

func transient() map[string]error {
	return map[string]error{
		"429":            apierrors.NewTooManyRequests("slow down", 0),
		"500":            apierrors.NewInternalError(errors.New("boom")),
		"503":            apierrors.NewServiceUnavailable("etcd leader change"),
		"504 server":     apierrors.NewServerTimeout(cmGR, "get", 0),
		"timeout":        apierrors.NewTimeoutError("request timed out", 0),
		"net timeout":    fmt.Errorf("get: %w", timeoutErr{}),
		"unexpected 502": apierrors.NewGenericServerResponse(502, "get", cmGR, "x", "bad gateway", 0, true),
	}
}

// failing makes the fake clientset fail configmap gets n times with err.
func failing(n int, err error) (*fake.Clientset, *int) {
	c := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns"}})
	calls := 0
	c.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		calls++
		if calls <= n {
			return true, nil, err
		}
		return false, nil, nil
	})
	return c, &calls
}

func get(c *fake.Clientset) func() error {
	return func() error {
		_, err := c.CoreV1().ConfigMaps("ns").Get(context.Background(), "x", metav1.GetOptions{})
		return err
	}
}

func TestTransientErrorsAreRetriedUntilSuccess(t *testing.T) {
	for name, err := range transient() {
		t.Run(name, func(t *testing.T) {
			c, calls := failing(3, err)
			if got := OnError(context.Background(), instant, get(c)); got != nil {
				t.Fatalf("after 3 %s errors: %v, want success", name, got)
			}
			if *calls != 4 {
				t.Fatalf("calls = %d, want 4", *calls)
			}
		})
	}
}

func TestPermanentTransientErrorGivesUpAfterTheSteps(t *testing.T) {
	c, calls := failing(1000, apierrors.NewServiceUnavailable("down"))
	err := OnError(context.Background(), instant, get(c))
	if !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("err = %v, want the last 503", err)
	}
	if *calls != instant.Steps {
		t.Fatalf("calls = %d, want %d (bounded)", *calls, instant.Steps)
	}
}

func TestConflictsAndClientErrorsAreNotRetried(t *testing.T) {
	for name, err := range map[string]error{
		"409":       apierrors.NewConflict(cmGR, "x", errors.New("changed")),
		"404":       apierrors.NewNotFound(cmGR, "x"),
		"403":       apierrors.NewForbidden(cmGR, "x", errors.New("rbac")),
		"422":       apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("ConfigMap").GroupKind(), "x", nil),
		"non-kube":  errors.New("decode"),
		"cancelled": context.Canceled,
	} {
		t.Run(name, func(t *testing.T) {
			c, calls := failing(1000, err)
			if got := OnError(context.Background(), instant, get(c)); got == nil {
				t.Fatal("want the error back")
			}
			if *calls != 1 {
				t.Fatalf("calls = %d, want 1 (not retried)", *calls)
			}
		})
	}
}

func TestEndedContextStopsRetrying(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c, calls := failing(1000, apierrors.NewTooManyRequests("slow down", 0))
	if OnError(ctx, instant, get(c)) == nil || *calls != 1 {
		t.Fatalf("calls = %d, want 1", *calls)
	}
}

func TestDefaultIsBounded(t *testing.T) {
	if Default.Steps < 2 || Default.Cap <= 0 || Default.Jitter <= 0 {
		t.Fatalf("Default must retry, with jitter and a cap: %+v", Default)
	}
}
