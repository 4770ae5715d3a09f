package peerauth

import (
	"context"
	"errors"
	"strings"
	"testing"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
)

// v1NotServed makes the fake answer every security.istio.io/v1 call with
// NotFound, as a server with Istio before 1.22 does.
func v1NotServed(c *istiofake.Clientset) {
	c.PrependReactor("*", "peerauthentications", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetResource().Version == "v1" {
			return true, nil, apierrors.NewNotFound(a.GetResource().GroupResource(), "")
		}
		return false, nil, nil
	})
}

func TestListFallsBackToV1beta1(t *testing.T) {
	c := istiofake.NewSimpleClientset()
	v1NotServed(c)
	if _, err := List(context.Background(), c, "cart"); err != nil {
		t.Fatal(err)
	}
}

func TestReadsFallBackToV1beta1OnlyWhenV1IsNotServed(t *testing.T) {
	old := &securityv1beta1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "cart", UID: "u1"}}
	c := istiofake.NewSimpleClientset(old)
	v1NotServed(c)
	ctx := context.Background()
	pa, err := Get(ctx, c, "cart", "default")
	if err != nil || pa.UID != "u1" || pa.APIVersion != "security.istio.io/v1" {
		t.Fatalf("Get = %+v, %v; want the v1beta1 object as v1", pa, err)
	}
	if _, err := Get(ctx, c, "cart", "missing"); !apierrors.IsNotFound(err) {
		t.Fatalf("Get of an absent object = %v, want NotFound", err)
	}
	all, err := ListAll(ctx, c)
	if err != nil || len(all) != 1 || all[0].UID != "u1" {
		t.Fatalf("ListAll = %v, %v", all, err)
	}

	// v1 served: v1beta1 (the same stored objects) is never read.
	c = istiofake.NewSimpleClientset(&securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "cart"}})
	if _, err := Get(ctx, c, "cart", "missing"); !apierrors.IsNotFound(err) {
		t.Fatalf("Get of an absent object = %v, want NotFound", err)
	}
	if _, err := ListAll(ctx, c); err != nil {
		t.Fatal(err)
	}
	for _, a := range c.Actions() {
		if a.GetVerb() == "list" && a.GetResource().Version != "v1" {
			t.Errorf("listed %s while v1 is served", a.GetResource())
		}
	}
}

func TestGetDoesNotReadAbsentWhenV1beta1CannotSay(t *testing.T) {
	c := istiofake.NewSimpleClientset()
	c.PrependReactor("get", "peerauthentications", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetResource().Version == "v1" {
			return true, nil, apierrors.NewNotFound(a.GetResource().GroupResource(), "default")
		}
		return true, nil, apierrors.NewForbidden(a.GetResource().GroupResource(), "default", errors.New("no"))
	})
	_, err := Get(context.Background(), c, "cart", "default")
	if err == nil || apierrors.IsNotFound(err) || !apierrors.IsForbidden(err) {
		t.Fatalf("err = %v, want the v1beta1 error, not NotFound", err)
	}
}

func TestListAllSortsByNamespaceThenName(t *testing.T) {
	mk := func(ns, name string) *securityv1.PeerAuthentication {
		return &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	}
	c := istiofake.NewSimpleClientset(mk("web", "a"), mk("cart", "z"), mk("cart", "b"))
	all, err := ListAll(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, pa := range all {
		got = append(got, pa.Namespace+"/"+pa.Name)
	}
	if want := "cart/b cart/z web/a"; strings.Join(got, " ") != want {
		t.Fatalf("order %v, want %s", got, want)
	}
	cart, err := List(context.Background(), c, "cart")
	if err != nil || len(cart) != 2 || cart[0].Name != "b" {
		t.Fatalf("List = %v, %v", cart, err)
	}
}
