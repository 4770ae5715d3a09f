package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/mtls-migrate/mtls-migrate/sandbox/dataplane"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// AddressAnnotation on a Service holds its sandbox loopback address (the
// API server allocates spec.clusterIP from its own range).
const AddressAnnotation = "sandbox.mtls-migrate.io/address"

// NodeName is the single fake node every pod runs on.
const NodeName = "sandbox-node"

const proxyImage = "docker.io/istio/proxyv2:" + dataplane.ProxyVersion

type creator struct {
	kube kubernetes.Interface
	dyn  dynamic.Interface
	disc discovery.DiscoveryInterface
	scn  *scenario.Scenario
	dp   *dataplane.DataPlane
	// istiodInjects: istiod's webhook injects the pods (Options.Istiod).
	istiodInjects bool
	// etcd stores what the API server refuses to (endpointslices.go).
	etcd *clientv3.Client
}

func (c *creator) createAll(ctx context.Context) error {
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"namespaces", c.namespaces},
		{"node", c.node},
		{"service accounts", c.serviceAccounts},
		{"services", c.services},
		{"pods", c.pods},
		{"endpoint slices", c.endpointSlices},
		{"gateway routes", c.gatewayRoutes},
		{"scenario objects", c.objects},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("create %s: %w", s.what, err)
		}
	}
	return nil
}

func (c *creator) namespaces(ctx context.Context) error {
	for _, n := range c.scn.Namespaces {
		labels := namespaceLabels(n)
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels}}
		_, err := c.kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			cur, gerr := c.kube.CoreV1().Namespaces().Get(ctx, n.Name, metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			for k, v := range labels {
				cur.Labels[k] = v
			}
			_, err = c.kube.CoreV1().Namespaces().Update(ctx, cur, metav1.UpdateOptions{})
		}
		if err != nil {
			return fmt.Errorf("namespace %s: %w", n.Name, err)
		}
	}
	return nil
}

// namespaceLabels are the labels the sandbox gives a scenario namespace.
func namespaceLabels(n scenario.Namespace) map[string]string {
	labels := map[string]string{}
	if n.Injection {
		labels["istio-injection"] = "enabled"
	}
	if n.Revision != "" {
		labels["istio.io/rev"] = n.Revision
	}
	for k, v := range n.Labels {
		labels[k] = v
	}
	return labels
}

// injectLabel is the sidecar.istio.io/inject pod label a user writes so
// the default revision's injection webhook (the charts'
// mutatingwebhook.yaml) does what the scenario says: "false" to opt a
// sidecar-less workload out of an injecting namespace, "true" to opt a
// meshed one in where the namespace has no injection label; "" when the
// namespace already decides as wanted (or nothing could: istiod then
// does not inject and pods() reports it).
func injectLabel(scn *scenario.Scenario, p dataplane.PodInfo) string {
	if p.Gateway {
		return ""
	}
	n, _ := scn.Namespace(p.Namespace)
	nl := namespaceLabels(n)
	inj, hasInj := nl["istio-injection"]
	rev, hasRev := nl["istio.io/rev"]
	byNamespace := inj == "enabled" || (!hasInj && hasRev && rev == "default")
	switch {
	case p.Sidecar && !byNamespace && !hasInj && !hasRev:
		return "true"
	case !p.Sidecar && byNamespace:
		return "false"
	}
	return ""
}

func (c *creator) node(ctx context.Context) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName, Labels: map[string]string{"kubernetes.io/hostname": NodeName}}}
	n, err := c.kube.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	n.Status = corev1.NodeStatus{
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletReady"}},
		Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
	}
	_, err = c.kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

func (c *creator) serviceAccounts(ctx context.Context) error {
	seen := map[string]bool{}
	for _, p := range c.dp.Pods() {
		key := p.Namespace + "/" + p.ServiceAccount
		if seen[key] {
			continue
		}
		seen[key] = true
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: p.ServiceAccount, Namespace: p.Namespace}}
		if _, err := c.kube.CoreV1().ServiceAccounts(p.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("service account %s: %w", key, err)
		}
	}
	return nil
}

