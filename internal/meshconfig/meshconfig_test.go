package meshconfig

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
)

func TestRead(t *testing.T) {
	cm := func(mesh string) []runtime.Object {
		return []runtime.Object{&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: ConfigMapNamespace}, Data: map[string]string{Key: mesh}}}
	}
	tests := []struct {
		name     string
		objs     []runtime.Object
		root     string
		auto     string // "true", "false" or "nil"
		found    bool
		errMatch string
	}{
		{"absent: Istio's defaults", nil, "istio-system", "nil", false, ""},
		{"set", cm("rootNamespace: istio-config\nenableAutoMtls: false\n"), "istio-config", "false", true, ""},
		{"empty mesh key: defaults", cm(""), "istio-system", "true", true, ""},
		{"not YAML", cm("rootNamespace: [\n"), "", "", true, `parse key "mesh"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Read(context.Background(), kubefake.NewClientset(tt.objs...))
			if tt.errMatch != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errMatch) {
					t.Fatalf("err = %v, want %q", err, tt.errMatch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			auto := "nil"
			if c.AutoMTLS != nil {
				auto = map[bool]string{true: "true", false: "false"}[*c.AutoMTLS]
			}
			if c.RootNamespace != tt.root || auto != tt.auto || c.Found != tt.found {
				t.Fatalf("Read = %+v (autoMTLS %s), want root %q, autoMTLS %s, found %v", c, auto, tt.root, tt.auto, tt.found)
			}
		})
	}
}
