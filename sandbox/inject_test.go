package sandbox

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/sandbox/controlplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/internal/testcluster"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// TestHandWrittenInjectionAgreesWithIstiod: for each kind of pod the
// scenarios make, the pod podObject writes "injected" by hand (the fallback
// without istiod) and the pod istiod's real webhook injects agree on
// everything the product reads of a pod (inventory.PodFrom: sidecar or
// gateway, workload name and kind, labels, ports, HTTP probe ports, capture
// annotations), and on the injected parts it does not read today but a
// reader of pods would (status annotation's containers, probe rewriting,
// ISTIO_KUBE_APP_PROBERS, image, prometheus annotations). Every other
// difference is logged (DIFF lines) and listed in sandbox/README.md.
func TestHandWrittenInjectionAgreesWithIstiod(t *testing.T) {
	ctx, c := testcluster.Start(t, 2*time.Minute, controlplane.Binary.Find)
	i, err := controlplane.Start(ctx, controlplane.Options{Kubeconfig: c.KubeconfigPath(), Dir: t.TempDir(), Injection: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = i.Stop() })
	kube, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}

	scn := &scenario.Scenario{Namespaces: []scenario.Namespace{{Name: "shop", Injection: true}, {Name: "legacy"}}}
	for _, n := range scn.Namespaces {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: namespaceLabels(n)}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	http := []scenario.WorkloadPort{{Name: "http", Port: 8080, Protocol: "http", Readiness: "/healthz", Liveness: "/livez"}, {Name: "tcp-admin", Port: 9000, Protocol: "tcp"}}
	pod := func(ns, wl string, sidecar bool, ann map[string]string) dataplane.PodInfo {
		return dataplane.PodInfo{Name: wl + "-5d8c7b9f4x-q2w7z", Namespace: ns, Workload: wl, ServiceAccount: wl, IP: "127.0.0.9",
			Labels: map[string]string{"app": wl, "version": "v1"}, Annotations: ann, Sidecar: sidecar, Ports: http}
	}
	cases := []dataplane.PodInfo{
		pod("shop", "orders", true, nil),
		pod("shop", "excluded", true, map[string]string{"traffic.sidecar.istio.io/excludeInboundPorts": "9000"}),
		pod("shop", "included", true, map[string]string{"traffic.sidecar.istio.io/includeInboundPorts": "8080"}),
		pod("shop", "norewrite", true, map[string]string{"sidecar.istio.io/rewriteAppHTTPProbers": "false"}),
		pod("shop", "batch", false, nil),
		pod("legacy", "opted-in", true, nil),
		pod("legacy", "curl", false, nil),
		{Name: dataplane.GatewayName + "-7c9d6f5b8d-abcde", Namespace: dataplane.GatewayNamespace, Workload: dataplane.GatewayName,
			ServiceAccount: dataplane.GatewayServiceAccount, IP: "127.0.0.10", Labels: map[string]string{"app": dataplane.GatewayName, "istio": "ingressgateway"},
			Gateway: true, Ports: []scenario.WorkloadPort{{Name: "http2", Port: dataplane.GatewayPort}}},
	}
	var diffs []string
	for _, p := range cases {
		t.Run(p.Namespace+"/"+p.Workload, func(t *testing.T) {
			label := injectLabel(scn, p)
			// The hand-written pod with the API server's defaults, as the
			// fallback creates it. Opted out for this dry run: istiod
			// re-injects an injected pod (it would come back as its own).
			hw := podObject(p, label, true)
			hw.Labels["sidecar.istio.io/inject"] = "false"
			hand, err := kube.CoreV1().Pods(p.Namespace).Create(ctx, hw, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				t.Fatal(err)
			}
			if label == "" {
				delete(hand.Labels, "sidecar.istio.io/inject")
			} else {
				hand.Labels["sidecar.istio.io/inject"] = label
			}
			if got := container(hand, "istio-proxy"); p.Sidecar && len(got.Env) > 2 {
				t.Fatalf("the dry run of the hand-written pod was injected by istiod")
			}
			real, err := kube.CoreV1().Pods(p.Namespace).Create(ctx, podObject(p, label, false), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, injected := real.Annotations[sidecarStatusAnnotation]; injected != p.Sidecar {
				t.Fatalf("istiod injected=%t, scenario sidecar=%t", injected, p.Sidecar)
			}
			for _, x := range []*corev1.Pod{hand, real} {
				x.Status.Phase, x.Status.PodIP = corev1.PodRunning, p.IP
			}
			hp, rp := inventory.PodFrom(hand), inventory.PodFrom(real)
			if !reflect.DeepEqual(hp, rp) {
				t.Errorf("the product reads the pods differently:\nhand-written %+v\nistiod       %+v", hp, rp)
			}
			if !p.Sidecar {
				if !reflect.DeepEqual(hand.Spec, real.Spec) || !reflect.DeepEqual(hand.Labels, real.Labels) || !reflect.DeepEqual(hand.Annotations, real.Annotations) {
					t.Errorf("sidecar-less pod changed by istiod:\nhand   %+v\nistiod %+v", hand, real)
				}
				return
			}
			for _, d := range podDiffs(hand, real) {
				diffs = append(diffs, p.Namespace+"/"+p.Workload+": "+d)
			}
			hs, rs := statusOf(t, hand), statusOf(t, real)
			if !reflect.DeepEqual(hs.Containers, rs.Containers) || !reflect.DeepEqual(hs.InitContainers, rs.InitContainers) {
				t.Errorf("status annotation containers: hand %v/%v, istiod %v/%v", hs.InitContainers, hs.Containers, rs.InitContainers, rs.Containers)
			}
			if hs.Revision != rs.Revision {
				t.Errorf("status revision: hand %q, istiod %q", hs.Revision, rs.Revision)
			}
			for _, k := range []string{"security.istio.io/tlsMode", "service.istio.io/canonical-name", "service.istio.io/canonical-revision"} {
				if hand.Labels[k] != real.Labels[k] {
					t.Errorf("label %s: hand %q, istiod %q", k, hand.Labels[k], real.Labels[k])
				}
			}
			for _, k := range []string{"prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path", "kubectl.kubernetes.io/default-container"} {
				if hand.Annotations[k] != real.Annotations[k] {
					t.Errorf("annotation %s: hand %q, istiod %q", k, hand.Annotations[k], real.Annotations[k])
				}
			}
			if !reflect.DeepEqual(hand.Spec.Containers[0].ReadinessProbe, real.Spec.Containers[0].ReadinessProbe) ||
				!reflect.DeepEqual(hand.Spec.Containers[0].LivenessProbe, real.Spec.Containers[0].LivenessProbe) {
				t.Errorf("app probes: hand %v %v, istiod %v %v", hand.Spec.Containers[0].ReadinessProbe, hand.Spec.Containers[0].LivenessProbe,
					real.Spec.Containers[0].ReadinessProbe, real.Spec.Containers[0].LivenessProbe)
			}
			hpx, rpx := container(hand, "istio-proxy"), container(real, "istio-proxy")
			if hpx.Image != rpx.Image || !reflect.DeepEqual(hpx.Args[:2], rpx.Args[:2]) {
				t.Errorf("istio-proxy: hand %s %v, istiod %s %v", hpx.Image, hpx.Args, rpx.Image, rpx.Args)
			}
			if hv, rv := probers(t, hpx), probers(t, rpx); !reflect.DeepEqual(hv, rv) {
				t.Errorf("ISTIO_KUBE_APP_PROBERS: hand %v, istiod %v", hv, rv)
			}
			if env(hpx, "ISTIO_META_WORKLOAD_NAME") != env(rpx, "ISTIO_META_WORKLOAD_NAME") {
				t.Errorf("ISTIO_META_WORKLOAD_NAME: hand %q, istiod %q", env(hpx, "ISTIO_META_WORKLOAD_NAME"), env(rpx, "ISTIO_META_WORKLOAD_NAME"))
			}
		})
	}
	sort.Strings(diffs)
	for _, d := range diffs {
		t.Log("DIFF " + d)
	}
}

