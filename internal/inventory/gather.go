package inventory

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istio "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/pager"

	"github.com/mtls-migrate/mtls-migrate/internal/meshconfig"
	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
)

// DefaultRootNamespace is Istio's default meshConfig.rootNamespace.
const DefaultRootNamespace = meshconfig.DefaultRootNamespace

// Clients are what Gather reads through. Dynamic is optional: without it
// APIServices and CRD conversion webhooks are not checked (a warning says so).
// Metadata is optional too: with it GatherModes reads most pods as
// metadata only (see GatherModes).
type Clients struct {
	Kube     kubernetes.Interface
	Istio    istio.Interface
	Dynamic  dynamic.Interface
	Metadata metadata.Interface
}

// gatherStep reads one kind into the inventory.
type gatherStep struct {
	what string
	fn   func(context.Context, Clients, *Inventory) error
}

// Steps that effective modes need: the mesh config (read first), namespaces,
// pods and PeerAuthentications.
var modeSteps = []gatherStep{
	{"namespaces", listNamespaces},
	{"pods", listPods},
	{"PeerAuthentications", listPeerAuthentications},
}

// Steps only the planner's risk checks need.
var riskSteps = []gatherStep{
	{"services", listServices},
	{"statefulsets", listStatefulSets},
	{"cronjobs", listCronJobs},
	{"DestinationRules", listDestinationRules},
	{"Gateways and VirtualServices", listRouting},
	{"admission webhooks", listWebhooks},
	{"APIServices and CRD conversion webhooks", listAggregated},
}

// Gather reads the whole inventory the planner decides on. Every list is
// cluster-wide (one call per kind, paged), so the number of API calls does
// not grow with the mesh.
func Gather(ctx context.Context, c Clients) (*Inventory, error) {
	return gather(ctx, c, modeSteps, riskSteps)
}

// GatherModes reads only what effective modes need (mesh config,
// namespaces, pods, PeerAuthentications): `status` uses it, so it needs
// neither the planner's other reads nor their RBAC.
//
// With a metadata client, pods are read in full only in the namespaces
// where a PeerAuthentication selects workloads (outside the root
// namespace, where Istio ignores selectors): only there do status'
// overrides need the pods' ports and workload names. Elsewhere a pod is
// its metadata (PartialPods): a pod of 20,000 in a mesh is about 12 KB of
// protobuf in full, and decoding them all was most of status' time.
func GatherModes(ctx context.Context, c Clients) (*Inventory, error) {
	if c.Metadata == nil {
		return gather(ctx, c, modeSteps)
	}
	return gather(ctx, c, []gatherStep{
		{"namespaces", listNamespaces},
		{"PeerAuthentications", listPeerAuthentications},
		{"pods", listPodsForModes},
	})
}

// listPodsForModes lists every pod's metadata, then the pods of the
// namespaces with workload policies in full.
func listPodsForModes(ctx context.Context, c Clients, inv *Inventory) error {
	full := map[string]bool{}
	for _, pa := range inv.PeerAuthentications {
		if len(pa.Selector) > 0 && pa.Namespace != inv.RootNamespace {
			full[pa.Namespace] = true
		}
	}
	pods := c.Metadata.Resource(corev1.SchemeGroupVersion.WithResource("pods"))
	err := eachPage(ctx, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return pods.List(ctx, o)
	}, func(obj runtime.Object) error {
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return fmt.Errorf("unexpected %T in pod metadata list", obj)
		}
		if !full[m.Namespace] {
			inv.Pods = append(inv.Pods, PodFromMetadata(m))
		}
		return nil
	})
	if err != nil {
		return err
	}
	names := slices.Sorted(maps.Keys(full))
	for _, ns := range names {
		err := eachPage(ctx, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.Kube.CoreV1().Pods(ns).List(ctx, o)
		}, func(obj runtime.Object) error {
			pod, ok := obj.(*corev1.Pod)
			if !ok {
				return fmt.Errorf("unexpected %T in pod list", obj)
			}
			inv.Pods = append(inv.Pods, PodFrom(pod))
			return nil
		})
		if err != nil {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	return nil
}

