// Package peerauth owns how the tool reads PeerAuthentications, identifies
// them and marks what it manages: the one reader (a namespace's policies, one
// policy by name, or every namespace's for the planner's inventory) with one
// rule for security.istio.io/v1 and v1beta1, the policy digest a plan
// records per stage and apply recomputes on the live objects, and the
// labels, annotation and field manager the tool puts on what it writes.
package peerauth

import (
	"context"
	"fmt"
	"sort"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istio "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/kuberetry"
)

// The tool's marks on what it manages.
const (
	// ManagedByLabel marks objects the tool created: the PeerAuthentications
	// a stage creates (rollback deletes only those), the state ConfigMap and
	// the lock's Lease. Kubernetes' recommended label, see
	// https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "mtls-migrate"
	// StageAnnotation marks a pre-existing object the tool patched, with
	// the plan's name and stage number; rollback removes it.
	StageAnnotation = "mtls-migrate.io/stage"
	// FieldManager is the field manager of every write the tool makes
	// (server-side apply and updates), so managedFields name it.
	FieldManager = "mtls-migrate"
)

// The v1/v1beta1 rule, for every read: security.istio.io/v1 first, and
// v1beta1 only when the server answers v1 with NotFound (Istio before 1.22,
// which first served PeerAuthentication as v1:
// https://istio.io/latest/news/releases/1.22.x/announcing-1.22/). A
// CustomResourceDefinition serves all its versions from the same stored
// objects (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definition-versioning/),
// so reading both versions and merging them, as the planner's inventory
// once did, returns nothing more: it doubles the calls and adds a second
// way for the read to fail.

// List reads the namespace's PeerAuthentications, sorted by name.
func List(ctx context.Context, c istio.Interface, namespace string) ([]*securityv1.PeerAuthentication, error) {
	return list(ctx, c, namespace, fmt.Sprintf("in %q", namespace))
}

// ListAll reads every namespace's PeerAuthentications in one call, sorted by
// namespace and name (the planner's inventory).
func ListAll(ctx context.Context, c istio.Interface) ([]*securityv1.PeerAuthentication, error) {
	return list(ctx, c, metav1.NamespaceAll, "in all namespaces")
}

// list reads namespace's PeerAuthentications (all namespaces when empty),
// retrying 429/5xx/timeouts; where names the namespace in errors.
func list(ctx context.Context, c istio.Interface, namespace, where string) ([]*securityv1.PeerAuthentication, error) {
	var out []*securityv1.PeerAuthentication
	var l *securityv1.PeerAuthenticationList
	err := kuberetry.Do(ctx, func() (err error) {
		l, err = c.SecurityV1().PeerAuthentications(namespace).List(ctx, metav1.ListOptions{})
		return err
	})
	switch {
	case err == nil:
		for i := range l.Items {
			out = append(out, withTypeMeta(l.Items[i].DeepCopy()))
		}
	case apierrors.IsNotFound(err):
		var lb *securityv1beta1.PeerAuthenticationList
		err2 := kuberetry.Do(ctx, func() (err error) {
			lb, err = c.SecurityV1beta1().PeerAuthentications(namespace).List(ctx, metav1.ListOptions{})
			return err
		})
		if err2 != nil {
			return nil, fmt.Errorf("list PeerAuthentications %s (v1: %w; v1beta1): %w", where, err, err2)
		}
		for i := range lb.Items {
			out = append(out, fromV1beta1(lb.Items[i]))
		}
	default:
		return nil, fmt.Errorf("list PeerAuthentications %s: %w", where, err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// Get reads one PeerAuthentication, retrying 429/5xx/timeouts. An absent
// object is the API's NotFound error (apierrors.IsNotFound), unwrapped.
func Get(ctx context.Context, c istio.Interface, namespace, name string) (*securityv1.PeerAuthentication, error) {
	var pa *securityv1.PeerAuthentication
	err := kuberetry.Do(ctx, func() (err error) {
		pa, err = c.SecurityV1().PeerAuthentications(namespace).Get(ctx, name, metav1.GetOptions{})
		return err
	})
	if err == nil {
		return withTypeMeta(pa), nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, err
	}
	// NotFound: the object is absent, or the server does not serve v1.
	var pb *securityv1beta1.PeerAuthentication
	errb := kuberetry.Do(ctx, func() (err error) {
		pb, err = c.SecurityV1beta1().PeerAuthentications(namespace).Get(ctx, name, metav1.GetOptions{})
		return err
	})
	switch {
	case errb == nil:
		return fromV1beta1(pb), nil
	case apierrors.IsNotFound(errb):
		return nil, err
	default:
		// v1's NotFound is not wrapped: it must not read as "absent" when
		// v1beta1 could not say.
		return nil, fmt.Errorf("v1: %s; v1beta1: %w", err.Error(), errb)
	}
}

func withTypeMeta(pa *securityv1.PeerAuthentication) *securityv1.PeerAuthentication {
	pa.APIVersion, pa.Kind = "security.istio.io/v1", "PeerAuthentication"
	return pa
}

// fromV1beta1 converts a v1beta1 object: the same schema as v1.
func fromV1beta1(pb *securityv1beta1.PeerAuthentication) *securityv1.PeerAuthentication {
	pa := &securityv1.PeerAuthentication{ObjectMeta: *pb.ObjectMeta.DeepCopy()}
	pb.Spec.DeepCopyInto(&pa.Spec)
	return withTypeMeta(pa)
}
