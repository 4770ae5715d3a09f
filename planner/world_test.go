package planner

import (
	"bytes"
	"context"
	"strconv"
	"testing"
	"time"

	apinet "istio.io/api/networking/v1alpha3"
	apisecurity "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/mtls-migrate/mtls-migrate/internal/telemetry/telemetrytest"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// world is a cluster and its telemetry, built in memory.
type world struct {
	kube  []runtime.Object
	istio []runtime.Object
	flows []telemetrytest.Flow
	opts  Options
	prom  *telemetrytest.Fake
	fake  fakeOpts
	ip    int
}

func newWorld() *world {
	w := &world{}
	w.kube = append(w.kube,
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": "rootNamespace: istio-system\nenableAutoMtls: true\n"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}},
	)
	return w
}

func (w *world) ns(name string, inject bool) *world {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if inject {
		n.Labels = map[string]string{"istio-injection": "enabled"}
	}
	w.kube = append(w.kube, n)
	return w
}

// nsLabel labels namespace name (added before with ns).
func (w *world) nsLabel(name, key, value string) *world {
	for _, o := range w.kube {
		if n, ok := o.(*corev1.Namespace); ok && n.Name == name {
			if n.Labels == nil {
				n.Labels = map[string]string{}
			}
			n.Labels[key] = value
		}
	}
	return w
}

type podOpt func(*corev1.Pod)

func withAnnotation(k, v string) podOpt {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[k] = v
	}
}

func withHTTPProbe(port int32) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(port)}}}
	}
}

// workload adds one running pod of workload app in ns, with a sidecar or
// not, listening on ports.
func (w *world) workload(ns, app string, sidecar bool, ports []int32, opts ...podOpt) *world {
	w.ip++
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: app + "-abc12", Namespace: ns, Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0." + strconv.Itoa(w.ip)},
	}
	for _, p := range ports {
		pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "http", ContainerPort: p})
	}
	if sidecar {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "istio-proxy", Args: []string{"proxy", "sidecar"},
			Env: []corev1.EnvVar{{Name: "ISTIO_META_WORKLOAD_NAME", Value: app}}})
	}
	for _, o := range opts {
		o(pod)
	}
	w.kube = append(w.kube, pod)
	return w
}

func itoa(i int) string {
	return string(rune('0'+i/100%10)) + string(rune('0'+i/10%10)) + string(rune('0'+i%10))
}

func (w *world) service(ns, name, typ string, port, target int32, portName string) *world {
	w.kube = append(w.kube, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceType(typ), Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: portName, Port: port, TargetPort: intstr.FromInt32(target), Protocol: corev1.ProtocolTCP}}},
	})
	return w
}

func (w *world) selectorService(ns, name, app, typ string, port, target int32) *world {
	w.kube = append(w.kube, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceType(typ), Selector: map[string]string{"app": app},
			Ports: []corev1.ServicePort{{Name: "http", Port: port, TargetPort: intstr.FromInt32(target), Protocol: corev1.ProtocolTCP}}},
	})
	return w
}

// flow adds traffic: per second over the whole window.
func (w *world) flow(srcNS, src, dstNS, dst, csp string, perSecond float64) *world {
	step := time.Hour.Seconds() // the step of a 7d window
	w.flows = append(w.flows, telemetrytest.Flow{DstNS: dstNS, DstWorkload: dst, SrcNS: srcNS, SrcWorkload: src, CSP: csp, PerStep: perSecond * step})
	if src != "unknown" {
		w.flows = append(w.flows, telemetrytest.Flow{Reporter: "source", DstNS: dstNS, DstWorkload: dst, SrcNS: srcNS, SrcWorkload: src, CSP: "unknown", PerStep: perSecond * step})
	}
	return w
}

func (w *world) peerAuth(ns, name string, created time.Time, sel map[string]string, mode apisecurity.PeerAuthentication_MutualTLS_Mode, labels map[string]string) *world {
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, CreationTimestamp: metav1.NewTime(created), UID: types.UID("uid-" + ns + "-" + name)}}
	pa.Spec.Mtls = &apisecurity.PeerAuthentication_MutualTLS{Mode: mode}
	if sel != nil {
		pa.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: sel}
	}
	w.istio = append(w.istio, pa)
	return w
}

