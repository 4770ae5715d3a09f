package cluster

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// needAPIServer skips (or fails when CI=true) if kube-apiserver is not built.
func needAPIServer(t *testing.T) {
	t.Helper()
	if _, err := FindAPIServerBinary(""); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v", err)
		}
		t.Skipf("skipping: %v", err)
	}
}

func TestFindAPIServerBinaryPrefersNewestCachedBuild(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("MTLS_MIGRATE_CACHE", cache)
	t.Setenv(EnvAPIServerBinary, "")

	_, err := FindAPIServerBinary("")
	if err == nil || !strings.Contains(err.Error(), "scripts/build-kube-apiserver.sh") {
		t.Fatalf("empty cache: want an error naming the build script, got %v", err)
	}

	old := filepath.Join(cache, "kube-apiserver-"+KubernetesVersion+"-aaaaaaaaaaaa")
	newer := filepath.Join(cache, "kube-apiserver-"+KubernetesVersion+"-bbbbbbbbbbbb")
	partial := filepath.Join(cache, ".kube-apiserver-build.XYZ")
	for _, p := range []string{old, newer, partial} {
		if err := os.WriteFile(p, []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	got, err := FindAPIServerBinary("")
	if err != nil || got != newer {
		t.Fatalf("FindAPIServerBinary = %q, %v; want %q", got, err, newer)
	}

	t.Setenv(EnvAPIServerBinary, old)
	if got, err := FindAPIServerBinary(""); err != nil || got != old {
		t.Fatalf("with $%s: got %q, %v; want %q", EnvAPIServerBinary, got, err, old)
	}
	if _, err := FindAPIServerBinary(filepath.Join(cache, "missing")); err == nil {
		t.Fatal("explicit missing binary: want an error")
	}
}

func TestCluster(t *testing.T) {
	needAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	began := time.Now()
	c, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start took %s", time.Since(began).Round(time.Millisecond))
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = c.Stop()
		}
	})

	cfg := c.RESTConfig()
	kube := kubernetes.NewForConfigOrDie(cfg)
	istio := istioclient.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)

	t.Run("BootstrapCreatesMeshConfigAndNamespaces", func(t *testing.T) {
		for _, ns := range []string{"default", IstioNamespace} {
			if _, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
				t.Errorf("namespace %s: %v", ns, err)
			}
		}
		cm, err := kube.CoreV1().ConfigMaps(IstioNamespace).Get(ctx, MeshConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mesh := cm.Data[MeshConfigKey]
		for _, want := range []string{"rootNamespace: istio-system", "enableAutoMtls: true"} {
			if !strings.Contains(mesh, want) {
				t.Errorf("mesh config lacks %q:\n%s", want, mesh)
			}
		}
	})

	t.Run("KubeconfigWorks", func(t *testing.T) {
		if c.KubeconfigPath() != filepath.Join(c.Dir(), "kubeconfig") {
			t.Errorf("KubeconfigPath = %s", c.KubeconfigPath())
		}
		kcfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath())
		if err != nil {
			t.Fatal(err)
		}
		if kcfg.Host != c.Server() {
			t.Errorf("kubeconfig server %s, want %s", kcfg.Host, c.Server())
		}
		if _, err := kubernetes.NewForConfigOrDie(kcfg).CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatalf("list namespaces with the kubeconfig: %v", err)
		}
	})

	const ns = "mesh-test"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}

	t.Run("ServerRejectsPeerAuthenticationWithMisspelledMode", func(t *testing.T) {
		pa := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1",
			"kind":       "PeerAuthentication",
			"metadata":   map[string]any{"name": "typo", "namespace": ns},
			"spec":       map[string]any{"mtls": map[string]any{"mode": "STRICTT"}},
		}}
		gvr := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
		_, err := dyn.Resource(gvr).Namespace(ns).Create(ctx, pa, metav1.CreateOptions{})
		if !apierrors.IsInvalid(err) {
			t.Fatalf("want an Invalid error for mode STRICTT, got %v", err)
		}
		t.Logf("server said: %v", err)
		if !strings.Contains(err.Error(), "mode") {
			t.Errorf("error does not mention the field: %v", err)
		}
	})

	t.Run("ValidPeerAuthenticationRoundTrips", func(t *testing.T) {
		pa := &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns},
			Spec: securityapi.PeerAuthentication{
				Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT},
			},
		}
		if _, err := istio.SecurityV1().PeerAuthentications(ns).Create(ctx, pa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := istio.SecurityV1().PeerAuthentications(ns).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Spec.GetMtls().GetMode() != securityapi.PeerAuthentication_MutualTLS_STRICT {
			t.Errorf("read back mode %v, want STRICT", got.Spec.GetMtls().GetMode())
		}
	})

	t.Run("RBACLimitsServiceAccountToItsRole", func(t *testing.T) {
		testRBAC(ctx, t, c, kube, ns)
	})

	t.Run("StopLeavesNoProcessAndNoListeningPort", func(t *testing.T) {
		pid := c.apiserver.cmd.Process.Pid
		addrs := []string{strings.TrimPrefix(c.Server(), "https://")}
		for _, l := range c.etcd.Clients {
			addrs = append(addrs, l.Addr().String())
		}
		for _, l := range c.etcd.Peers {
			addrs = append(addrs, l.Listener.Addr().String())
		}
		runDir := c.runDir

		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		stopped = true
		if err := c.Stop(); err != nil {
			t.Fatalf("second Stop: %v", err)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("kube-apiserver pid %d still exists after Stop (kill -0: %v)", pid, err)
		}
		if kids := childPIDs(t); len(kids) > 0 {
			t.Errorf("child processes left after Stop: %v", kids)
		}
		for _, a := range addrs {
			if conn, err := net.DialTimeout("tcp", a, time.Second); err == nil {
				conn.Close()
				t.Errorf("something still listens on %s after Stop", a)
			}
		}
		if _, err := os.Stat(runDir); !os.IsNotExist(err) {
			t.Errorf("run dir %s (etcd data, keys) not removed: %v", runDir, err)
		}
	})
}

