package inventory

import (
	"context"
	"slices"
	"testing"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// listed records the resources a fake clientset was asked to list.
func listed(c *k8stesting.Fake, into *[]string) {
	c.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		*into = append(*into, a.GetResource().Resource)
		return false, nil, nil
	})
}

func TestGatherModesReadsOnlyWhatModesNeed(t *testing.T) {
	kube := k8sfake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cart", Labels: map[string]string{"istio-injection": "enabled"}}},
	)
	ist := istiofake.NewSimpleClientset(&securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "cart"}})
	var kubeLists, istioLists []string
	listed(&kube.Fake, &kubeLists)
	listed(&ist.Fake, &istioLists)

	inv, err := GatherModes(context.Background(), Clients{Kube: kube, Istio: ist})
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.PeerAuthentications) != 1 {
		t.Fatalf("PeerAuthentications = %d, want 1", len(inv.PeerAuthentications))
	}
	for _, r := range kubeLists {
		if r != "namespaces" && r != "pods" {
			t.Errorf("GatherModes listed %s: status would need RBAC it does not use", r)
		}
	}
	for _, r := range istioLists {
		if r != "peerauthentications" {
			t.Errorf("GatherModes listed istio %s", r)
		}
	}

	kubeLists, istioLists = nil, nil
	if _, err := Gather(context.Background(), Clients{Kube: kube, Istio: ist}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"namespaces", "pods", "services"} {
		if !slices.Contains(kubeLists, want) {
			t.Errorf("Gather did not list %s (listed %v)", want, kubeLists)
		}
	}
	if !slices.Contains(istioLists, "destinationrules") {
		t.Errorf("Gather did not list destinationrules (listed %v)", istioLists)
	}
}
