package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/kube"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

func TestPlanPublishFlags(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--plan", "p.yaml"}, 0, DefaultPlanSource},
		{[]string{"--plan", "p.yaml", "--to", "configmap:ns/plan", "--dry-run", "server"}, 0, "configmap:ns/plan"},
		{nil, cli.ExitUsage, ""},
		{[]string{"--plan", "p.yaml", "--to", "configmap:ns/plan/plan.yaml"}, cli.ExitUsage, ""},
		{[]string{"--plan", "p.yaml", "--to", "p.yaml"}, cli.ExitUsage, ""},
		{[]string{"--plan", "p.yaml", "--out", "x.yaml", "--dry-run", "server"}, cli.ExitUsage, ""},
		{[]string{"--plan", "p.yaml", "--dry-run", "client"}, cli.ExitUsage, ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, ran, err := parseCommand(t, newPlanPublishCmd, tt.args)
			if cli.Code(err) != tt.code {
				t.Fatalf("exit %d (%v), want %d", cli.Code(err), err, tt.code)
			}
			if tt.code == 0 && (!ran || got.to.String() != tt.want) {
				t.Fatalf("options = %+v", got)
			}
		})
	}
}

// TestPlanPublishThenLoad: the plan a person reviewed, published, is what
// every command loads from configmap:NAMESPACE/NAME, digest included; and
// --out writes the same ConfigMaps to a file.
func TestPlanPublishThenLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plan.yaml")
	b, err := os.ReadFile("../../plans/testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := plans.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := plans.Digest(p)
	kc := k8sfake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mtls-migrate"}})
	newFactory := func(out *bytes.Buffer) *factory {
		f := &factory{streams: genericiooptions.IOStreams{Out: out, ErrOut: &bytes.Buffer{}}}
		f.newKubeClients = func() (*kube.Clients, error) {
			return &kube.Clients{Kube: kc, Istio: istiofake.NewSimpleClientset()}, nil
		}
		return f
	}
	out := &bytes.Buffer{}
	cmd := newPlanCmd(newFactory(out), nil)
	cmd.SetArgs([]string{"publish", "--plan", path})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "--plan "+DefaultPlanSource+" --plan-digest "+digest) {
		t.Fatalf("output does not say how to run it:\n%s", out)
	}
	loaded, _, err := newFactory(&bytes.Buffer{}).loadPlan(context.Background(), DefaultPlanSource)
	if err != nil || loaded.Digest != digest {
		t.Fatalf("loaded %v, %v; want digest %s", loaded, err, digest)
	}

	manifests := filepath.Join(dir, "published.yaml")
	cmd = newPlanCmd(newFactory(&bytes.Buffer{}), nil)
	cmd.SetArgs([]string{"publish", "--plan", path, "--out", manifests})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(manifests)
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(raw), "\n---\n")
	var last corev1.ConfigMap
	if err := yaml.Unmarshal([]byte(docs[len(docs)-1]), &last); err != nil || last.Name != "mtls-migrate-plan" || last.Data["index.json"] == "" || !strings.Contains(string(raw), "kubectl apply --server-side -f") {
		t.Fatalf("manifests: %v, last %+v", err, last.ObjectMeta)
	}
}