// annSidecarStatus is the annotation Istio's injector writes on every pod
// it injects (and istioctl kube-inject too): the injection's own marker,
// by which the webhook tells an already injected pod
// (pkg/kube/inject/webhook.go in istio: alreadyInjected, and line 776
// where it is written).
const annSidecarStatus = "sidecar.istio.io/status"

// PodFromMetadata reduces a pod's metadata to what namespace-level modes
// need: Sidecar is "injected" (the sidecar.istio.io/status annotation)
// and not a gateway by its labels. Partial is set: Running, Ports and the
// workload name are not known (Workload is the pod's name).
func PodFromMetadata(m *metav1.PartialObjectMetadata) Pod {
	p := Pod{Namespace: m.Namespace, Name: m.Name, Labels: m.Labels, Workload: m.Name, WorkloadKind: "Pod", Partial: true}
	if _, ok := m.Annotations[annSidecarStatus]; ok {
		p.Gateway = isGatewayLabels(m.Labels)
		p.Sidecar = !p.Gateway
	}
	return p
}

func isGatewayLabels(l map[string]string) bool {
	return strings.HasSuffix(l["istio"], "gateway") || l["gateway.networking.k8s.io/gateway-name"] != ""
}

func gather(ctx context.Context, c Clients, stepLists ...[]gatherStep) (*Inventory, error) {
	inv := &Inventory{}
	if err := readMeshConfig(ctx, c.Kube, inv); err != nil {
		return nil, err
	}
	for _, steps := range stepLists {
		for _, s := range steps {
			if err := s.fn(ctx, c, inv); err != nil {
				return nil, fmt.Errorf("read %s: %w", s.what, err)
			}
		}
	}
	return inv, nil
}

func readMeshConfig(ctx context.Context, k kubernetes.Interface, inv *Inventory) error {
	mc, err := meshconfig.Read(ctx, k)
	if err != nil {
		return err
	}
	inv.RootNamespace, inv.AutoMTLS, inv.MeshConfigFound = mc.RootNamespace, mc.AutoMTLS, mc.Found
	if !mc.Found {
		inv.Warnings = append(inv.Warnings, fmt.Sprintf("ConfigMap %s/%s not found: assuming root namespace %q", meshconfig.ConfigMapNamespace, meshconfig.ConfigMapName, mc.RootNamespace))
	}
	return nil
}

func listNamespaces(ctx context.Context, c Clients, inv *Inventory) error {
	l, err := c.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range l.Items {
		inv.Namespaces = append(inv.Namespaces, Namespace{Name: n.Name, Labels: n.Labels, Annotations: n.Annotations, Managers: managers(n.ManagedFields)})
	}
	sort.Slice(inv.Namespaces, func(i, j int) bool { return inv.Namespaces[i].Name < inv.Namespaces[j].Name })
	return nil
}

func eachPage(ctx context.Context, list func(context.Context, metav1.ListOptions) (runtime.Object, error), fn func(runtime.Object) error) error {
	p := pager.New(pager.SimplePageFunc(func(opts metav1.ListOptions) (runtime.Object, error) { return list(ctx, opts) }))
	p.PageSize = 500
	return p.EachListItem(ctx, metav1.ListOptions{}, fn)
}

func listPods(ctx context.Context, c Clients, inv *Inventory) error {
	return eachPage(ctx, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return c.Kube.CoreV1().Pods("").List(ctx, o)
	}, func(obj runtime.Object) error {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return fmt.Errorf("unexpected %T in pod list", obj)
		}
		p := PodFrom(pod)
		inv.Pods = append(inv.Pods, p)
		if !p.Sidecar && !p.Gateway && p.Running {
			if hosts := hostsIn(pod.Spec.Containers); len(hosts) > 0 {
				inv.Clients = append(inv.Clients, ClientRef{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, Hosts: hosts})
			}
		}
		return nil
	})
}

