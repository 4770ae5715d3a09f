package gitops

import (
	"strings"
	"testing"
)

func TestManagedBy(t *testing.T) {
	tests := []struct {
		name        string
		labels      map[string]string
		annotations map[string]string
		managers    []string
		want        string
	}{
		{name: "nothing", labels: map[string]string{"team": "cart"}, managers: []string{"kubectl-client-side-apply", "mtls-migrate"}, want: ""},
		{name: "argo annotation tracking", annotations: map[string]string{"argocd.argoproj.io/tracking-id": "shop:security.istio.io/PeerAuthentication:cart/default"}, want: "Argo CD"},
		{name: "argo by field manager", managers: []string{"argocd-controller"}, want: "Argo CD"},
		{name: "flux kustomization", labels: map[string]string{"kustomize.toolkit.fluxcd.io/name": "apps"}, managers: []string{"kustomize-controller"}, want: "Flux (Kustomization)"},
		{name: "helm", labels: map[string]string{"app.kubernetes.io/managed-by": "Helm"}, annotations: map[string]string{"meta.helm.sh/release-name": "mesh"}, want: "Helm"},
		{name: "managed-by another value is not Helm", labels: map[string]string{"app.kubernetes.io/managed-by": "mtls-migrate"}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(ManagedBy(tt.labels, tt.annotations, tt.managers), ", "); got != tt.want {
				t.Fatalf("ManagedBy = %q, want %q", got, tt.want)
			}
		})
	}
}
