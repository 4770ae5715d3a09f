// Package events records each stage transition as a Kubernetes Event on the
// namespace being migrated, so `kubectl get events -n NS` tells the story
// next to everything else that happened there. Events are created
// synchronously (not through client-go's asynchronous broadcaster): a
// command-line run exits right after the last transition, and a broadcaster
// could drop it.
package events

import (
	"context"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Component is the reporting component of every event.
const Component = "mtls-migrate"

// Reasons, one per stage transition.
const (
	StageApplying    = "StageApplying"
	StageSoaking     = "StageSoaking"
	StageDone        = "StageDone"
	StageRollingBack = "StageRollingBack"
	StageRolledBack  = "StageRolledBack"
	StageFailed      = "StageFailed"
)

// Recorder records an event on a namespace. Failures to record are the
// caller's to log: an event is never worth failing a stage for.
type Recorder interface {
	Event(ctx context.Context, namespace, eventType, reason, message string) error
}

// Kube creates core/v1 Events.
type Kube struct {
	Client kubernetes.Interface
	Now    func() time.Time
}

// Event creates one event regarding the Namespace object. The event lives
// in that namespace, and involvedObject.namespace is set to it too, which
// core/v1 event validation requires to match the event's namespace.
func (k *Kube) Event(ctx context.Context, namespace, eventType, reason, message string) error {
	now := time.Now
	if k.Now != nil {
		now = k.Now
	}
	t := metav1.NewTime(now())
	host, _ := os.Hostname()
	if host == "" {
		host = Component
	}
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "mtls-migrate.", Namespace: namespace},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: "v1", Kind: "Namespace", Name: namespace, Namespace: namespace,
		},
		Reason:              reason,
		Message:             truncate(message, 1024),
		Type:                eventType,
		Source:              corev1.EventSource{Component: Component},
		FirstTimestamp:      t,
		LastTimestamp:       t,
		Count:               1,
		ReportingController: Component,
		ReportingInstance:   truncate(Component+"-"+host, 128),
		Action:              "MigrateStage",
	}
	if _, err := k.Client.CoreV1().Events(namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("record event %s in %q: %w", reason, namespace, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// Discard records nothing (dry runs).
type Discard struct{}

// Event does nothing.
func (Discard) Event(context.Context, string, string, string, string) error { return nil }
