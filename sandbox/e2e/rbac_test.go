package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/sandbox"
)

// deployNamespace and deployServiceAccount are what deploy/ creates.
const (
	deployNamespace      = "mtls-migrate"
	deployServiceAccount = "mtls-migrate"
)

// TestE2ERBACServiceAccountRunsAWholeStage applies the RBAC rendered from
// deploy/ (kubectl kustomize) to the sandbox's API server, which runs RBAC,
// then runs the real binary with nothing but the ServiceAccount's token:
// `plan` and a whole stage of `apply` must succeed, and SelfSubjectAccessReview
// must show that the account cannot read Secrets, delete namespaces, write
// ConfigMaps outside its namespace or delete pods, while it can patch
// PeerAuthentications and read and update only its own ConfigMaps and
// Lease by name (creating them is not limited by name: RBAC cannot).
func TestE2ERBACServiceAccountRunsAWholeStage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no kubectl on PATH: it renders deploy/ (kubectl kustomize)")
		}
		t.Skip("no kubectl on PATH: it renders deploy/ (kubectl kustomize)")
	}
	rendered := renderDeploy(t, kubectl)

	s := startScenario(t, "online-boutique.yaml", nil)
	ctx := context.Background()
	applyRendered(ctx, t, s, rendered)

	saKubeconfig := serviceAccountKubeconfig(ctx, t, s, deployNamespace, deployServiceAccount)
	p := &product{t: t, bin: buildProduct(t), s: s}
	waitTelemetry(t, s, 10*time.Second)

	// plan, as the ServiceAccount.
	planPath := filepath.Join(t.TempDir(), "plan.yaml")
	r := runAs(t, p, saKubeconfig, "plan", "--window", "5m", "--gate-window", "10s", "--soak", "20s",
		"--namespaces", "cart", "--out", planPath)
	if r.code != 0 {
		t.Fatalf("plan as the ServiceAccount: %s", r)
	}
	noForbidden(t, "plan", r)
	plan, err := plans.LoadFile(planPath)
	if err != nil {
		t.Fatalf("the written plan does not load back: %v", err)
	}
	digest, err := plans.Digest(plan)
	if err != nil {
		t.Fatal(err)
	}
	var stage *plans.Stage
	for i := range plan.Stages {
		if plan.Stages[i].Status != plans.StatusBlocked {
			stage = &plan.Stages[i]
			break
		}
	}
	if stage == nil {
		t.Fatalf("the plan has no ready stage:\n%s", r.stdout)
	}

	// A whole stage, as the ServiceAccount.
	r = runAs(t, p, saKubeconfig, applyArgs(planPath, stage.Number, 10*time.Second, "--probe-retry", "10s")...)
	t.Logf("apply as the ServiceAccount (%s): %s", r.took.Round(100*time.Millisecond), r)
	if r.code != 0 {
		t.Fatalf("apply --stage %d as the ServiceAccount: exit %d", stage.Number, r.code)
	}
	noForbidden(t, "apply", r)
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	if ph, _ := stagePhase(kc, digest, stage.Number); ph != state.Done {
		t.Fatalf("state ConfigMap: stage %d is %q, want %q", stage.Number, ph, state.Done)
	}

	// What the account may and may not do, asked as the account.
	saCfg, err := clientcmd.BuildConfigFromFlags("", saKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	asSA := kubernetes.NewForConfigOrDie(saCfg)
	cases := []struct {
		verb, group, resource, namespace, name string
		want                                   bool
	}{
		{"get", "", "secrets", "", "", false},
		{"list", "", "secrets", "", "", false},
		{"get", "", "secrets", deployNamespace, "", false},
		{"list", "", "secrets", deployNamespace, "", false},
		{"list", "", "secrets", "cart", "", false},
		{"delete", "", "namespaces", "", "", false},
		{"create", "", "configmaps", "cart", "", false},
		{"update", "", "configmaps", "cart", "", false},
		{"create", "", "configmaps", "kube-system", "", false},
		{"update", "", "configmaps", "kube-system", "", false},
		{"delete", "", "pods", "cart", "", false},
		{"delete", "", "pods", deployNamespace, "", false},
		{"patch", "security.istio.io", "peerauthentications", "cart", "", true},
		// ConfigMaps of its own namespace (the state's and the published
		// plan's shards are named after the plan's digest, which
		// resourceNames cannot match): get and update, never patch,
		// delete or list; its Lease by name; create in its namespace only.
		{"get", "", "configmaps", deployNamespace, "mtls-migrate-state", true},
		{"update", "", "configmaps", deployNamespace, "mtls-migrate-state", true},
		{"get", "", "configmaps", deployNamespace, "mtls-migrate-state-0123456789ab-g0-x", true},
		{"get", "", "configmaps", deployNamespace, "mtls-migrate-plan", true},
		{"patch", "", "configmaps", deployNamespace, "mtls-migrate-plan", false},
		{"delete", "", "configmaps", deployNamespace, "mtls-migrate-state", false},
		{"list", "", "configmaps", deployNamespace, "", false},
		{"create", "", "configmaps", deployNamespace, "", true},
		{"update", "coordination.k8s.io", "leases", deployNamespace, "mtls-migrate-lock", true},
		{"update", "coordination.k8s.io", "leases", deployNamespace, "someone-elses", false},
		{"create", "coordination.k8s.io", "leases", deployNamespace, "", true},
		{"create", "coordination.k8s.io", "leases", "kube-system", "", false},
		// The mesh config, and nothing else in istio-system.
		{"get", "", "configmaps", "istio-system", "istio", true},
		{"get", "", "configmaps", "istio-system", "", false},
		{"list", "", "configmaps", "istio-system", "", false},
		{"update", "", "configmaps", "istio-system", "istio", false},
	}
	for _, c := range cases {
		rv, err := asSA.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Group: c.group, Resource: c.resource, Namespace: c.namespace, Name: c.name,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectAccessReview %s %s: %v", c.verb, c.resource, err)
		}
		where := c.namespace
		if where == "" {
			where = "cluster-wide"
		}
		if c.name != "" {
			where += ", name " + c.name
		}
		if rv.Status.Allowed != c.want {
			t.Errorf("%s %s (%s): allowed = %v, want %v (%s)", c.verb, c.resource, where, rv.Status.Allowed, c.want, rv.Status.Reason)
		} else {
			t.Logf("%s %s (%s): allowed = %v", c.verb, c.resource, where, rv.Status.Allowed)
		}
	}
}

