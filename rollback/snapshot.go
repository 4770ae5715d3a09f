// Package rollback owns the snapshots of a namespace's PeerAuthentications
// and their exact restore. It restores from the migration state alone (no
// Prometheus, no plan evidence): it deletes only the object a stage created
// (checked by UID and the managed-by label) and patches back in place the
// spec, labels and annotations of a pre-existing object the stage changed.
// A pre-existing policy is never deleted and recreated: its creation time
// decides Istio's precedence between namespace-wide policies (the oldest
// wins; see https://istio.io/latest/docs/reference/config/security/peer_authentication/).
package rollback

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istio "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/kuberetry"
)

// Labels and annotations the tool puts on what it manages.
const (
	// ManagedByLabel marks objects the tool created (and may delete).
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "mtls-migrate"
	// StageAnnotation marks a pre-existing object the tool patched, with
	// the plan's name and stage number; rollback removes it.
	StageAnnotation = "mtls-migrate.io/stage"
	// FieldManager is the server-side apply field manager.
	FieldManager = "mtls-migrate"
)

// List reads the namespace's PeerAuthentications through security.istio.io/v1,
// falling back to v1beta1 on servers that do not serve v1 (Istio < 1.22).
// The result is sorted by name.
func List(ctx context.Context, c istio.Interface, namespace string) ([]*securityv1.PeerAuthentication, error) {
	var out []*securityv1.PeerAuthentication
	var l *securityv1.PeerAuthenticationList
	err := kuberetry.Do(ctx, func() (err error) {
		l, err = c.SecurityV1().PeerAuthentications(namespace).List(ctx, metav1.ListOptions{})
		return err
	})
	switch {
	case err == nil:
		for i := range l.Items {
			out = append(out, l.Items[i].DeepCopy())
		}
	case apierrors.IsNotFound(err):
		var lb *securityv1beta1.PeerAuthenticationList
		err2 := kuberetry.Do(ctx, func() (err error) {
			lb, err = c.SecurityV1beta1().PeerAuthentications(namespace).List(ctx, metav1.ListOptions{})
			return err
		})
		if err2 != nil {
			return nil, fmt.Errorf("list PeerAuthentications in %q (v1: %w; v1beta1): %w", namespace, err, err2)
		}
		for i := range lb.Items {
			pa := &securityv1.PeerAuthentication{ObjectMeta: *lb.Items[i].ObjectMeta.DeepCopy()}
			lb.Items[i].Spec.DeepCopyInto(&pa.Spec)
			out = append(out, pa)
		}
	default:
		return nil, fmt.Errorf("list PeerAuthentications in %q: %w", namespace, err)
	}
	for _, pa := range out {
		pa.APIVersion, pa.Kind = "security.istio.io/v1", "PeerAuthentication"
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Encode turns objects into the state's snapshot form: whole objects as JSON,
// without managedFields (bookkeeping the restore never needs, and the bulk of
// an object).
func Encode(objs []*securityv1.PeerAuthentication) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(objs))
	for _, o := range objs {
		c := o.DeepCopy()
		c.ManagedFields = nil
		c.APIVersion, c.Kind = "security.istio.io/v1", "PeerAuthentication"
		b, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("snapshot PeerAuthentication %s/%s: %w", o.Namespace, o.Name, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// Decode reads a snapshot back.
func Decode(raw []json.RawMessage) ([]*securityv1.PeerAuthentication, error) {
	out := make([]*securityv1.PeerAuthentication, 0, len(raw))
	for i, r := range raw {
		pa := &securityv1.PeerAuthentication{}
		if err := json.Unmarshal(r, pa); err != nil {
			return nil, fmt.Errorf("decode snapshot object %d: %w", i, err)
		}
		out = append(out, pa)
	}
	return out, nil
}
