// Package inventory reads the cluster state the planner decides on, through
// client-go and Istio's client-go, into plain values: namespaces, pods (with
// sidecar, capture and probe details), Services, StatefulSets,
// PeerAuthentications (through internal/peerauth), DestinationRules,
// Gateways and VirtualServices, webhook backends, and the mesh config. The
// decision logic never touches a client: it runs on an Inventory, which
// tests and the benchmark build in memory.
package inventory

import (
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
)

// Inventory is a snapshot of what matters for mTLS in one cluster.
type Inventory struct {
	// RootNamespace is meshConfig.rootNamespace.
	RootNamespace string
	// MeshConfigFound is false when the istio ConfigMap was absent and the
	// root namespace is the default.
	MeshConfigFound bool
	// AutoMTLS is meshConfig.enableAutoMtls (nil when unknown).
	AutoMTLS *bool

	Namespaces          []Namespace
	Pods                []Pod
	Services            []Service
	StatefulSets        []StatefulSet
	PeerAuthentications []mtlsmode.Policy
	DestinationRules    []DestinationRule
	Gateways            []Gateway
	VirtualServices     []VirtualService
	Webhooks            []WebhookBackend
	// Clients are sidecar-less workloads (pods, CronJobs) and the host names
	// their command lines and environment mention.
	Clients []ClientRef
	// Warnings say what could not be read (and so was not checked).
	Warnings []string
}

// Namespace is one namespace, its labels and annotations, and who writes it
// (managedFields managers).
type Namespace struct {
	Name        string
	Labels      map[string]string
	Annotations map[string]string
	Managers    []string
}

// Ambient reports whether the namespace is in Istio's ambient data plane
// (istio.io/dataplane-mode=ambient): its pods are captured by ztunnel, not
// by sidecars (https://istio.io/latest/docs/ambient/usage/add-workloads/).
func (n Namespace) Ambient() bool { return n.Labels["istio.io/dataplane-mode"] == "ambient" }

// InjectionEnabled reports whether sidecar injection is on for the
// namespace (istio-injection=enabled or an istio.io/rev label).
func (n Namespace) InjectionEnabled() bool {
	if n.Labels["istio-injection"] == "enabled" {
		return true
	}
	_, rev := n.Labels["istio.io/rev"]
	return rev && n.Labels["istio-injection"] != "disabled"
}

// ContainerPort is one declared container port.
type ContainerPort struct {
	Name string
	Port int32
}

// Pod is one pod, reduced to what the planner reads.
type Pod struct {
	Namespace string
	Name      string
	// Workload is the name Istio reports as destination_workload.
	Workload     string
	WorkloadKind string
	Labels       map[string]string
	IP           string
	Running      bool
	// Sidecar: an istio-proxy container, or a native-sidecar init container
	// (restartPolicy Always) named istio-proxy.
	Sidecar bool
	// Gateway: an Istio gateway (proxy in router mode), not a sidecar.
	Gateway bool
	// Partial: only the pod's metadata was read (PodFromMetadata), so
	// Running, Ports, IP and the workload name are unknown.
	Partial bool
	Ports   []ContainerPort
	// ExcludedInboundPorts are ports not captured by the sidecar
	// (traffic.sidecar.istio.io/excludeInboundPorts, or outside a
	// non-"*" includeInboundPorts).
	ExcludedInboundPorts []int32
	// IncludeInboundPorts is the raw annotation ("" means all).
	IncludeInboundPorts string
	// RewriteProbesDisabled: sidecar.istio.io/rewriteAppHTTPProbers "false".
	RewriteProbesDisabled bool
	// HTTPProbePorts are the app ports kubelet's httpGet probes target
	// (named ports resolved).
	HTTPProbePorts []int32
}

// Excluded reports whether inbound traffic on port bypasses the sidecar.
func (p *Pod) Excluded(port int32) bool {
	for _, e := range p.ExcludedInboundPorts {
		if e == port {
			return true
		}
	}
	return false
}

