package xdsproxy

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/istiosync"
	"github.com/mtls-migrate/mtls-migrate/sandbox/controlplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/internal/testcluster"
)

// TestWaitEndsWhenTheProxiesHaveAcked: simulated sidecars connected to the
// real istiod get a push when a PeerAuthentication changes, and the
// product's wait (internal/istiosync on istiod's /debug/syncz) ends when
// they have acknowledged it, not before: with the acknowledgements held
// back 3 s, the wait takes at least 3 s.
func TestWaitEndsWhenTheProxiesHaveAcked(t *testing.T) {
	ctx, c := testcluster.Start(t, 3*time.Minute, controlplane.Binary.Find)
	kc := kubernetes.NewForConfigOrDie(c.RESTConfig())
	pods := []Pod{
		{Name: "cart-1", Namespace: "cart", IP: "127.42.0.1", ServiceAccount: "default", Labels: map[string]string{"app": "cart"}},
		{Name: "cart-2", Namespace: "cart", IP: "127.42.0.2", ServiceAccount: "default", Labels: map[string]string{"app": "cart"}},
	}
	createPods(ctx, t, kc, pods)

	i, err := controlplane.Start(ctx, controlplane.Options{Kubeconfig: c.KubeconfigPath(), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = i.Stop() })
	fleet, err := Connect(ctx, i.GRPCAddr, "1.30.0", pods)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fleet.Close)
	sync := &istiosync.Client{URLs: []string{"http://" + i.HTTPAddr}}
	// Connected: every proxy has acked its first listeners.
	if _, err := sync.Wait(ctx, nil, istiosync.Mark{Namespace: "cart", At: time.Now().Add(-time.Hour)}, len(pods), 30*time.Second, 100*time.Millisecond); err != nil {
		t.Fatalf("the simulated proxies never showed as synced: %v\n%s", err, i.LogTail(20))
	}

	dyn := dynamic.NewForConfigOrDie(c.RESTConfig())
	gvr := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
	for _, tc := range []struct {
		mode string
		hold time.Duration
	}{{"STRICT", 3 * time.Second}, {"PERMISSIVE", 0}} {
		fleet.Hold(tc.hold)
		pa := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
			"metadata": map[string]any{"name": "default", "namespace": "cart"},
			"spec":     map[string]any{"mtls": map[string]any{"mode": tc.mode}},
		}}
		before := acks(fleet)
		mark, err := sync.Mark(ctx, nil, "cart")
		if err != nil {
			t.Fatal(err)
		}
		if tc.mode == "STRICT" {
			_, err = dyn.Resource(gvr).Namespace("cart").Create(ctx, pa, metav1.CreateOptions{})
		} else {
			var cur *unstructured.Unstructured
			if cur, err = dyn.Resource(gvr).Namespace("cart").Get(ctx, "default", metav1.GetOptions{}); err == nil {
				pa.SetResourceVersion(cur.GetResourceVersion())
				_, err = dyn.Resource(gvr).Namespace("cart").Update(ctx, pa, metav1.UpdateOptions{})
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		p, err := sync.Wait(ctx, nil, mark, len(pods), 30*time.Second, 100*time.Millisecond)
		if err != nil {
			t.Fatalf("%s: %v", tc.mode, err)
		}
		t.Logf("MEASURE %s: %d proxies acked %s after the write (acks held %s)", tc.mode, p.Proxies, p.Took.Round(10*time.Millisecond), tc.hold)
		if p.Took < tc.hold {
			t.Errorf("%s: the wait ended %s after the write, before the proxies acked (held %s)", tc.mode, p.Took, tc.hold)
		}
		if after := acks(fleet); after <= before {
			t.Errorf("%s: no new acknowledgement (%d before, %d after): istiod pushed nothing", tc.mode, before, after)
		}
	}
}

func acks(f *Fleet) int {
	n := 0
	for _, p := range f.Proxies {
		_, a, _ := p.Stats()
		n += a[ListenerType]
	}
	return n
}

func createPods(ctx context.Context, t *testing.T, kc kubernetes.Interface, pods []Pod) {
	t.Helper()
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cart"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := kc.CoreV1().Services("cart").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cart", Namespace: "cart"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels,
			Annotations: map[string]string{"sidecar.istio.io/status": `{"containers":["istio-proxy"]}`}},
			Spec: corev1.PodSpec{NodeName: "sandbox", ServiceAccountName: p.ServiceAccount, Containers: []corev1.Container{
				{Name: "app", Image: "app", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}},
				{Name: "istio-proxy", Image: "proxyv2", Args: []string{"proxy", "sidecar"}},
			}}}
		created, err := kc.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IP, PodIPs: []corev1.PodIP{{IP: p.IP}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if _, err := kc.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}
