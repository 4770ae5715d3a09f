// Package deploy holds the kustomize manifests that run mtls-migrate as a
// CronJob; this test checks they render and keep their safety properties.
package deploy

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestKustomizeRendersTheCronJobSafely(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		// In CI a missing renderer is a failure, never a silent pass.
		if os.Getenv("CI") == "true" {
			t.Fatal("kubectl not installed: it renders deploy/ (kubectl kustomize)")
		}
		t.Skip("kubectl not installed")
	}
	out, err := exec.Command(kubectl, "kustomize", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/: %v\n%s", err, out)
	}
	kinds := map[string]map[string]any{}
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatal(err)
		}
		kinds[m["kind"].(string)] = m
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "CronJob", "ConfigMap"} {
		if kinds[k] == nil {
			t.Errorf("rendered output has no %s", k)
		}
	}
	cj, _ := yaml.Marshal(kinds["CronJob"])
	for _, want := range []string{
		"concurrencyPolicy: Forbid", "sidecar.istio.io/inject: \"false\"", "runAsNonRoot: true",
		"readOnlyRootFilesystem: true", "- ALL", "configmap:mtls-migrate/mtls-migrate-plan/plan.yaml", "--next", "--allowed-window",
	} {
		if !strings.Contains(string(cj), want) {
			t.Errorf("CronJob lacks %q", want)
		}
	}
	if name := kinds["ConfigMap"]["metadata"].(map[string]any)["name"]; name != "mtls-migrate-plan" {
		t.Errorf("plan ConfigMap is named %v (a hash suffix would break the CronJob's reference)", name)
	}
	rbac, _ := yaml.Marshal(kinds["ClusterRole"])
	if strings.Contains(string(rbac), "secrets") || strings.Contains(string(rbac), "configmaps") || strings.Contains(string(rbac), "'*'") {
		t.Errorf("ClusterRole grants more than it should:\n%s", rbac)
	}
}
