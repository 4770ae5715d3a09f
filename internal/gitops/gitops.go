// Package gitops tells whether a Kubernetes object is managed by a
// controller that syncs it from a repository (Argo CD, Flux) or by Helm: a
// change the tool makes to such an object is reverted by the controller's
// self-heal (or the next upgrade), so the change belongs in the repository.
// It reads only what the controllers themselves leave on objects: their
// tracking labels and annotations and their field managers.
package gitops

import (
	"slices"
	"strings"
)

// The marks each controller leaves, from its documentation:
//   - Argo CD: the tracking label app.kubernetes.io/instance (label
//     tracking, the default before 3.0) or the annotation
//     argocd.argoproj.io/tracking-id (annotation tracking);
//     https://argo-cd.readthedocs.io/en/stable/user-guide/resource_tracking/
//   - Flux: kustomize.toolkit.fluxcd.io/name and helm.toolkit.fluxcd.io/name
//     labels; https://fluxcd.io/flux/components/kustomize/kustomizations/
//   - Helm: app.kubernetes.io/managed-by=Helm and meta.helm.sh/release-name;
//     https://helm.sh/docs/chart_best_practices/labels/
var (
	labelMarks = []struct{ key, value, who string }{
		{"kustomize.toolkit.fluxcd.io/name", "", "Flux (Kustomization)"},
		{"helm.toolkit.fluxcd.io/name", "", "Flux (HelmRelease)"},
		{"app.kubernetes.io/managed-by", "Helm", "Helm"},
		{"argocd.argoproj.io/instance", "", "Argo CD"},
		{"app.kubernetes.io/instance", "", "Argo CD (label tracking) or another tool"},
	}
	annotationMarks = []struct{ key, who string }{
		{"argocd.argoproj.io/tracking-id", "Argo CD"},
		{"meta.helm.sh/release-name", "Helm"},
	}
	// Field managers of the controllers' server-side applies and updates.
	managerPrefixes = []struct{ prefix, who string }{
		{"argocd", "Argo CD"},
		{"kustomize-controller", "Flux (Kustomization)"},
		{"helm-controller", "Flux (HelmRelease)"},
		{"helm", "Helm"},
	}
)

// ManagedBy names the controllers that manage an object with these labels,
// annotations and field managers, most specific first; none when it is not
// managed by any it knows.
func ManagedBy(labels, annotations map[string]string, managers []string) []string {
	var who []string
	add := func(w string) {
		if !slices.Contains(who, w) {
			who = append(who, w)
		}
	}
	for _, m := range annotationMarks {
		if _, ok := annotations[m.key]; ok {
			add(m.who)
		}
	}
	for _, m := range labelMarks {
		if v, ok := labels[m.key]; ok && (m.value == "" || v == m.value) {
			add(m.who)
		}
	}
	for _, mgr := range managers {
		for _, m := range managerPrefixes {
			if strings.HasPrefix(mgr, m.prefix) {
				add(m.who)
			}
		}
	}
	return who
}