func (c *creator) services(ctx context.Context) error {
	svcs := append([]scenario.Service(nil), c.scn.Services...)
	svcs = append(svcs, scenario.Service{
		Name: dataplane.GatewayName, Namespace: dataplane.GatewayNamespace, Type: "LoadBalancer",
		Selector: map[string]string{"app": dataplane.GatewayName, "istio": "ingressgateway"},
		Ports:    []scenario.ServicePort{{Name: "http2", Port: dataplane.GatewayServicePort, TargetPort: dataplane.GatewayPort}},
	})
	for _, s := range svcs {
		typ := corev1.ServiceType(s.Type)
		if typ == "" {
			typ = corev1.ServiceTypeClusterIP
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, Labels: map[string]string{"app": s.Name}},
			Spec:       corev1.ServiceSpec{Type: typ, Selector: scenario.ServiceSelector(s)},
		}
		for _, p := range s.Ports {
			if addr := c.dp.ServiceAddr(s.Name, s.Namespace, p.Port); addr != "" {
				host, _, _ := strings.Cut(addr, ":")
				svc.Annotations = map[string]string{AddressAnnotation: host}
			}
			sp := corev1.ServicePort{Name: p.Name, Port: int32(p.Port), TargetPort: intstr.FromInt32(int32(p.Target())), Protocol: corev1.ProtocolTCP}
			if p.AppProtocol != "" {
				ap := p.AppProtocol
				sp.AppProtocol = &ap
			}
			if typ != corev1.ServiceTypeClusterIP {
				sp.NodePort = int32(p.NodePort)
			}
			svc.Spec.Ports = append(svc.Spec.Ports, sp)
		}
		created, err := c.kube.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
		}
		if typ == corev1.ServiceTypeLoadBalancer {
			// No cloud controller: publish the sandbox address as the LB ingress.
			if host := created.Annotations[AddressAnnotation]; host != "" {
				created.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: host}}
				if _, err := c.kube.CoreV1().Services(s.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
					return fmt.Errorf("service %s/%s status: %w", s.Namespace, s.Name, err)
				}
			}
		}
	}
	return nil
}