// renderDeploy runs `kubectl kustomize deploy/` and splits the documents.
func renderDeploy(t *testing.T, kubectl string) []*unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command(kubectl, "kustomize", filepath.Join("..", "..", "deploy"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize deploy/: %v\n%s", err, errb.String())
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(&out, 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decode the rendered deploy/: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

// applyRendered creates the rendered objects through the dynamic client,
// mapping each kind to its resource with the API server's discovery. The
// CronJob is left out: no controller runs it in the sandbox.
func applyRendered(ctx context.Context, t *testing.T, s *sandbox.Sandbox, objs []*unstructured.Unstructured) {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	d, err := dynamic.NewForConfig(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, u := range objs {
		gvk := u.GroupVersionKind()
		if gvk.Kind == "CronJob" {
			continue
		}
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("map %s: %v", gvk, err)
		}
		var ri dynamic.ResourceInterface = d.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			ri = d.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s/%s: %v", gvk.Kind, u.GetNamespace(), u.GetName(), err)
		}
		kinds = append(kinds, gvk.Kind+" "+u.GetName())
	}
	t.Logf("created from deploy/: %s", strings.Join(kinds, ", "))
}

// serviceAccountKubeconfig writes a kubeconfig holding only a TokenRequest
// token of ns/name, for the sandbox's server and CA.
func serviceAccountKubeconfig(ctx context.Context, t *testing.T, s *sandbox.Sandbox, ns, name string) string {
	t.Helper()
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	exp := int64(3600)
	tr, err := kc.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", ns, name, err)
	}
	admin, err := clientcmd.LoadFromFile(s.KubeconfigPath())
	if err != nil {
		t.Fatalf("load the sandbox's admin kubeconfig: %v", err)
	}
	cur, ok := admin.Contexts[admin.CurrentContext]
	if !ok {
		t.Fatalf("admin kubeconfig: no current context %q", admin.CurrentContext)
	}
	cluster := admin.Clusters[cur.Cluster]
	if cluster == nil {
		t.Fatalf("admin kubeconfig: no cluster %q", cur.Cluster)
	}
	user := "system:serviceaccount:" + ns + ":" + name
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["sandbox"] = &clientcmdapi.Cluster{
		Server: cluster.Server, CertificateAuthorityData: cluster.CertificateAuthorityData,
		CertificateAuthority: cluster.CertificateAuthority,
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["sa"] = &clientcmdapi.Context{Cluster: "sandbox", AuthInfo: user, Namespace: ns}
	cfg.CurrentContext = "sa"
	path := filepath.Join(t.TempDir(), "sa.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("write the ServiceAccount's kubeconfig: %v", err)
	}
	// The token's identity, as the API server sees it.
	saCfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kubernetes.NewForConfigOrDie(saCfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview with the ServiceAccount's token: %v", err)
	}
	if got := rev.Status.UserInfo.Username; got != user {
		t.Fatalf("the kubeconfig authenticates as %q, want %q", got, user)
	}
	return path
}

// runAs runs the binary with kubeconfig instead of the sandbox's admin one.
func runAs(t *testing.T, p *product, kubeconfig string, args ...string) result {
	t.Helper()
	return p.runWith(context.Background(), kubeconfig, args...)
}

// noForbidden fails the test when a command got past a missing permission
// with only a warning (e.g. a check skipped, an event not recorded).
func noForbidden(t *testing.T, what string, r result) {
	t.Helper()
	for _, line := range strings.Split(r.stdout+r.stderr, "\n") {
		if strings.Contains(line, "forbidden") {
			t.Errorf("%s as the ServiceAccount hit a missing permission: %s", what, line)
		}
	}
}
