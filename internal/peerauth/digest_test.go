package peerauth

import (
	"testing"
	"time"

	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPolicyDigestIgnoresResourceVersionAndOrder(t *testing.T) {
	mk := func(name, rv string, mode apisecurity.PeerAuthentication_MutualTLS_Mode) *securityv1.PeerAuthentication {
		pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: "u-" + "x", ResourceVersion: rv, CreationTimestamp: metav1.NewTime(time.Unix(100, 0))}}
		pa.Spec.Mtls = &apisecurity.PeerAuthentication_MutualTLS{Mode: mode}
		return pa
	}
	a := PolicyDigest([]*securityv1.PeerAuthentication{mk("a", "1", 1), mk("b", "1", 2)})
	b := PolicyDigest([]*securityv1.PeerAuthentication{mk("b", "7", 2), mk("a", "9", 1)})
	if a != b {
		t.Errorf("digest depends on order or resourceVersion")
	}
	if c := PolicyDigest([]*securityv1.PeerAuthentication{mk("a", "1", 3), mk("b", "1", 2)}); c == a {
		t.Errorf("digest ignores the mode")
	}
	if PolicyDigest(nil) == "" {
		t.Errorf("empty digest for no policies")
	}
}