// pods creates each pod as its workload's ReplicaSet would, injected by
// istiod's webhook or, without istiod, written as Istio's sidecar injector
// would have left it (istio-proxy container, tlsMode and canonical labels,
// sidecar.istio.io/status), then sets its status as a kubelet would:
// Running, Ready, podIP = its sandbox loopback address, every container
// (the injected ones too) running and init containers completed.
//
// With istiod (c.istiodInjects) the pod is created as a user's Deployment
// would create it and istiod's webhook injects it; the created pod must then
// have a sidecar exactly where the scenario says.
func (c *creator) pods(ctx context.Context) error {
	for _, p := range c.dp.Pods() {
		pod := podObject(p, injectLabel(c.scn, p), !c.istiodInjects)
		created, err := c.kube.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		if c.istiodInjects {
			_, injected := created.Annotations[sidecarStatusAnnotation]
			if injected != p.Sidecar {
				return fmt.Errorf("pod %s/%s: the scenario says sidecar=%t but istiod's webhook injected=%t (namespace labels %v, pod labels %v; the sandbox runs istiod's default revision only)",
					p.Namespace, p.Name, p.Sidecar, injected, c.nsLabels(p.Namespace), created.Labels)
			}
		}
		now := metav1.NewTime(time.Now().Truncate(time.Second))
		created.Status = corev1.PodStatus{
			Phase:     corev1.PodRunning,
			PodIP:     p.IP,
			PodIPs:    []corev1.PodIP{{IP: p.IP}},
			HostIP:    "127.0.0.1",
			HostIPs:   []corev1.HostIP{{IP: "127.0.0.1"}},
			StartTime: &now,
			// The API server computed it at create (Burstable once
			// istiod's proxy has requests) and it is immutable.
			QOSClass: created.Status.QOSClass,
		}
		for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
			created.Status.Conditions = append(created.Status.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
		}
		for _, ct := range created.Spec.Containers {
			created.Status.ContainerStatuses = append(created.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: ct.Name, Image: ct.Image, ImageID: ct.Image, Ready: true, Started: ptr(true),
				ContainerID: "containerd://" + strconv.FormatInt(time.Now().UnixNano(), 16),
				State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			})
		}
		for _, ct := range created.Spec.InitContainers {
			created.Status.InitContainerStatuses = append(created.Status.InitContainerStatuses, corev1.ContainerStatus{
				Name: ct.Name, Image: ct.Image, ImageID: ct.Image, Ready: true, Started: ptr(false),
				ContainerID: "containerd://" + strconv.FormatInt(time.Now().UnixNano(), 16),
				State:       corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed", StartedAt: now, FinishedAt: now}},
			})
		}
		if _, err := c.kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

func (c *creator) nsLabels(ns string) map[string]string {
	n, _ := c.scn.Namespace(ns)
	return namespaceLabels(n)
}

const sidecarStatusAnnotation = "sidecar.istio.io/status"

// podObject is the pod as its Deployment's ReplicaSet creates it (the
// app container, probes, labels and the scenario's annotations; inject, if
// set, as the sidecar.istio.io/inject label) and, with handInject, as
// Istio's injector would leave it: the fallback when istiod is not running.
// TestHandWrittenInjectionAgreesWithIstiod compares the two.
func podObject(p dataplane.PodInfo, inject string, handInject bool) *corev1.Pod {
	labels := copyMap(p.Labels)
	annotations := copyMap(p.Annotations)
	if inject != "" {
		labels["sidecar.istio.io/inject"] = inject
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			ServiceAccountName: p.ServiceAccount,
			NodeName:           NodeName,
		},
	}
	// Pod names are <workload>-<template hash>-<suffix>, a Deployment's
	// (dataplane.podName). The ReplicaSet owner, generateName and
	// pod-template-hash are what istiod's injector names the workload from
	// (pkg/kube/util.go, GetDeployMetaFromPod: ISTIO_META_WORKLOAD_NAME,
	// which the product reads); a bare pod would be named after itself.
	if hash, _, ok := strings.Cut(strings.TrimPrefix(p.Name, p.Workload+"-"), "-"); ok && strings.HasPrefix(p.Name, p.Workload+"-") {
		rs := p.Workload + "-" + hash
		labels["pod-template-hash"] = hash
		pod.GenerateName = rs + "-"
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs,
			UID: types.UID(uidOf(p.Namespace + "/" + rs)), Controller: ptr(true), BlockOwnerDeletion: ptr(true)}}
	}
	if p.Gateway {
		labels["service.istio.io/canonical-name"] = dataplane.GatewayName
		annotations["sidecar.istio.io/inject"] = "false"
		pod.Spec.Containers = []corev1.Container{{
			Name: "istio-proxy", Image: proxyImage,
			Args:  []string{"proxy", "router", "--domain", "$(POD_NAMESPACE).svc.cluster.local"},
			Ports: []corev1.ContainerPort{{Name: "http2", ContainerPort: dataplane.GatewayPort, Protocol: corev1.ProtocolTCP}, {Name: "http-envoy-prom", ContainerPort: 15090, Protocol: corev1.ProtocolTCP}},
		}}
		return pod
	}
	app := corev1.Container{Name: "app", Image: "registry.sandbox.local/" + p.Workload + ":v1"}
	rewrite := handInject && p.Sidecar && annotations["sidecar.istio.io/rewriteAppHTTPProbers"] != "false"
	var probers []string
	for _, wp := range p.Ports {
		app.Ports = append(app.Ports, corev1.ContainerPort{Name: portName(wp), ContainerPort: int32(wp.Port), Protocol: corev1.ProtocolTCP})
		for _, pr := range []struct {
			path string
			kind string
			set  func(*corev1.Probe)
		}{
			{wp.Readiness, "readyz", func(pb *corev1.Probe) { app.ReadinessProbe = pb }},
			{wp.Liveness, "livez", func(pb *corev1.Probe) { app.LivenessProbe = pb }},
		} {
			if pr.path == "" {
				continue
			}
			probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: pr.path, Port: intstr.FromInt32(int32(wp.Port))}}, PeriodSeconds: 10}
			if rewrite {
				// The injector rewrites HTTP probes to the pilot-agent on
				// 15020 so they keep working under STRICT
				// (https://istio.io/latest/docs/ops/configuration/mesh/app-health-check/).
				key := "/app-health/app/" + pr.kind
				// As istiod writes it (pkg/kube/inject/app_probe.go,
				// DumpAppProbers), from the probe with the API server's
				// defaults (scheme HTTP, timeoutSeconds 1).
				probers = append(probers, fmt.Sprintf("%q:{\"httpGet\":{\"path\":%q,\"port\":%d,\"scheme\":\"HTTP\"},\"timeoutSeconds\":1}", key, pr.path, wp.Port))
				probe.HTTPGet = &corev1.HTTPGetAction{Path: key, Port: intstr.FromInt32(15020)}
			}
			pr.set(probe)
		}
	}
	pod.Spec.Containers = []corev1.Container{app}
	if !handInject || !p.Sidecar {
		return pod
	}
	labels["security.istio.io/tlsMode"] = "istio"
	if labels["service.istio.io/canonical-name"] == "" {
		labels["service.istio.io/canonical-name"] = labels["app"]
	}
	if labels["service.istio.io/canonical-revision"] == "" {
		labels["service.istio.io/canonical-revision"] = orDefault(labels["version"], "latest")
	}
	annotations[sidecarStatusAnnotation] = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["workload-socket","credential-socket","workload-certs","istio-envoy","istio-data","istio-podinfo","istio-token","istiod-ca-cert","istio-ca-crl"],"imagePullSecrets":null,"revision":"default"}`
	// The rest of what the charts' injection template annotates
	// (files/injection-template.yaml) and istiod's revision annotation.
	annotations["istio.io/rev"] = "default"
	annotations["kubectl.kubernetes.io/default-logs-container"] = "app"
	annotations["prometheus.io/scrape"] = "true"
	annotations["prometheus.io/port"] = "15020"
	annotations["prometheus.io/path"] = "/stats/prometheus"
	annotations["kubectl.kubernetes.io/default-container"] = "app"
	proxy := corev1.Container{
		Name: "istio-proxy", Image: proxyImage,
		Args:  []string{"proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"},
		Ports: []corev1.ContainerPort{{Name: "http-envoy-prom", ContainerPort: 15090, Protocol: corev1.ProtocolTCP}},
		Env:   []corev1.EnvVar{{Name: "ISTIO_META_WORKLOAD_NAME", Value: p.Workload}},
	}
	if len(probers) > 0 {
		proxy.Env = append(proxy.Env, corev1.EnvVar{Name: "ISTIO_KUBE_APP_PROBERS", Value: "{" + strings.Join(probers, ",") + "}"})
	}
	// istio-iptables as the template runs it: -b the captured inbound
	// ports (includeInboundPorts, default all), -d the excluded ones
	// (15090, 15021, the excludeInboundPorts annotation, then the agent's
	// 15020).
	include := orDefault(annotations["traffic.sidecar.istio.io/includeInboundPorts"], "*")
	exclude := "15090,15021,"
	if e := annotations["traffic.sidecar.istio.io/excludeInboundPorts"]; e != "" {
		exclude += e + ","
	}
	pod.Spec.InitContainers = []corev1.Container{{Name: "istio-init", Image: proxyImage, Args: []string{"istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", include, "-d", exclude + "15020", "--log_output_level=default:info"}}}
	pod.Spec.Containers = append(pod.Spec.Containers, proxy)
	return pod
}

func portName(wp scenario.WorkloadPort) string {
	if wp.Name != "" {
		return wp.Name
	}
	return ""
}

// gatewayRoutes publishes the scenario's gateway routes as an Istio Gateway
// and VirtualServices, as they would exist in a real mesh.
func (c *creator) gatewayRoutes(ctx context.Context) error {
	if len(c.scn.Gateway.Routes) == 0 {
		return nil
	}
	var hosts []any
	for _, r := range c.scn.Gateway.Routes {
		hosts = append(hosts, r.Host)
	}
	objs := []map[string]any{{
		"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
		"metadata": map[string]any{"name": "sandbox-gateway", "namespace": dataplane.GatewayNamespace},
		"spec": map[string]any{
			"selector": map[string]any{"istio": "ingressgateway"},
			"servers":  []any{map[string]any{"port": map[string]any{"number": int64(80), "name": "http", "protocol": "HTTP"}, "hosts": hosts}},
		},
	}}
	for i, r := range c.scn.Gateway.Routes {
		ref, _ := scenario.ParseServiceRef(r.Service)
		objs = append(objs, map[string]any{
			"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
			"metadata": map[string]any{"name": fmt.Sprintf("sandbox-route-%d", i), "namespace": dataplane.GatewayNamespace},
			"spec": map[string]any{
				"hosts":    []any{r.Host},
				"gateways": []any{dataplane.GatewayNamespace + "/sandbox-gateway"},
				"http": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{
					"host": ref.Service + "." + ref.Namespace + ".svc.cluster.local", "port": map[string]any{"number": int64(ref.Port)},
				}}}}},
			},
		})
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.disc))
	for _, o := range objs {
		if err := createUnstructured(ctx, c.dyn, mapper, &unstructured.Unstructured{Object: o}); err != nil {
			return err
		}
	}
	return nil
}

func (c *creator) objects(ctx context.Context) error {
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.disc))
	for i, o := range c.scn.Objects {
		// Round-trip through JSON so numbers become int64/float64 as
		// unstructured objects require.
		data, err := json.Marshal(o)
		if err != nil {
			return fmt.Errorf("objects[%d]: %w", i, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			return fmt.Errorf("objects[%d]: %w", i, err)
		}
		if err := createUnstructured(ctx, c.dyn, mapper, u); err != nil {
			return fmt.Errorf("objects[%d]: %w", i, err)
		}
	}
	return nil
}

// CreateObject creates one manifest through the dynamic client.
func createUnstructured(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, u *unstructured.Unstructured) error {
	gvk := u.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s %s: %w", gvk.Kind, u.GetName(), err)
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := u.GetNamespace()
		if ns == "" {
			ns = "default"
		}
		ri = dyn.Resource(m.Resource).Namespace(ns)
	}
	if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("%s %s/%s: %w", gvk.Kind, u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// uidOf is a stable UUID-shaped UID for an owner the sandbox does not create.
func uidOf(key string) string {
	h := sha256.Sum256([]byte(key))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
