package probetarget

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

func testPod(ns, name, ip string, labels map[string]string, proxyArgs ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
	if len(proxyArgs) > 0 {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "istio-proxy", Args: proxyArgs})
	}
	return p
}

func testService(ns, name, clusterIP string, sel map[string]string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, Selector: sel}}
}

// cluster: cart (meshed), payments (meshed), default (a sidecar-less
// testcurl), and the ingress gateway in istio-system behind a
// LoadBalancer Service.
func cluster() []runtime.Object {
	stopped := testPod("cart", "cart-old", "10.0.1.9", map[string]string{"app": "cart"}, "proxy", "sidecar")
	stopped.Status.Phase = corev1.PodSucceeded
	gwSvc := testService("istio-system", "istio-ingressgateway", "10.96.0.80", map[string]string{"istio": "ingressgateway"})
	gwSvc.Spec.Type = corev1.ServiceTypeLoadBalancer
	gwSvc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}, {Hostname: "LB.example.com"}}
	return []runtime.Object{
		testPod("cart", "cart-1", "10.0.1.1", map[string]string{"app": "cart"}, "proxy", "sidecar"),
		testPod("cart", "debug", "10.0.1.2", map[string]string{"app": "debug"}),
		stopped,
		testService("cart", "cartservice", "10.96.0.10", map[string]string{"app": "cart"}),
		testPod("payments", "pay-1", "10.0.2.1", map[string]string{"app": "pay"}, "proxy", "sidecar"),
		testService("payments", "payservice", "10.96.0.20", map[string]string{"app": "pay"}),
		testPod("default", "testcurl", "10.0.3.1", map[string]string{"app": "testcurl"}),
		testService("default", "kubernetes", "10.96.0.1", nil),
		testPod("istio-system", "istio-ingressgateway-1", "10.0.9.1", map[string]string{"istio": "ingressgateway"}, "proxy", "router"),
		testPod("istio-system", "istiod-1", "10.0.9.2", map[string]string{"app": "istiod"}),
		gwSvc,
		testService("istio-system", "istiod", "10.96.0.15", map[string]string{"app": "istiod"}),
	}
}