// Service is one Service.
type Service struct {
	Namespace   string
	Name        string
	Type        string
	Headless    bool
	ExternalIPs bool
	Selector    map[string]string
	Ports       []ServicePort
}

// ServicePort is one Service port.
type ServicePort struct {
	Name        string
	Port        int32
	TargetPort  intstr.IntOrString
	AppProtocol string
	Protocol    string
}

// StatefulSet is one StatefulSet and its governing Service.
type StatefulSet struct {
	Namespace   string
	Name        string
	ServiceName string
	Selector    map[string]string
}

// DestinationRule is one DestinationRule, reduced to its TLS settings.
type DestinationRule struct {
	Namespace string
	Name      string
	UID       string
	// Generation changes with the spec; the config digest uses it.
	Generation int64
	Host       string
	ExportTo   []string
	// DisableTLS lists where tls.mode is DISABLE: "trafficPolicy",
	// "port 8080", "subset v1".
	DisableTLS []string
}

// Gateway is one networking.istio.io Gateway.
type Gateway struct {
	Namespace string
	Name      string
	Selector  map[string]string
	Servers   []GatewayServer
}

// GatewayServer is one server block of a Gateway.
type GatewayServer struct {
	Port     uint32
	Protocol string
	Hosts    []string
}

// VirtualService is one VirtualService, reduced to its hosts, gateways and
// route destinations.
type VirtualService struct {
	Namespace    string
	Name         string
	Hosts        []string
	Gateways     []string
	Destinations []string
}

// WebhookBackend is a Service the kube-apiserver calls (admission webhook,
// APIService, CRD conversion webhook).
type WebhookBackend struct {
	Kind             string
	Name             string
	ServiceNamespace string
	ServiceName      string
}

// ClientRef is a sidecar-less workload and the hosts it mentions.
type ClientRef struct {
	Kind      string
	Namespace string
	Name      string
	Hosts     []string
}

// Index gives fast lookups over an Inventory; build it once with NewIndex.
type Index struct {
	Inv              *Inventory
	PodsByNS         map[string][]*Pod
	ServicesByNS     map[string][]*Service
	StatefulSetsByNS map[string][]*StatefulSet
	Namespaces       map[string]*Namespace
	PoliciesByNS     map[string][]*mtlsmode.Policy
}

// NewIndex indexes inv by namespace.
func NewIndex(inv *Inventory) *Index {
	ix := &Index{
		Inv:              inv,
		PodsByNS:         map[string][]*Pod{},
		ServicesByNS:     map[string][]*Service{},
		StatefulSetsByNS: map[string][]*StatefulSet{},
		Namespaces:       map[string]*Namespace{},
		PoliciesByNS:     map[string][]*mtlsmode.Policy{},
	}
	for i := range inv.Namespaces {
		ix.Namespaces[inv.Namespaces[i].Name] = &inv.Namespaces[i]
	}
	for i := range inv.Pods {
		p := &inv.Pods[i]
		ix.PodsByNS[p.Namespace] = append(ix.PodsByNS[p.Namespace], p)
	}
	for i := range inv.Services {
		s := &inv.Services[i]
		ix.ServicesByNS[s.Namespace] = append(ix.ServicesByNS[s.Namespace], s)
	}
	for i := range inv.StatefulSets {
		s := &inv.StatefulSets[i]
		ix.StatefulSetsByNS[s.Namespace] = append(ix.StatefulSetsByNS[s.Namespace], s)
	}
	for i := range inv.PeerAuthentications {
		p := &inv.PeerAuthentications[i]
		ix.PoliciesByNS[p.Namespace] = append(ix.PoliciesByNS[p.Namespace], p)
	}
	return ix
}

// Selects reports whether a Service selector matches pod labels (an empty
// selector selects nothing: such Services have manual Endpoints).
func Selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}