// Annotations that change interception, from Istio's annotation reference
// (https://istio.io/latest/docs/reference/config/annotations/).
const (
	annExcludeInbound = "traffic.sidecar.istio.io/excludeInboundPorts"
	annIncludeInbound = "traffic.sidecar.istio.io/includeInboundPorts"
	annRewriteProbes  = "sidecar.istio.io/rewriteAppHTTPProbers"
	proxyContainer    = "istio-proxy"
)

// PodFrom reduces a pod to what the planner reads.
func PodFrom(pod *corev1.Pod) Pod {
	p := Pod{
		Namespace: pod.Namespace, Name: pod.Name, Labels: pod.Labels, IP: pod.Status.PodIP,
		Running: pod.Status.Phase == corev1.PodRunning && pod.DeletionTimestamp == nil,
	}
	var proxy *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == proxyContainer {
			proxy = &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		ic := &pod.Spec.InitContainers[i]
		// Native sidecars (Kubernetes 1.28+, Istio ENABLE_NATIVE_SIDECARS):
		// the proxy is an init container with restartPolicy Always.
		if ic.Name == proxyContainer && ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			proxy = ic
		}
	}
	if proxy != nil {
		router := false
		for _, a := range proxy.Args {
			if a == "router" {
				router = true
			}
		}
		p.Gateway = router || isGatewayLabels(pod.Labels)
		p.Sidecar = !p.Gateway
	}
	p.Workload, p.WorkloadKind = workloadName(pod, proxy)
	for _, ct := range pod.Spec.Containers {
		if ct.Name == proxyContainer {
			if p.Gateway {
				for _, cp := range ct.Ports {
					p.Ports = append(p.Ports, ContainerPort{Name: cp.Name, Port: cp.ContainerPort})
				}
			}
			continue
		}
		for _, cp := range ct.Ports {
			if cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP {
				p.Ports = append(p.Ports, ContainerPort{Name: cp.Name, Port: cp.ContainerPort})
			}
		}
		for _, pr := range []*corev1.Probe{ct.LivenessProbe, ct.ReadinessProbe, ct.StartupProbe} {
			if pr == nil || pr.HTTPGet == nil {
				continue
			}
			if port := resolvePort(pr.HTTPGet.Port, ct.Ports); port > 0 && port != 15020 && port != 15021 {
				p.HTTPProbePorts = append(p.HTTPProbePorts, port)
			}
		}
	}
	if p.Sidecar {
		p.RewriteProbesDisabled = pod.Annotations[annRewriteProbes] == "false"
		p.IncludeInboundPorts = pod.Annotations[annIncludeInbound]
		excl := map[int32]bool{}
		for _, s := range strings.Split(pod.Annotations[annExcludeInbound], ",") {
			if n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32); err == nil && n > 0 {
				excl[int32(n)] = true
			}
		}
		if inc := strings.TrimSpace(p.IncludeInboundPorts); inc != "" && inc != "*" {
			// Only the listed ports are captured.
			listed := map[int32]bool{}
			for _, s := range strings.Split(inc, ",") {
				if n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32); err == nil {
					listed[int32(n)] = true
				}
			}
			for _, cp := range p.Ports {
				if !listed[cp.Port] {
					excl[cp.Port] = true
				}
			}
		}
		for port := range excl {
			p.ExcludedInboundPorts = append(p.ExcludedInboundPorts, port)
		}
		sort.Slice(p.ExcludedInboundPorts, func(i, j int) bool { return p.ExcludedInboundPorts[i] < p.ExcludedInboundPorts[j] })
	}
	return p
}

