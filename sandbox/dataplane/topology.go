package dataplane

import (
	"fmt"
	"hash/fnv"
	"net"
	"slices"
	"sort"
	"strings"

	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// ProxyVersion is the Istio version the simulated sidecars claim to be.
const ProxyVersion = "1.28.0"

// Gateway identity: Istio's default ingress gateway deployment.
const (
	GatewayNamespace      = "istio-system"
	GatewayName           = "istio-ingressgateway"
	GatewayServiceAccount = "istio-ingressgateway-service-account"
	GatewayPort           = 8080
	GatewayServicePort    = 80
)

// Pod is one simulated workload instance.
type Pod struct {
	Name, Namespace, Workload, ServiceAccount string
	Labels, Annotations                       map[string]string
	IP                                        string
	Sidecar                                   bool // has an istio-proxy sidecar
	Gateway                                   bool // the ingress gateway (Envoy, but not a sidecar)
	Ports                                     []scenario.WorkloadPort
	ErrorRate                                 float64
	ErrorStatus                               int

	captured map[int]bool // inbound ports the sidecar intercepts
	metrics  *sidecarMetrics
	peer     peer
}

// SPIFFE returns the pod's mesh identity.
func (p *Pod) SPIFFE() string { return SPIFFEID(p.Namespace, p.ServiceAccount) }

// Captured reports whether the sidecar intercepts inbound port.
func (p *Pod) Captured(port int) bool { return p.Sidecar && p.captured[port] }

func (p *Pod) port(n int) (scenario.WorkloadPort, bool) {
	for _, wp := range p.Ports {
		if wp.Port == n {
			return wp, true
		}
	}
	return scenario.WorkloadPort{}, false
}

// Service is one simulated Service with its own loopback address.
type Service struct {
	Name, Namespace, Type string
	IP                    string
	Ports                 []scenario.ServicePort
	Selector              map[string]string
	Endpoints             []*Pod
}

// FQDN is the Service's cluster-local DNS name.
func (s *Service) FQDN() string { return s.Name + "." + s.Namespace + ".svc.cluster.local" }

func (s *Service) port(n int) (scenario.ServicePort, bool) {
	for _, p := range s.Ports {
		if p.Port == n {
			return p, true
		}
	}
	return scenario.ServicePort{}, false
}

// topology is the scenario laid out on loopback addresses 127.B.x.y: pods in
// 127.B.0-99.*, services in 127.B.100-199.*, external clients 127.B.250.*.
type topology struct {
	base     int
	pods     []*Pod
	services []*Service
	byWL     map[string][]*Pod // "ns/name"
}

func podName(w scenario.Workload, i int) string {
	h := fnv.New32a()
	h.Write([]byte(w.Namespace + "/" + w.Name))
	sum := h.Sum32()
	const alnum = "bcdfghjklmnpqrstvwxz2456789"
	rs := make([]byte, 0, 16)
	for n := sum; len(rs) < 10; n = n/27 + uint32(len(rs))*7919 {
		rs = append(rs, alnum[n%27])
	}
	suffix := make([]byte, 5)
	for j, n := 0, sum^uint32(i*2654435761); j < 5; j, n = j+1, n/27+uint32(i) {
		suffix[j] = alnum[n%27]
	}
	return fmt.Sprintf("%s-%s-%s", w.Name, rs, suffix)
}

func buildTopology(s *scenario.Scenario, base int) (*topology, error) {
	t := &topology{base: base, byWL: map[string][]*Pod{}}
	idx := 0
	addPod := func(p *Pod) {
		p.IP = fmt.Sprintf("127.%d.%d.%d", base, idx/200, idx%200+1)
		idx++
		t.pods = append(t.pods, p)
		t.byWL[p.Namespace+"/"+p.Workload] = append(t.byWL[p.Namespace+"/"+p.Workload], p)
	}
	for _, w := range s.Workloads {
		meshed := s.HasSidecar(w)
		for i := 0; i < scenario.ReplicaCount(w); i++ {
			labels := scenario.WorkloadLabels(w)
			p := &Pod{
				Name: podName(w, i), Namespace: w.Namespace, Workload: w.Name,
				ServiceAccount: scenario.ServiceAccountName(w),
				Labels:         labels,
				Annotations:    copyMap(w.PodAnnotations),
				Sidecar:        meshed,
				Ports:          w.Ports,
				ErrorRate:      w.ErrorRate, ErrorStatus: w.ErrorStatus,
			}
			if p.ErrorStatus == 0 {
				p.ErrorStatus = 500
			}
			captured, err := capturedPorts(w)
			if err != nil {
				return nil, err
			}
			p.captured = captured
			addPod(p)
		}
	}
	gw := &Pod{
		Name: podName(scenario.Workload{Name: GatewayName, Namespace: GatewayNamespace}, 0), Namespace: GatewayNamespace,
		Workload: GatewayName, ServiceAccount: GatewayServiceAccount,
		Labels:  map[string]string{"app": GatewayName, "istio": "ingressgateway"},
		Sidecar: false, Gateway: true,
		Ports: []scenario.WorkloadPort{{Name: "http2", Port: GatewayPort, Protocol: "http"}},
	}
	addPod(gw)
	if idx > 100*200 {
		return nil, fmt.Errorf("too many pods (%d)", idx)
	}

	svcs := append([]scenario.Service(nil), s.Services...)
	svcs = append(svcs, scenario.Service{
		Name: GatewayName, Namespace: GatewayNamespace, Type: "LoadBalancer",
		Selector: map[string]string{"app": GatewayName},
		Ports:    []scenario.ServicePort{{Name: "http2", Port: GatewayServicePort, TargetPort: GatewayPort}},
	})
	for j, ss := range svcs {
		svc := &Service{
			Name: ss.Name, Namespace: ss.Namespace, Type: ss.Type, Ports: ss.Ports,
			Selector: scenario.ServiceSelector(ss),
			IP:       fmt.Sprintf("127.%d.%d.%d", base, 100+j/200, j%200+1),
		}
		if svc.Type == "" {
			svc.Type = "ClusterIP"
		}
		for _, p := range t.pods {
			if p.Namespace == svc.Namespace && scenario.Selects(svc.Selector, p.Labels) {
				svc.Endpoints = append(svc.Endpoints, p)
			}
		}
		t.services = append(t.services, svc)
	}
	return t, nil
}

// capturedPorts applies the sidecar's inbound capture annotations
// (https://istio.io/latest/docs/reference/config/annotations/#SidecarTrafficIncludeInboundPorts
// and #SidecarTrafficExcludeInboundPorts): by default every container port is
// captured ("*"); excluded ports bypass the sidecar entirely.
func capturedPorts(w scenario.Workload) (map[int]bool, error) {
	out := map[int]bool{}
	include := "*"
	if v, ok := w.PodAnnotations["traffic.sidecar.istio.io/includeInboundPorts"]; ok {
		include = strings.TrimSpace(v)
	}
	if include == "*" {
		for _, p := range w.Ports {
			out[p.Port] = true
		}
	} else {
		ports, err := scenario.ParsePortList(include)
		if err != nil {
			return nil, fmt.Errorf("workload %s/%s includeInboundPorts: %w", w.Namespace, w.Name, err)
		}
		for _, p := range ports {
			out[p] = true
		}
	}
	if v, ok := w.PodAnnotations["traffic.sidecar.istio.io/excludeInboundPorts"]; ok {
		ports, err := scenario.ParsePortList(v)
		if err != nil {
			return nil, fmt.Errorf("workload %s/%s excludeInboundPorts: %w", w.Namespace, w.Name, err)
		}
		for _, p := range ports {
			delete(out, p)
		}
	}
	return out, nil
}

func (t *topology) service(name, ns string) *Service {
	for _, s := range t.services {
		if s.Name == name && s.Namespace == ns {
			return s
		}
	}
	return nil
}

// serviceFor finds the Service through which traffic to pod:port arrived:
// the one named by host if it selects the pod, else the first that does.
func (t *topology) serviceFor(p *Pod, port int, host string) dstService {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	var first *Service
	for _, s := range t.services {
		if s.Namespace != p.Namespace {
			continue
		}
		selected := false
		for _, e := range s.Endpoints {
			selected = selected || e == p
		}
		if !selected {
			continue
		}
		targets := false
		for _, sp := range s.Ports {
			targets = targets || sp.Target() == port
		}
		if !targets {
			continue
		}
		if host != "" && (host == s.FQDN() || host == s.Name || host == s.Name+"."+s.Namespace || host == s.Name+"."+s.Namespace+".svc") {
			return dstService{s.FQDN(), s.Name, s.Namespace}
		}
		if first == nil {
			first = s
		}
	}
	if first == nil {
		return unknownService
	}
	return dstService{first.FQDN(), first.Name, first.Namespace}
}

func peerOf(p *Pod) peer {
	canonical := p.Labels["service.istio.io/canonical-name"]
	if canonical == "" {
		canonical = p.Labels["app"]
	}
	rev := p.Labels["service.istio.io/canonical-revision"]
	if rev == "" {
		rev = p.Labels["version"]
	}
	if rev == "" {
		rev = "latest"
	}
	ver := p.Labels["version"]
	if ver == "" {
		ver = unknown
	}
	return peer{
		workload: p.Workload, namespace: p.Namespace, principal: p.SPIFFE(),
		app: orUnknown(p.Labels["app"]), version: ver, canonical: orUnknown(canonical), revision: rev,
	}
}

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// httpServicePort reports whether a Service selecting p declares target
// port as HTTP, by appProtocol or port name prefix as istiod reads it
// (https://istio.io/latest/docs/ops/configuration/traffic-management/protocol-selection/);
// istiod then builds HTTP filter chains for the port. Unnamed ports are
// sniffed (protocol auto), not HTTP.
func (t *topology) httpServicePort(p *Pod, port int) bool {
	for _, s := range t.services {
		if !slices.Contains(s.Endpoints, p) {
			continue
		}
		for _, sp := range s.Ports {
			if sp.Target() != port {
				continue
			}
			proto := strings.ToLower(sp.AppProtocol)
			if proto == "" {
				proto, _, _ = strings.Cut(strings.ToLower(sp.Name), "-")
			}
			switch proto {
			case "http", "http2", "grpc", "grpc-web":
				return true
			}
		}
	}
	return false
}
