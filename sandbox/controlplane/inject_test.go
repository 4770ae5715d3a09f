package controlplane

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/internal/testcluster"
)

// TestRenderedInjectorIsTheChartsDefault: the committed objects are the
// charts' (the default revision's four webhooks, the sidecar template) and
// name the proxy image the simulated sidecars claim to be.
func TestRenderedInjectorIsTheChartsDefault(t *testing.T) {
	in, err := RenderedInjector()
	if err != nil {
		t.Fatal(err)
	}
	if in.ConfigMap.Name != InjectorConfigMapName || in.Webhook.Name != InjectorWebhookName {
		t.Errorf("names %q, %q", in.ConfigMap.Name, in.Webhook.Name)
	}
	if len(in.Webhook.Webhooks) != 4 {
		t.Errorf("%d webhooks, want the charts' 4", len(in.Webhook.Webhooks))
	}
	var values struct {
		Global struct{ Hub, Tag string }
	}
	if err := json.Unmarshal([]byte(in.ConfigMap.Data["values"]), &values); err != nil {
		t.Fatal(err)
	}
	if values.Global.Tag != dataplane.ProxyVersion || values.Global.Hub != "docker.io/istio" {
		t.Errorf("hub/tag %s/%s, want docker.io/istio/%s: run scripts/gen-injector.sh", values.Global.Hub, values.Global.Tag, dataplane.ProxyVersion)
	}
	if !strings.Contains(in.ConfigMap.Data["config"], "name: istio-proxy") {
		t.Error("the template has no istio-proxy container")
	}
}

// TestIstiodInjectsPods: with Injection, a pod created in an
// istio-injection=enabled namespace comes back from the API server with
// istiod's sidecar (the proxy image and args of the charts' template, the
// status annotation, probes rewritten to the agent), and neither a pod that
// opts out (sidecar.istio.io/inject=false) nor one in an unlabelled
// namespace is touched.
func TestIstiodInjectsPods(t *testing.T) {
	ctx, c := testcluster.Start(t, 2*time.Minute, Binary.Find)
	i, err := Start(ctx, Options{Kubeconfig: c.KubeconfigPath(), Dir: t.TempDir(), Injection: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = i.Stop() })
	rss, cpu, err := i.Usage()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURE istiod ready in %s, injecting %s later; RSS %d MB; CPU %s", i.StartedIn.Round(10*time.Millisecond), i.WebhookReadyIn.Round(10*time.Millisecond), rss>>20, cpu)

	kube, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	for name, labels := range map[string]map[string]string{"meshed": {"istio-injection": "enabled"}, "plain": nil} {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create := func(ns, name string, labels map[string]string) *corev1.Pod {
		t.Helper()
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec: corev1.PodSpec{ServiceAccountName: name, Containers: []corev1.Container{{
				Name: "app", Image: "registry.sandbox.local/" + name + ":v1",
				Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}},
			}}},
		}
		got, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	injected := create("meshed", "web", map[string]string{"app": "web", "version": "v1"})
	var proxy *corev1.Container
	for k := range injected.Spec.Containers {
		if injected.Spec.Containers[k].Name == "istio-proxy" {
			proxy = &injected.Spec.Containers[k]
		}
	}
	if proxy == nil {
		t.Fatalf("meshed/web has no istio-proxy: %v", names(injected.Spec.Containers))
	}
	if want := "docker.io/istio/proxyv2:" + dataplane.ProxyVersion; proxy.Image != want {
		t.Errorf("istio-proxy image %q, want %q", proxy.Image, want)
	}
	if len(proxy.Args) < 2 || proxy.Args[0] != "proxy" || proxy.Args[1] != "sidecar" {
		t.Errorf("istio-proxy args %v, want proxy sidecar ...", proxy.Args)
	}
	if !HasContainer(injected, "istio-init") {
		t.Errorf("no istio-init: %v", names(injected.Spec.InitContainers))
	}
	var status struct{ Containers, InitContainers []string }
	if err := json.Unmarshal([]byte(injected.Annotations["sidecar.istio.io/status"]), &status); err != nil || len(status.Containers) != 1 || status.Containers[0] != "istio-proxy" {
		t.Errorf("sidecar.istio.io/status %q (%v)", injected.Annotations["sidecar.istio.io/status"], err)
	}
	if injected.Labels["security.istio.io/tlsMode"] != "istio" || injected.Labels["service.istio.io/canonical-name"] != "web" || injected.Labels["service.istio.io/canonical-revision"] != "v1" {
		t.Errorf("labels %v", injected.Labels)
	}
	if p := injected.Spec.Containers[0].ReadinessProbe.HTTPGet; p.Port.IntValue() != 15020 || p.Path != "/app-health/app/readyz" {
		t.Errorf("readiness probe %s:%s, want the agent's /app-health/app/readyz on 15020", p.Path, p.Port.String())
	}

	for _, p := range []*corev1.Pod{
		create("meshed", "opted-out", map[string]string{"app": "opted-out", "sidecar.istio.io/inject": "false"}),
		create("plain", "legacy", map[string]string{"app": "legacy"}),
	} {
		if HasContainer(p, "istio-proxy") || HasContainer(p, "istio-init") || p.Annotations["sidecar.istio.io/status"] != "" {
			t.Errorf("%s/%s was injected: %v", p.Namespace, p.Name, names(p.Spec.Containers))
		}
		if p.Spec.Containers[0].ReadinessProbe.HTTPGet.Port.IntValue() != 8080 {
			t.Errorf("%s/%s: probe rewritten", p.Namespace, p.Name)
		}
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}
