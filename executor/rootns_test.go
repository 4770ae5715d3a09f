package executor

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// TestPreflightChecksTheLiveRootNamespace: the plan's rootNamespace must
// be the live mesh config's, for every stage; a namespace stage in the real
// root namespace would be a mesh-wide policy.
func TestPreflightChecksTheLiveRootNamespace(t *testing.T) {
	meshCM := func(mesh string) func(*env) {
		return func(e *env) {
			if _, err := e.kube.CoreV1().ConfigMaps("istio-system").Create(context.Background(), &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": mesh}}, metav1.CreateOptions{}); err != nil {
				e.t.Fatal(err)
			}
		}
	}
	cartIsRoot := func(p *plans.Plan) { p.Metadata.RootNamespace = "cart" }
	meshStage := func(p *plans.Plan) {
		// The mesh-wide stage, in the root namespace the plan names.
		p.Metadata.RootNamespace = "cart"
		p.Stages[0].Scope, p.Stages[0].Probes = plans.ScopeMesh, nil
	}
	tests := []struct {
		name    string
		cluster func(*env)
		plan    func(*plans.Plan)
		refused string // "" applies
		err     string // not a refusal: an error
	}{
		{name: "the plan's root namespace, read from the mesh config", cluster: meshCM("rootNamespace: istio-system\n")},
		{name: "no mesh config: Istio's default, as the plan assumed"},
		{name: "the mesh stage in the live root namespace", cluster: meshCM("rootNamespace: cart\n"), plan: meshStage},
		{name: "the mesh config moved the root", cluster: meshCM("rootNamespace: istio-config\n"),
			refused: `the mesh's root namespace is "istio-config" (meshConfig.rootNamespace in ConfigMap istio-system/istio (key "mesh")), but the plan was made for "istio-system"`},
		{name: "the mesh stage, root moved", cluster: meshCM("rootNamespace: istio-config\n"), plan: meshStage,
			refused: `the mesh's root namespace is "istio-config"`},
		{name: "the plan names a root but the mesh config is gone", plan: meshStage,
			refused: `the mesh's root namespace is "istio-system" (Istio's default: ConfigMap istio-system/istio (key "mesh") does not exist), but the plan was made for "cart"`},
		{name: "a namespace stage in the live root namespace", cluster: meshCM("rootNamespace: cart\n"), plan: cartIsRoot,
			refused: `stage 1 is a namespace stage in "cart", the mesh's root namespace`},
		{name: "mesh config not YAML", cluster: meshCM("rootNamespace: [\n"), err: `parse key "mesh" of ConfigMap istio-system/istio`},
		{name: "mesh config unreadable", cluster: func(e *env) {
			e.kube.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewForbidden(corev1.Resource("configmaps"), "istio", nil)
			})
		}, err: "read mesh config istio-system/istio"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			if tt.cluster != nil {
				tt.cluster(e)
			}
			p := testPlan(true, policyDigest(existingPolicy()))
			if tt.plan != nil {
				tt.plan(p)
			}
			res, err, w := e.run(p, nil)
			switch {
			case tt.refused == "" && tt.err == "":
				if err != nil || res.Outcome != OutcomeDone {
					t.Fatalf("outcome %v, %v", res, err)
				}
				return
			case tt.refused != "":
				if !IsRefused(err) || !strings.Contains(err.Error(), tt.refused) {
					t.Fatalf("err = %v, want a refusal saying %q", err, tt.refused)
				}
			default:
				if err == nil || IsRefused(err) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want an error saying %q", err, tt.err)
				}
			}
			if len(w.dry) != 0 {
				t.Fatal("the stage reached the apply")
			}
		})
	}
}
