package executor

import (
	"context"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	applyv1 "istio.io/client-go/pkg/applyconfiguration/security/v1"
	istio "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
)

// PolicyWriter server-side applies a PeerAuthentication. It is an interface
// because client-go's fake clientsets do not implement apply semantics
// (field ownership, merge); the real one is a thin typed call.
type PolicyWriter interface {
	Apply(ctx context.Context, cfg *applyv1.PeerAuthenticationApplyConfiguration, dryRun bool) (*securityv1.PeerAuthentication, error)
	// Create creates pa and fails with AlreadyExists when the name is
	// taken: a policy the stage creates must not exist yet.
	Create(ctx context.Context, pa *securityv1.PeerAuthentication, dryRun bool) (*securityv1.PeerAuthentication, error)
}

// SSAWriter applies through security.istio.io/v1 with the tool's field
// manager (peerauth.FieldManager). Force takes ownership of the fields in
// cfg only (the mode, our label or annotation): server-side apply never
// touches fields absent from the configuration, so others' fields stay theirs
// (https://kubernetes.io/docs/reference/using-api/server-side-apply/#conflicts).
type SSAWriter struct{ Client istio.Interface }

// Apply sends cfg.
func (w SSAWriter) Apply(ctx context.Context, cfg *applyv1.PeerAuthenticationApplyConfiguration, dryRun bool) (*securityv1.PeerAuthentication, error) {
	opts := metav1.ApplyOptions{FieldManager: peerauth.FieldManager, Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return w.Client.SecurityV1().PeerAuthentications(*cfg.Namespace).Apply(ctx, cfg, opts)
}

// Create creates pa through security.istio.io/v1 with the tool's field
// manager.
func (w SSAWriter) Create(ctx context.Context, pa *securityv1.PeerAuthentication, dryRun bool) (*securityv1.PeerAuthentication, error) {
	opts := metav1.CreateOptions{FieldManager: peerauth.FieldManager}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return w.Client.SecurityV1().PeerAuthentications(pa.Namespace).Create(ctx, pa, opts)
}
