package e2e

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
)

// TestE2EIstiodInjectsTheScenario: with the real istiod, every pod of the
// Online Boutique scenario is injected by istiod's webhook exactly where the
// scenario says it has a sidecar (its template's PROXY_CONFIG is in the
// proxy, which the hand-written fallback never writes), the sidecar-less
// testcurl and the ingress gateway are not, the pods are Running with a
// status for every container, injected ones included, and the product reads
// each pod as the workload the data plane reports.
func TestE2EIstiodInjectsTheScenario(t *testing.T) {
	began := time.Now()
	s := startScenario(t, "online-boutique.yaml", nil, func(o *sandbox.Options) { o.Istiod = true })
	startedIn := time.Since(began)
	rss, cpu, err := s.Istiod().Usage()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURE sandbox (online-boutique, istiod + injection) started in %s; istiod ready %s after exec, webhook answering %s later; istiod RSS %d MB, CPU %s",
		startedIn.Round(100*time.Millisecond), s.Istiod().StartedIn.Round(10*time.Millisecond), s.Istiod().WebhookReadyIn.Round(10*time.Millisecond), rss>>20, cpu)

	kube, err := kubernetes.NewForConfig(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	pods, err := kube.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	scn := s.Scenario()
	injected, plain := 0, 0
	for i := range pods.Items {
		pod := &pods.Items[i]
		ip := inventory.PodFrom(pod)
		var proxyConfig bool
		for _, c := range pod.Spec.Containers {
			if c.Name != "istio-proxy" {
				continue
			}
			for _, e := range c.Env {
				proxyConfig = proxyConfig || e.Name == "PROXY_CONFIG"
			}
		}
		_, status := pod.Annotations["sidecar.istio.io/status"]
		if pod.Namespace == dataplane.GatewayNamespace && ip.Workload == dataplane.GatewayName {
			if !ip.Gateway || status || proxyConfig {
				t.Errorf("gateway %s: gateway=%t, injected=%t", pod.Name, ip.Gateway, status)
			}
			continue
		}
		w, err := scn.FindWorkload(pod.Namespace + "/" + ip.Workload)
		if err != nil {
			t.Errorf("pod %s/%s: the product reads workload %q, which the scenario does not have: %v", pod.Namespace, pod.Name, ip.Workload, err)
			continue
		}
		want := scn.HasSidecar(*w)
		if ip.Sidecar != want || status != want || proxyConfig != want {
			t.Errorf("pod %s/%s: scenario sidecar=%t; product reads sidecar=%t; status annotation %t; istiod's PROXY_CONFIG %t", pod.Namespace, pod.Name, want, ip.Sidecar, status, proxyConfig)
		}
		if !ip.Running || len(pod.Status.ContainerStatuses) != len(pod.Spec.Containers) || len(pod.Status.InitContainerStatuses) != len(pod.Spec.InitContainers) {
			t.Errorf("pod %s/%s: running=%t, %d/%d container statuses, %d/%d init", pod.Namespace, pod.Name, ip.Running,
				len(pod.Status.ContainerStatuses), len(pod.Spec.Containers), len(pod.Status.InitContainerStatuses), len(pod.Spec.InitContainers))
		}
		if want {
			injected++
		} else {
			plain++
		}
	}
	if injected == 0 || plain == 0 {
		t.Errorf("%d injected and %d sidecar-less pods; the scenario has both", injected, plain)
	}
	t.Logf("%d pods injected by istiod, %d without a sidecar, plus the gateway", injected, plain)
}