// testRBAC shows that a service account token from the TokenRequest API is
// subject to RBAC: nothing by default, exactly its Role once bound.
func testRBAC(ctx context.Context, t *testing.T, c *Cluster, kube kubernetes.Interface, ns string) {
	const sa = "probe"
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(600)
	tr, err := kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{serviceAccountIssuer}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	saCfg := &rest.Config{Host: c.Server(), BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: c.RESTConfig().CAData}}
	asSA := kubernetes.NewForConfigOrDie(saCfg)

	can := func(verb, resource, namespace string) bool {
		t.Helper()
		r, err := asSA.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Resource: resource, Namespace: namespace,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectAccessReview %s %s in %s: %v", verb, resource, namespace, err)
		}
		return r.Status.Allowed
	}

	if can("list", "secrets", ns) {
		t.Fatal("fresh service account can list secrets")
	}
	if can("get", "configmaps", ns) {
		t.Fatal("fresh service account can get configmaps")
	}

	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "read-configmaps", Namespace: ns},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get"}}},
	}
	if _, err := kube.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "probe-reads-configmaps", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}},
	}
	if _, err := kube.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The RBAC authorizer reads roles from an informer cache: allow it a moment.
	deadline := time.Now().Add(10 * time.Second)
	for !can("get", "configmaps", ns) {
		if time.Now().After(deadline) {
			t.Fatal("service account still cannot get configmaps 10s after the RoleBinding")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, deny := range []struct{ verb, resource, namespace string }{
		{"list", "configmaps", ns},
		{"get", "secrets", ns},
		{"list", "secrets", ns},
		{"get", "configmaps", "default"},
		{"update", "configmaps", ns},
	} {
		if can(deny.verb, deny.resource, deny.namespace) {
			t.Errorf("service account can %s %s in %s; its Role grants only get configmaps in %s", deny.verb, deny.resource, deny.namespace, ns)
		}
	}

	// And the real requests agree with the reviews.
	if _, err := kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := asSA.CoreV1().ConfigMaps(ns).Get(ctx, "cfg", metav1.GetOptions{}); err != nil {
		t.Errorf("get configmap as the service account: %v", err)
	}
	if _, err := asSA.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets as the service account: want Forbidden, got %v", err)
	}
}

// childPIDs lists live processes whose parent is this test process.
func childPIDs(t *testing.T) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	self := os.Getpid()
	var kids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the ")" closing the command name: state ppid ...
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
		f := strings.Fields(rest)
		if len(f) > 1 && f[1] == strconv.Itoa(self) && f[0] != "Z" {
			kids = append(kids, pid)
		}
	}
	return kids
}
