package controlplane

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/sandbox/internal/testcluster"
)

// TestIstiodRunsAgainstTheSandbox: the real istiod starts against the
// sandbox's kube-apiserver, becomes ready, takes the root namespace from
// the istio-system/istio ConfigMap the sandbox writes, and serves the sync
// status apply will wait on.
func TestIstiodRunsAgainstTheSandbox(t *testing.T) {
	ctx, c := testcluster.Start(t, 2*time.Minute, Binary.Find)
	i, err := Start(ctx, Options{Kubeconfig: c.KubeconfigPath(), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = i.Stop() })
	rss, cpu, err := i.Usage()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURE istiod ready in %s; RSS %d MB; CPU %s", i.StartedIn.Round(10*time.Millisecond), rss>>20, cpu)

	mesh, err := i.Get(ctx, "/debug/mesh")
	if err != nil {
		t.Fatal(err)
	}
	var mc struct {
		RootNamespace string `json:"rootNamespace"`
	}
	if err := json.Unmarshal(mesh, &mc); err != nil {
		t.Fatalf("/debug/mesh: %v\n%s", err, mesh)
	}
	if mc.RootNamespace != "istio-system" {
		t.Errorf("istiod's root namespace %q, want the ConfigMap's istio-system", mc.RootNamespace)
	}
	syncz, err := i.Get(ctx, "/debug/syncz")
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(syncz)); !strings.HasPrefix(s, "[") {
		t.Errorf("/debug/syncz is not a list of proxies: %s", s)
	}
}