type sidecarStatus struct {
	InitContainers, Containers, Volumes []string
	Revision                            string
}

func statusOf(t *testing.T, p *corev1.Pod) sidecarStatus {
	t.Helper()
	var s sidecarStatus
	if err := json.Unmarshal([]byte(p.Annotations[sidecarStatusAnnotation]), &s); err != nil {
		t.Fatalf("%s: %v", sidecarStatusAnnotation, err)
	}
	return s
}

func container(p *corev1.Pod, name string) corev1.Container {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == name {
			return c
		}
	}
	return corev1.Container{}
}

func env(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func probers(t *testing.T, c corev1.Container) map[string]any {
	t.Helper()
	v := env(c, "ISTIO_KUBE_APP_PROBERS")
	if v == "" {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		t.Fatalf("ISTIO_KUBE_APP_PROBERS %q: %v", v, err)
	}
	return m
}

// podDiffs lists how the hand-written pod differs from istiod's: labels,
// annotations, containers (by name), the proxy's args, env and ports, the
// init container's args, volumes.
func podDiffs(hand, real *corev1.Pod) []string {
	var out []string
	mapDiff := func(what string, h, r map[string]string) {
		keys := map[string]bool{}
		for k := range h {
			keys[k] = true
		}
		for k := range r {
			keys[k] = true
		}
		for k := range keys {
			hv, hok := h[k]
			rv, rok := r[k]
			switch {
			case k == sidecarStatusAnnotation:
				if hv != rv {
					out = append(out, fmt.Sprintf("%s %s: hand %s, istiod %s", what, k, hv, rv))
				}
			case !hok:
				out = append(out, fmt.Sprintf("%s %s only from istiod (%q)", what, k, rv))
			case !rok:
				out = append(out, fmt.Sprintf("%s %s only hand-written (%q)", what, k, hv))
			case hv != rv:
				out = append(out, fmt.Sprintf("%s %s: hand %q, istiod %q", what, k, hv, rv))
			}
		}
	}
	mapDiff("label", hand.Labels, real.Labels)
	mapDiff("annotation", hand.Annotations, real.Annotations)
	names := func(cs []corev1.Container) string {
		var n []string
		for _, c := range cs {
			n = append(n, c.Name)
		}
		return strings.Join(n, ",")
	}
	if a, b := names(hand.Spec.InitContainers), names(real.Spec.InitContainers); a != b {
		out = append(out, fmt.Sprintf("init containers: hand %s, istiod %s", a, b))
	}
	if a, b := names(hand.Spec.Containers), names(real.Spec.Containers); a != b {
		out = append(out, fmt.Sprintf("containers: hand %s, istiod %s", a, b))
	}
	hp, rp := container(hand, "istio-proxy"), container(real, "istio-proxy")
	if !reflect.DeepEqual(hp.Args, rp.Args) {
		out = append(out, fmt.Sprintf("istio-proxy args: hand %v, istiod %v", hp.Args, rp.Args))
	}
	envNames := func(c corev1.Container) map[string]string {
		m := map[string]string{}
		for _, e := range c.Env {
			m[e.Name] = e.Value
			if e.ValueFrom != nil {
				m[e.Name] = "(valueFrom)"
			}
		}
		return m
	}
	he, re := envNames(hp), envNames(rp)
	var onlyIstiod []string
	for k := range re {
		if _, ok := he[k]; !ok {
			onlyIstiod = append(onlyIstiod, k)
		}
	}
	sort.Strings(onlyIstiod)
	if len(onlyIstiod) > 0 {
		out = append(out, fmt.Sprintf("istio-proxy env only from istiod: %d variables (%s)", len(onlyIstiod), strings.Join(onlyIstiod, ",")))
	}
	for k, v := range he {
		if k != "ISTIO_KUBE_APP_PROBERS" && re[k] != v {
			out = append(out, fmt.Sprintf("istio-proxy env %s: hand %q, istiod %q", k, v, re[k]))
		}
	}
	portsOf := func(c corev1.Container) string {
		var s []string
		for _, p := range c.Ports {
			s = append(s, fmt.Sprintf("%s/%d", p.Name, p.ContainerPort))
		}
		return strings.Join(s, ",")
	}
	if a, b := portsOf(hp), portsOf(rp); a != b {
		out = append(out, fmt.Sprintf("istio-proxy ports: hand %s, istiod %s", a, b))
	}
	if (hp.ReadinessProbe == nil) != (rp.ReadinessProbe == nil) {
		out = append(out, fmt.Sprintf("istio-proxy readiness probe: hand %v, istiod %v", hp.ReadinessProbe != nil, rp.ReadinessProbe != nil))
	}
	hi, ri := container(hand, "istio-init"), container(real, "istio-init")
	if !reflect.DeepEqual(hi.Args, ri.Args) {
		out = append(out, fmt.Sprintf("istio-init args: hand %v, istiod %v", hi.Args, ri.Args))
	}
	if len(hand.Spec.Volumes) != len(real.Spec.Volumes) {
		out = append(out, fmt.Sprintf("volumes: hand %d, istiod %d", len(hand.Spec.Volumes), len(real.Spec.Volumes)))
	}
	if hand.Spec.SecurityContext == nil && real.Spec.SecurityContext != nil {
		out = append(out, "pod securityContext only from istiod")
	}
	return out
}
