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
	var roles []map[string]any
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatal(err)
		}
		kinds[m["kind"].(string)] = m
		if m["kind"] == "Role" {
			roles = append(roles, m)
		}
	}
	checkRolesNameWhatTheyGrant(t, roles)
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "CronJob"} {
		if kinds[k] == nil {
			t.Errorf("rendered output has no %s", k)
		}
	}
	cj, _ := yaml.Marshal(kinds["CronJob"])
	for _, want := range []string{
		"concurrencyPolicy: Forbid", "sidecar.istio.io/inject: \"false\"", "runAsNonRoot: true",
		"readOnlyRootFilesystem: true", "- ALL", "configmap:mtls-migrate/mtls-migrate-plan\n", "--next", "--allowed-window",
	} {
		if !strings.Contains(string(cj), want) {
			t.Errorf("CronJob lacks %q", want)
		}
	}
	if kinds["ConfigMap"] != nil {
		t.Errorf("the kustomization renders a ConfigMap %v: the plan goes through `plan publish` (ConfigMaps under the API's limits), not into a manifest", kinds["ConfigMap"]["metadata"])
	}
	rbac, _ := yaml.Marshal(kinds["ClusterRole"])
	if strings.Contains(string(rbac), "secrets") || strings.Contains(string(rbac), "configmaps") || strings.Contains(string(rbac), "'*'") {
		t.Errorf("ClusterRole grants more than it should:\n%s", rbac)
	}
}

// checkRolesNameWhatTheyGrant: every namespaced grant on Leases, and on
// ConfigMaps outside the tool's own namespace, names its objects
// (resourceNames), except create, which RBAC cannot limit by name and which
// must stand in a rule of its own. In the tool's namespace ConfigMaps are
// get/update by namespace only: the state's and the published plan's shards
// are named after the plan's digest, and resourceNames takes no patterns.
func checkRolesNameWhatTheyGrant(t *testing.T, roles []map[string]any) {
	t.Helper()
	type grant struct{ ns, resource, name, verb string }
	got := map[grant]bool{}
	for _, r := range roles {
		ns := r["metadata"].(map[string]any)["namespace"].(string)
		rules, _ := r["rules"].([]any)
		for _, x := range rules {
			rule := x.(map[string]any)
			verbs, names, resources := strs(rule["verbs"]), strs(rule["resourceNames"]), strs(rule["resources"])
			for _, res := range resources {
				if res != "configmaps" && res != "leases" {
					continue
				}
				if len(names) == 0 && (ns != "mtls-migrate" || res != "configmaps") {
					if len(verbs) != 1 || verbs[0] != "create" {
						t.Errorf("Role %s/%s grants %v on every %s: only create, which RBAC cannot limit by name, may be granted without resourceNames", ns, r["metadata"].(map[string]any)["name"], verbs, res)
					}
				}
				for _, v := range verbs {
					if len(names) == 0 {
						got[grant{ns, res, "*", v}] = true
					}
					for _, n := range names {
						got[grant{ns, res, n, v}] = true
					}
				}
			}
		}
	}
	want := map[grant]bool{
		{"mtls-migrate", "configmaps", "*", "get"}: true, {"mtls-migrate", "configmaps", "*", "update"}: true,
		{"mtls-migrate", "configmaps", "*", "create"}:          true,
		{"mtls-migrate", "leases", "mtls-migrate-lock", "get"}: true, {"mtls-migrate", "leases", "mtls-migrate-lock", "update"}: true,
		{"mtls-migrate", "leases", "*", "create"}:      true,
		{"istio-system", "configmaps", "istio", "get"}: true,
	}
	for g := range want {
		if !got[g] {
			t.Errorf("the Roles do not grant %s on %s %s/%s: the tool needs it", g.verb, g.resource, g.ns, g.name)
		}
	}
	for g := range got {
		if !want[g] {
			t.Errorf("the Roles grant %s on %s %s/%s, which the tool does not need", g.verb, g.resource, g.ns, g.name)
		}
	}
}

func strs(v any) []string {
	xs, _ := v.([]any)
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		out = append(out, x.(string))
	}
	return out
}