func TestCheckAllowsOnlyTheStagesPodsServicesAndTheGateway(t *testing.T) {
	httpProbe := func(url, resolve string) plans.Probe {
		return plans.Probe{Name: "p", Kind: plans.ProbeHTTP, URL: url, Resolve: resolve}
	}
	execProbe := func(pod, url string) plans.Probe {
		return plans.Probe{Name: "p", Kind: plans.ProbeExec, Pod: pod, URL: url}
	}
	tests := []struct {
		name      string
		namespace string
		mesh      bool
		probe     plans.Probe
		refused   string // "" allowed
	}{
		// What the planner writes.
		{"a running pod of the namespace", "cart", false, httpProbe("http://10.0.1.1:8080/", ""), ""},
		{"through the gateway: resolve to a gateway pod", "cart", false, httpProbe("http://shop.example.com:8080/", "shop.example.com:8080:10.0.9.1"), ""},
		// The other forms a reviewer may write.
		{"a sidecar-less running pod of the namespace", "cart", false, httpProbe("http://10.0.1.2:8080/", ""), ""},
		{"a Service's ClusterIP", "cart", false, httpProbe("http://10.96.0.10:7070/", ""), ""},
		{"svc.ns", "cart", false, httpProbe("http://cartservice.cart:7070/", ""), ""},
		{"svc.ns.svc", "cart", false, httpProbe("http://cartservice.cart.svc:7070/", ""), ""},
		{"svc.ns.svc.cluster.local, any case, trailing dot", "cart", false, httpProbe("http://CartService.cart.svc.cluster.local.:7070/", ""), ""},
		{"the gateway Service's ClusterIP", "cart", false, httpProbe("http://10.96.0.80/", ""), ""},
		{"the gateway Service's load balancer IP", "cart", false, httpProbe("http://203.0.113.7/", ""), ""},
		{"the gateway Service's load balancer hostname", "cart", false, httpProbe("http://lb.example.com/", ""), ""},
		{"the gateway Service by name", "cart", false, httpProbe("http://istio-ingressgateway.istio-system/", ""), ""},
		{"a tcp URL to a pod", "cart", false, httpProbe("tcp://10.0.1.1:6379", ""), ""},
		{"resolve to a pod of the namespace", "cart", false, httpProbe("http://cart.example:8080/", "cart.example:8080:10.0.1.1"), ""},
		{"exec in a pod of the namespace to a Service", "cart", false, execProbe("cart/debug", "http://cartservice.cart:7070/"), ""},
		{"exec by bare pod name, bare Service name", "cart", false, execProbe("debug", "http://cartservice:7070/"), ""},
		{"mesh stage: a pod of any meshed namespace", "istio-system", true, httpProbe("http://10.0.2.1:8080/", ""), ""},
		{"mesh stage: exec in a meshed namespace's pod", "istio-system", true, execProbe("payments/pay-1", "http://payservice.payments/"), ""},

		{"a pod of another namespace", "cart", false, httpProbe("http://10.0.2.1:8080/", ""), "probe p targets 10.0.2.1, which is no running pod"},
		{"a pod that is not running", "cart", false, httpProbe("http://10.0.1.9:8080/", ""), "targets 10.0.1.9"},
		{"a Service of another namespace", "cart", false, httpProbe("http://payservice.payments:80/", ""), "targets payservice.payments, which is no Service name"},
		{"the API server", "cart", false, httpProbe("https://kubernetes.default.svc/", ""), "targets kubernetes.default.svc"},
		{"a non-gateway pod of the root namespace", "cart", false, httpProbe("http://10.0.9.2:15014/", ""), "targets 10.0.9.2"},
		{"the cloud metadata address", "cart", false, httpProbe("http://169.254.169.254/latest/meta-data/", ""), "targets 169.254.169.254"},
		{"an outside host", "cart", false, httpProbe("https://example.com/", ""), "targets example.com"},
		{"a tcp URL elsewhere", "cart", false, httpProbe("tcp://10.0.3.1:22", ""), "targets 10.0.3.1"},
		{"resolve to an outside address", "cart", false, httpProbe("http://shop.example.com/", "shop.example.com:80:198.51.100.1"), "targets 198.51.100.1 (resolve)"},
		{"resolve for another host: the URL's host is dialled", "cart", false, httpProbe("http://example.com/", "shop.example.com:80:10.0.9.1"), "is not the URL's (example.com:80), so it would not be used"},
		{"a bare Service name from the tool's own process", "cart", false, httpProbe("http://cartservice:7070/", ""), "a bare name, which resolves in the tool's own namespace, not in cart: write cartservice.cart"},
		{"exec in a pod of another namespace", "cart", false, execProbe("default/testcurl", "http://cartservice.cart:7070/"), "targets pod default/testcurl (exec), which is not a running pod there"},
		{"exec in a pod that does not exist", "cart", false, execProbe("cart/nope", "http://cartservice.cart:7070/"), "pod cart/nope (exec)"},
		{"exec to localhost inside the pod", "cart", false, execProbe("cart/debug", "http://127.0.0.1:15000/"), "targets 127.0.0.1"},
		{"exec, bare name of a Service elsewhere", "cart", false, execProbe("cart/debug", "http://payservice/"), "targets payservice"},
		{"mesh stage: a sidecar-less namespace's pod", "istio-system", true, httpProbe("http://10.0.3.1:8080/", ""), "of a meshed namespace (cart, payments)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(tt.namespace, tt.mesh)
			if err := s.Load(context.Background(), kubefake.NewClientset(cluster()...), ""); err != nil {
				t.Fatal(err)
			}
			err := s.Check(tt.probe)
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var na *NotAllowedError
			if !errors.As(err, &na) {
				t.Fatalf("err = %v, want a *NotAllowedError", err)
			}
			if !strings.Contains(err.Error(), tt.refused) {
				t.Fatalf("refusal %q lacks %q", err, tt.refused)
			}
		})
	}
}

// TestFewerObjectsOnlyRefuseMore: the executor tries the stage's namespace
// alone first; a gateway probe needs the rest of the cluster.
func TestFewerObjectsOnlyRefuseMore(t *testing.T) {
	kube := kubefake.NewClientset(cluster()...)
	gw := plans.Probe{Name: "gateway-shop", Kind: plans.ProbeHTTP, URL: "http://shop.example.com:8080/", Resolve: "shop.example.com:8080:10.0.9.1"}
	local := New("cart", false)
	if err := local.Load(context.Background(), kube, "cart"); err != nil {
		t.Fatal(err)
	}
	if err := local.CheckAll([]plans.Probe{{Name: "pod", Kind: plans.ProbeHTTP, URL: "http://10.0.1.1:8080/"}}); err != nil {
		t.Fatalf("a pod of the namespace, from the namespace alone: %v", err)
	}
	if err := local.Check(gw); err == nil {
		t.Fatal("the namespace alone allowed the gateway: it cannot know the gateway pods")
	}
	all := New("cart", false)
	if err := all.Load(context.Background(), kube, ""); err != nil {
		t.Fatal(err)
	}
	if err := all.Check(gw); err != nil {
		t.Fatalf("with the whole cluster: %v", err)
	}
}
