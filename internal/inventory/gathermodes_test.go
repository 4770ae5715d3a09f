package inventory

import (
	"context"
	"testing"

	apisecurityv1 "istio.io/api/security/v1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	metafake "k8s.io/client-go/metadata/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestGatherModesReadsPodsInFullOnlyWhereWorkloadPoliciesAre: with a
// metadata client, the pods of a namespace with a workload
// PeerAuthentication are read in full (their ports and workload name feed
// status' overrides); every other pod is its metadata, a sidecar by the
// injector's annotation, a gateway by its labels. A root-namespace
// selector policy (ignored by Istio) does not make istio-system's pods
// read in full.
func TestGatherModesReadsPodsInFullOnlyWhereWorkloadPoliciesAre(t *testing.T) {
	injected := map[string]string{annSidecarStatus: `{"containers":["istio-proxy"]}`}
	meta := func(ns, name string, labels, ann map[string]string) *metav1.PartialObjectMetadata {
		return &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: ann}}
	}
	full := func(ns, name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "api"}, Annotations: injected},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "api", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}},
				{Name: "istio-proxy", Env: []corev1.EnvVar{{Name: "ISTIO_META_WORKLOAD_NAME", Value: "api"}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	}
	kube := k8sfake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cart"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pay"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}},
		full("pay", "api-1"), full("cart", "cart-1"),
	)
	sel := &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "api"}}
	ist := istiofake.NewSimpleClientset(
		&securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "pay"}, Spec: apisecurityv1.PeerAuthentication{Selector: sel}},
		&securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "ignored", Namespace: "istio-system"}, Spec: apisecurityv1.PeerAuthentication{Selector: sel}},
	)
	scheme := metafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	md := metafake.NewSimpleMetadataClient(scheme,
		meta("pay", "api-1", map[string]string{"app": "api"}, injected),
		meta("cart", "cart-1", map[string]string{"app": "cart"}, injected),
		meta("cart", "legacy-1", map[string]string{"app": "legacy"}, nil),
		meta("istio-system", "ingress-1", map[string]string{"istio": "ingressgateway"}, injected),
	)
	var fullLists []string
	kube.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		fullLists = append(fullLists, a.GetNamespace())
		return false, nil, nil
	})

	inv, err := GatherModes(context.Background(), Clients{Kube: kube, Istio: ist, Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	if len(fullLists) != 1 || fullLists[0] != "pay" {
		t.Errorf("pods listed in full in %q, want only in pay", fullLists)
	}
	byName := map[string]Pod{}
	for _, p := range inv.Pods {
		byName[p.Namespace+"/"+p.Name] = p
	}
	if len(byName) != 4 || len(inv.Pods) != 4 {
		t.Fatalf("pods %v, want each of the four once", inv.Pods)
	}
	for _, tc := range []struct {
		pod                       string
		partial, sidecar, gateway bool
	}{
		{"pay/api-1", false, true, false},
		{"cart/cart-1", true, true, false},
		{"cart/legacy-1", true, false, false},
		{"istio-system/ingress-1", true, false, true},
	} {
		p := byName[tc.pod]
		if p.Partial != tc.partial || p.Sidecar != tc.sidecar || p.Gateway != tc.gateway {
			t.Errorf("%s: partial=%v sidecar=%v gateway=%v, want %v %v %v", tc.pod, p.Partial, p.Sidecar, p.Gateway, tc.partial, tc.sidecar, tc.gateway)
		}
	}
	if api := byName["pay/api-1"]; !api.Running || api.Workload != "api" || len(api.Ports) != 1 || api.Ports[0].Port != 8080 {
		t.Errorf("pay/api-1 read in full: %+v, want Running, workload api, port 8080", api)
	}
}