func (w *world) destinationRule(ns, name, host string) *world {
	w.istio = append(w.istio, &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: apinet.DestinationRule{Host: host, TrafficPolicy: &apinet.TrafficPolicy{Tls: &apinet.ClientTLSSettings{Mode: apinet.ClientTLSSettings_DISABLE}}}})
	return w
}

// gateway adds the default ingress gateway pod and Service in istio-system,
// a Gateway, and a VirtualService routing host to svc.ns.
func (w *world) gateway(host, svc, ns string, port uint32) *world {
	w.kube = append(w.kube,
		&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "istio-ingressgateway-1", Namespace: "istio-system", Labels: map[string]string{"app": "istio-ingressgateway", "istio": "ingressgateway"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "istio-proxy", Args: []string{"proxy", "router"},
				Ports: []corev1.ContainerPort{{Name: "http2", ContainerPort: 8080}, {Name: "http-envoy-prom", ContainerPort: 15090}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.9.1"},
		},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "istio-ingressgateway", Namespace: "istio-system"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"istio": "ingressgateway"},
				Ports: []corev1.ServicePort{{Name: "http2", Port: 80, TargetPort: intstr.FromInt32(8080)}}}},
	)
	w.istio = append(w.istio,
		&networkingv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "gw", Namespace: "istio-system"},
			Spec: apinet.Gateway{Selector: map[string]string{"istio": "ingressgateway"}, Servers: []*apinet.Server{{Port: &apinet.Port{Number: 80, Name: "http", Protocol: "HTTP"}, Hosts: []string{host}}}}},
		&networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Name: "route", Namespace: "istio-system"},
			Spec: apinet.VirtualService{Hosts: []string{host}, Gateways: []string{"istio-system/gw"},
				Http: []*apinet.HTTPRoute{{Route: []*apinet.HTTPRouteDestination{{Destination: &apinet.Destination{Host: svc + "." + ns + ".svc.cluster.local", Port: &apinet.PortSelector{Number: port}}}}}}}},
	)
	return w
}

func (w *world) build(t testing.TB) (*plans.Plan, error) {
	t.Helper()
	w.prom = &telemetrytest.Fake{Flows: w.flows, Versions: map[string]string{"proxy": "1.26.2"}, Warnings: w.fake.warnings, Err: w.fake.err}
	return Build(context.Background(), Inputs{
		Prometheus: w.prom,
		Kube:       k8sfake.NewClientset(w.kube...),
		Istio:      w.istioClient(t),
		Now:        func() time.Time { return testNow },
		Window:     7 * 24 * time.Hour,
		Options:    w.opts,
	})
}

// istioClient adds objects through the tracker with explicit resources:
// the fake's guess from the kind alone files Gateways under another version.
func (w *world) istioClient(t testing.TB) *istiofake.Clientset {
	c := istiofake.NewSimpleClientset()
	for _, o := range w.istio {
		var gvr schema.GroupVersionResource
		var ns string
		switch x := o.(type) {
		case *securityv1.PeerAuthentication:
			gvr, ns = securityv1.SchemeGroupVersion.WithResource("peerauthentications"), x.Namespace
		case *networkingv1.DestinationRule:
			gvr, ns = networkingv1.SchemeGroupVersion.WithResource("destinationrules"), x.Namespace
		case *networkingv1.Gateway:
			gvr, ns = networkingv1.SchemeGroupVersion.WithResource("gateways"), x.Namespace
		case *networkingv1.VirtualService:
			gvr, ns = networkingv1.SchemeGroupVersion.WithResource("virtualservices"), x.Namespace
		default:
			t.Fatalf("unexpected istio object %T", o)
		}
		if err := c.Tracker().Create(gvr, o, ns); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (w *world) mustBuild(t testing.TB) *plans.Plan {
	t.Helper()
	p, err := w.build(t)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return p
}

func stageOf(p *plans.Plan, ns string) *plans.Stage {
	for i := range p.Stages {
		if p.Stages[i].Namespace == ns && p.Stages[i].TargetMode == plans.ModeStrict {
			return &p.Stages[i]
		}
	}
	return nil
}

func hasRisk(s *plans.Stage, code string) *plans.Risk {
	for i := range s.Risks {
		if s.Risks[i].Code == code {
			return &s.Risks[i]
		}
	}
	return nil
}

func saved(t testing.TB, p *plans.Plan) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := plans.Write(&b, p); err != nil {
		t.Fatalf("save: %v", err)
	}
	return b.Bytes()
}
