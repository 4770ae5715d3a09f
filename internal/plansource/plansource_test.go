package plansource

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestParseSource(t *testing.T) {
	cases := []struct {
		in      string
		want    Source
		wantErr string
	}{
		{in: "plan.yaml", want: Source{Path: "plan.yaml"}},
		{in: "/abs/configmap:odd.yaml", want: Source{Path: "/abs/configmap:odd.yaml"}},
		{in: "configmap:mtls-migrate/mtls-migrate-plan/plan.yaml", want: Source{Namespace: "mtls-migrate", Name: "mtls-migrate-plan", Key: "plan.yaml"}},
		{in: "configmap:mtls-migrate/plan", want: Source{Namespace: "mtls-migrate", Name: "plan"}}, // published: index and shards
		{in: "configmap:mtls-migrate/plan/", wantErr: "NAMESPACE/NAME/KEY"},
		{in: "configmap:a/b/c/d", wantErr: "NAMESPACE/NAME/KEY"},
		{in: "configmap:Bad_NS/p/k", wantErr: "namespace"},
		{in: "configmap:ns/p/bad key", wantErr: "key"},
		{in: "", wantErr: "empty"},
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Parse(%q) err = %v, want %q", c.in, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if got.String() != c.in {
			t.Errorf("String() = %q, want %q", got.String(), c.in)
		}
	}
}

func TestReadFromConfigMapAndFile(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "mtls-migrate-plan", Namespace: "mtls-migrate"},
		Data:       map[string]string{"plan.yaml": "kind: MigrationPlan\n"},
	})
	src, _ := Parse("configmap:mtls-migrate/mtls-migrate-plan/plan.yaml")
	b, err := src.Read(ctx, kube)
	if err != nil || string(b) != "kind: MigrationPlan\n" {
		t.Fatalf("read = %q, %v", b, err)
	}
	missingKey, _ := Parse("configmap:mtls-migrate/mtls-migrate-plan/other.yaml")
	if _, err := missingKey.Read(ctx, kube); err == nil || !strings.Contains(err.Error(), "keys: plan.yaml") {
		t.Fatalf("missing key: %v", err)
	}
	missingCM, _ := Parse("configmap:mtls-migrate/nope/plan.yaml")
	if _, err := missingCM.Read(ctx, kube); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("missing ConfigMap: %v", err)
	}
	path := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := (Source{Path: path}).Read(ctx, nil); err != nil || string(b) != "x" {
		t.Fatalf("file read = %q, %v", b, err)
	}
}
