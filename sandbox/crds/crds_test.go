package crds

import "testing"

func TestIstioDecodesAllCRDsIncludingPeerAuthentication(t *testing.T) {
	got, err := Istio()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 10 {
		t.Fatalf("decoded %d CRDs, want the full Istio set (15 in v1.31)", len(got))
	}
	names := map[string]bool{}
	for _, c := range got {
		names[c.Name] = true
	}
	for _, want := range []string{
		"peerauthentications.security.istio.io",
		"destinationrules.networking.istio.io",
		"authorizationpolicies.security.istio.io",
	} {
		if !names[want] {
			t.Errorf("missing CRD %s", want)
		}
	}
}

func TestDecodeRejectsOtherKinds(t *testing.T) {
	_, err := Decode([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"))
	if err == nil {
		t.Fatal("want an error for a ConfigMap document")
	}
}