func resolvePort(port intstr.IntOrString, ports []corev1.ContainerPort) int32 {
	if port.Type == intstr.Int {
		return port.IntVal
	}
	for _, cp := range ports {
		if cp.Name == port.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

// workloadName is the name Istio reports as destination_workload: the
// injector sets ISTIO_META_WORKLOAD_NAME to the owning workload's name;
// without it, derive it from the owner as istio's kube.WorkloadName does
// (a ReplicaSet's Deployment by stripping the pod-template-hash).
func workloadName(pod *corev1.Pod, proxy *corev1.Container) (string, string) {
	kind := "Pod"
	name := pod.Name
	if ref := metav1.GetControllerOf(pod); ref != nil {
		kind, name = ref.Kind, ref.Name
		if ref.Kind == "ReplicaSet" {
			if h := pod.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(name, "-"+h) {
				kind, name = "Deployment", strings.TrimSuffix(name, "-"+h)
			}
		}
		if ref.Kind == "Job" {
			// CronJob jobs are named <cronjob>-<scheduled time>.
			if i := strings.LastIndex(name, "-"); i > 0 {
				if _, err := strconv.Atoi(name[i+1:]); err == nil {
					kind, name = "CronJob", name[:i]
				}
			}
		}
	}
	if proxy != nil {
		for _, e := range proxy.Env {
			if e.Name == "ISTIO_META_WORKLOAD_NAME" && e.Value != "" {
				if e.Value != name {
					kind = "Deployment"
				}
				return e.Value, kind
			}
		}
	}
	return name, kind
}

var hostRE = regexp.MustCompile(`[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?`)

// hostsIn returns "name.namespace" candidates mentioned in the containers'
// command, args and environment; the planner keeps those naming a Service.
func hostsIn(cts []corev1.Container) []string {
	seen := map[string]bool{}
	scan := func(s string) {
		for _, m := range hostRE.FindAllString(strings.ToLower(s), -1) {
			seen[m] = true
		}
	}
	for _, ct := range cts {
		for _, s := range ct.Command {
			scan(s)
		}
		for _, s := range ct.Args {
			scan(s)
		}
		for _, e := range ct.Env {
			scan(e.Value)
		}
	}
	out := make([]string, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

func listServices(ctx context.Context, c Clients, inv *Inventory) error {
	return eachPage(ctx, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return c.Kube.CoreV1().Services("").List(ctx, o)
	}, func(obj runtime.Object) error {
		s, ok := obj.(*corev1.Service)
		if !ok {
			return fmt.Errorf("unexpected %T in service list", obj)
		}
		svc := Service{
			Namespace: s.Namespace, Name: s.Name, Type: string(s.Spec.Type),
			Headless:    s.Spec.ClusterIP == corev1.ClusterIPNone,
			ExternalIPs: len(s.Spec.ExternalIPs) > 0, Selector: s.Spec.Selector,
		}
		if svc.Type == "" {
			svc.Type = string(corev1.ServiceTypeClusterIP)
		}
		for _, sp := range s.Spec.Ports {
			p := ServicePort{Name: sp.Name, Port: sp.Port, TargetPort: sp.TargetPort, Protocol: string(sp.Protocol)}
			if sp.AppProtocol != nil {
				p.AppProtocol = *sp.AppProtocol
			}
			if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal == 0 {
				p.TargetPort = intstr.FromInt32(sp.Port)
			}
			svc.Ports = append(svc.Ports, p)
		}
		inv.Services = append(inv.Services, svc)
		return nil
	})
}

func listStatefulSets(ctx context.Context, c Clients, inv *Inventory) error {
	l, err := c.Kube.AppsV1().StatefulSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, s := range l.Items {
		st := StatefulSet{Namespace: s.Namespace, Name: s.Name, ServiceName: s.Spec.ServiceName}
		if s.Spec.Selector != nil {
			st.Selector = s.Spec.Selector.MatchLabels
		}
		inv.StatefulSets = append(inv.StatefulSets, st)
	}
	return nil
}

// listCronJobs records CronJobs whose pods will run without a sidecar and
// the hosts they mention: a nightly job is absent from a window's telemetry
// until it runs.
func listCronJobs(ctx context.Context, c Clients, inv *Inventory) error {
	l, err := c.Kube.BatchV1().CronJobs("").List(ctx, metav1.ListOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
			inv.Warnings = append(inv.Warnings, "CronJobs not readable: sidecar-less batch clients not checked: "+err.Error())
			return nil
		}
		return err
	}
	injected := map[string]bool{}
	for _, n := range inv.Namespaces {
		injected[n.Name] = n.InjectionEnabled()
	}
	for _, cj := range l.Items {
		tpl := cj.Spec.JobTemplate.Spec.Template
		inject := injected[cj.Namespace]
		if v, ok := tpl.Labels["sidecar.istio.io/inject"]; ok {
			inject = v == "true"
		} else if v, ok := tpl.Annotations["sidecar.istio.io/inject"]; ok {
			inject = v == "true"
		}
		if inject {
			continue
		}
		if hosts := hostsIn(tpl.Spec.Containers); len(hosts) > 0 {
			inv.Clients = append(inv.Clients, ClientRef{Kind: "CronJob", Namespace: cj.Namespace, Name: cj.Name, Hosts: hosts})
		}
	}
	return nil
}

// listPeerAuthentications reads every namespace's PeerAuthentications
// through peerauth, the tool's one reader: v1, and v1beta1 only where v1 is
// not served. Listing both and merging them adds nothing, since both
// versions serve the same stored objects (see peerauth's v1/v1beta1 rule).
func listPeerAuthentications(ctx context.Context, c Clients, inv *Inventory) error {
	pas, err := peerauth.ListAll(ctx, c.Istio)
	if err != nil {
		return err
	}
	for _, pa := range pas {
		inv.PeerAuthentications = append(inv.PeerAuthentications, mtlsmode.FromV1(pa))
	}
	return nil
}

func listDestinationRules(ctx context.Context, c Clients, inv *Inventory) error {
	l, err := c.Istio.NetworkingV1().DestinationRules("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, d := range l.Items {
		inv.DestinationRules = append(inv.DestinationRules, DestinationRuleFrom(d))
	}
	return nil
}

// DestinationRuleFrom reduces a DestinationRule to its TLS DISABLE settings.
func DestinationRuleFrom(d *networkingv1.DestinationRule) DestinationRule {
	out := DestinationRule{Namespace: d.Namespace, Name: d.Name, UID: string(d.UID), Generation: d.Generation, Host: d.Spec.GetHost(), ExportTo: d.Spec.GetExportTo()}
	const disable = "DISABLE"
	tp := d.Spec.GetTrafficPolicy()
	if tp.GetTls().GetMode().String() == disable {
		out.DisableTLS = append(out.DisableTLS, "trafficPolicy")
	}
	for _, pl := range tp.GetPortLevelSettings() {
		if pl.GetTls().GetMode().String() == disable {
			out.DisableTLS = append(out.DisableTLS, fmt.Sprintf("port %d", pl.GetPort().GetNumber()))
		}
	}
	for _, ss := range d.Spec.GetSubsets() {
		if ss.GetTrafficPolicy().GetTls().GetMode().String() == disable {
			out.DisableTLS = append(out.DisableTLS, "subset "+ss.GetName())
		}
		for _, pl := range ss.GetTrafficPolicy().GetPortLevelSettings() {
			if pl.GetTls().GetMode().String() == disable {
				out.DisableTLS = append(out.DisableTLS, fmt.Sprintf("subset %s port %d", ss.GetName(), pl.GetPort().GetNumber()))
			}
		}
	}
	return out
}

func listRouting(ctx context.Context, c Clients, inv *Inventory) error {
	gws, err := c.Istio.NetworkingV1().Gateways("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, g := range gws.Items {
		gw := Gateway{Namespace: g.Namespace, Name: g.Name, Selector: g.Spec.GetSelector()}
		for _, s := range g.Spec.GetServers() {
			gw.Servers = append(gw.Servers, GatewayServer{Port: s.GetPort().GetNumber(), Protocol: s.GetPort().GetProtocol(), Hosts: s.GetHosts()})
		}
		inv.Gateways = append(inv.Gateways, gw)
	}
	vss, err := c.Istio.NetworkingV1().VirtualServices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, v := range vss.Items {
		vs := VirtualService{Namespace: v.Namespace, Name: v.Name, Hosts: v.Spec.GetHosts(), Gateways: v.Spec.GetGateways()}
		for _, r := range v.Spec.GetHttp() {
			for _, d := range r.GetRoute() {
				vs.Destinations = append(vs.Destinations, d.GetDestination().GetHost())
			}
		}
		for _, r := range v.Spec.GetTcp() {
			for _, d := range r.GetRoute() {
				vs.Destinations = append(vs.Destinations, d.GetDestination().GetHost())
			}
		}
		for _, r := range v.Spec.GetTls() {
			for _, d := range r.GetRoute() {
				vs.Destinations = append(vs.Destinations, d.GetDestination().GetHost())
			}
		}
		inv.VirtualServices = append(inv.VirtualServices, vs)
	}
	return nil
}

func listWebhooks(ctx context.Context, c Clients, inv *Inventory) error {
	add := func(kind, name string, svc interface {
		GetNamespace() string
		GetName() string
	}) {
		inv.Webhooks = append(inv.Webhooks, WebhookBackend{Kind: kind, Name: name, ServiceNamespace: svc.GetNamespace(), ServiceName: svc.GetName()})
	}
	vw, err := c.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, cfg := range vw.Items {
		for _, w := range cfg.Webhooks {
			if s := w.ClientConfig.Service; s != nil {
				add("ValidatingWebhookConfiguration", cfg.Name, svcRef{s.Namespace, s.Name})
			}
		}
	}
	mw, err := c.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, cfg := range mw.Items {
		for _, w := range cfg.Webhooks {
			if s := w.ClientConfig.Service; s != nil {
				add("MutatingWebhookConfiguration", cfg.Name, svcRef{s.Namespace, s.Name})
			}
		}
	}
	return nil
}

type svcRef struct{ ns, name string }

func (s svcRef) GetNamespace() string { return s.ns }
func (s svcRef) GetName() string      { return s.name }

var (
	apiServicesGVR = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}
	crdsGVR        = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// listAggregated reads APIServices and CRD conversion webhooks through the
// dynamic client (their typed clientsets are not dependencies of this tool).
func listAggregated(ctx context.Context, c Clients, inv *Inventory) error {
	if c.Dynamic == nil {
		inv.Warnings = append(inv.Warnings, "no dynamic client: APIServices and CRD conversion webhooks not checked")
		return nil
	}
	for _, src := range []struct {
		gvr  schema.GroupVersionResource
		kind string
		path []string
	}{
		{apiServicesGVR, "APIService", []string{"spec", "service"}},
		{crdsGVR, "CustomResourceDefinition", []string{"spec", "conversion", "webhook", "clientConfig", "service"}},
	} {
		l, err := c.Dynamic.Resource(src.gvr).List(ctx, metav1.ListOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
				inv.Warnings = append(inv.Warnings, fmt.Sprintf("%ss not readable, not checked: %v", src.kind, err))
				continue
			}
			return err
		}
		for _, it := range l.Items {
			ns, _, _ := unstructured.NestedString(it.Object, append(src.path, "namespace")...)
			name, _, _ := unstructured.NestedString(it.Object, append(src.path, "name")...)
			if ns == "" {
				continue
			}
			inv.Webhooks = append(inv.Webhooks, WebhookBackend{Kind: src.kind, Name: it.GetName(), ServiceNamespace: ns, ServiceName: name})
		}
	}
	return nil
}

// managers are the field managers of an object (who writes it), for telling
// GitOps-managed objects apart.
func managers(mfs []metav1.ManagedFieldsEntry) []string {
	var out []string
	for _, mf := range mfs {
		if mf.Manager != "" && !slices.Contains(out, mf.Manager) {
			out = append(out, mf.Manager)
		}
	}
	return out
}
