// Package scenario defines the sandbox's scenario file: the namespaces,
// workloads, Services, gateway routes, traffic flows and extra Kubernetes
// objects one sandbox run is made of. Load decodes a file strictly (unknown
// fields are errors) and validates it, reporting problems with line numbers.
package scenario

import (
	"fmt"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultScrapeInterval is used when a scenario does not set scrapeInterval.
const DefaultScrapeInterval = 15 * time.Second

// External is the `from` of a flow whose client sits outside the cluster.
const External = "external"

// Scenario is one sandbox world.
type Scenario struct {
	Name           string      `yaml:"name"`
	Description    string      `yaml:"description,omitempty"`
	ScrapeInterval Duration    `yaml:"scrapeInterval,omitempty"`
	Namespaces     []Namespace `yaml:"namespaces"`
	Workloads      []Workload  `yaml:"workloads"`
	Services       []Service   `yaml:"services,omitempty"`
	Gateway        Gateway     `yaml:"gateway,omitempty"`
	Flows          []Flow      `yaml:"flows,omitempty"`
	// Objects are Kubernetes manifests created verbatim after the workloads
	// (PeerAuthentications, DestinationRules, webhooks, ...).
	Objects []map[string]any `yaml:"objects,omitempty"`
}

// Namespace is a Kubernetes namespace; Injection or Revision decide whether
// its workloads get a sidecar by default.
type Namespace struct {
	Name      string            `yaml:"name"`
	Injection bool              `yaml:"injection,omitempty"`
	Revision  string            `yaml:"revision,omitempty"`
	Labels    map[string]string `yaml:"labels,omitempty"`
}

// Meshed reports whether workloads in the namespace get a sidecar by default.
func (n Namespace) Meshed() bool { return n.Injection || n.Revision != "" }

// Workload is a Deployment-like set of identical pods.
type Workload struct {
	Name           string            `yaml:"name"`
	Namespace      string            `yaml:"namespace"`
	ServiceAccount string            `yaml:"serviceAccount,omitempty"` // default: the workload name
	Labels         map[string]string `yaml:"labels,omitempty"`         // app=<name> and version=v1 are added unless set
	Replicas       int               `yaml:"replicas,omitempty"`       // default 1
	Sidecar        *bool             `yaml:"sidecar,omitempty"`        // default: the namespace's injection
	Ports          []WorkloadPort    `yaml:"ports,omitempty"`
	PodAnnotations map[string]string `yaml:"podAnnotations,omitempty"`
	// ErrorRate is the fraction (0..1) of HTTP requests the app answers with
	// ErrorStatus (default 500).
	ErrorRate   float64 `yaml:"errorRate,omitempty"`
	ErrorStatus int     `yaml:"errorStatus,omitempty"`
}

// WorkloadPort is a container port of the app.
type WorkloadPort struct {
	Name     string `yaml:"name,omitempty"`
	Port     int    `yaml:"port"`
	Protocol string `yaml:"protocol,omitempty"` // http (default), http2, grpc, tcp, mysql, redis, ...
	// Readiness and Liveness are HTTP probe paths (HTTP ports only).
	Readiness string `yaml:"readiness,omitempty"`
	Liveness  string `yaml:"liveness,omitempty"`
}

// Service is a Kubernetes Service.
type Service struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Type      string            `yaml:"type,omitempty"`     // ClusterIP (default), LoadBalancer, NodePort
	Selector  map[string]string `yaml:"selector,omitempty"` // default app=<name>
	Ports     []ServicePort     `yaml:"ports"`
}

// ServicePort is one port of a Service; its protocol is read from the name
// prefix (http-web, grpc, tcp-mysql) or AppProtocol, as Istio does.
type ServicePort struct {
	Name        string `yaml:"name"`
	Port        int    `yaml:"port"`
	TargetPort  int    `yaml:"targetPort,omitempty"` // default Port
	AppProtocol string `yaml:"appProtocol,omitempty"`
	NodePort    int    `yaml:"nodePort,omitempty"`
}

// Target returns the container port the Service port forwards to.
func (p ServicePort) Target() int {
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Port
}

// Gateway configures the ingress gateway in istio-system.
type Gateway struct {
	Routes []Route `yaml:"routes,omitempty"`
}

// Route sends requests whose Host header is Host to Service
// ("service.namespace:port").
type Route struct {
	Host    string `yaml:"host"`
	Service string `yaml:"service"`
}

// Flow is a stream of requests from a client to a destination.
type Flow struct {
	Name string `yaml:"name"`
	// From is a workload ("namespace/name", or "name" when unique) or
	// "external" for a client outside the cluster.
	From string `yaml:"from"`
	// To is "service.namespace:port" or a gateway route host.
	To         string   `yaml:"to"`
	Rate       float64  `yaml:"rate,omitempty"` // requests per second, default 1
	Path       string   `yaml:"path,omitempty"` // HTTP path, default /
	StartAfter Duration `yaml:"startAfter,omitempty"`
	StopAfter  Duration `yaml:"stopAfter,omitempty"`
}

// Duration is a time.Duration written as "15s" in YAML.
type Duration struct{ time.Duration }

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration must be a string like \"15s\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// ScrapeEvery returns the scenario's scrape interval or the default.
func (s *Scenario) ScrapeEvery() time.Duration {
	if s.ScrapeInterval.Duration > 0 {
		return s.ScrapeInterval.Duration
	}
	return DefaultScrapeInterval
}

// Namespace returns the declared namespace called name.
func (s *Scenario) Namespace(name string) (Namespace, bool) {
	for _, n := range s.Namespaces {
		if n.Name == name {
			return n, true
		}
	}
	return Namespace{}, false
}

// HasSidecar reports whether the workload's pods get a sidecar.
func (s *Scenario) HasSidecar(w Workload) bool {
	if w.Sidecar != nil {
		return *w.Sidecar
	}
	n, _ := s.Namespace(w.Namespace)
	return n.Meshed()
}

// FindWorkload resolves a flow's From ("namespace/name" or a unique name).
func (s *Scenario) FindWorkload(ref string) (*Workload, error) {
	ns, name, qualified := strings.Cut(ref, "/")
	if !qualified {
		name, ns = ns, ""
	}
	var found *Workload
	for i := range s.Workloads {
		w := &s.Workloads[i]
		if w.Name != name || (qualified && w.Namespace != ns) {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("workload %q is ambiguous (in %s and %s); write namespace/name", ref, found.Namespace, w.Namespace)
		}
		found = w
	}
	if found == nil {
		return nil, fmt.Errorf("no workload %q", ref)
	}
	return found, nil
}

// FindService returns the Service name in namespace ns.
func (s *Scenario) FindService(name, ns string) (*Service, bool) {
	for i := range s.Services {
		if s.Services[i].Name == name && s.Services[i].Namespace == ns {
			return &s.Services[i], true
		}
	}
	return nil, false
}

// ServiceRef is a parsed "service.namespace:port".
type ServiceRef struct {
	Service, Namespace string
	Port               int
}

func (r ServiceRef) String() string { return fmt.Sprintf("%s.%s:%d", r.Service, r.Namespace, r.Port) }

// ParseServiceRef parses "service.namespace:port".
func ParseServiceRef(s string) (ServiceRef, error) {
	hostPart, portPart, ok := strings.Cut(s, ":")
	if !ok {
		return ServiceRef{}, fmt.Errorf("%q: want service.namespace:port", s)
	}
	svc, ns, ok := strings.Cut(hostPart, ".")
	if !ok || svc == "" || ns == "" || strings.Contains(ns, ".") {
		return ServiceRef{}, fmt.Errorf("%q: want service.namespace:port", s)
	}
	var port int
	if _, err := fmt.Sscanf(portPart, "%d", &port); err != nil || port <= 0 || port > 65535 || fmt.Sprint(port) != portPart {
		return ServiceRef{}, fmt.Errorf("%q: bad port %q", s, portPart)
	}
	return ServiceRef{Service: svc, Namespace: ns, Port: port}, nil
}

// GatewayRoute returns the route for host, if any.
func (s *Scenario) GatewayRoute(host string) (Route, bool) {
	for _, r := range s.Gateway.Routes {
		if r.Host == host {
			return r, true
		}
	}
	return Route{}, false
}

// WorkloadLabels returns the pod labels of w, with app and version defaults.
func WorkloadLabels(w Workload) map[string]string {
	l := map[string]string{"app": w.Name, "version": "v1"}
	for k, v := range w.Labels {
		l[k] = v
	}
	return l
}

// ServiceSelector returns the Service's selector, default app=<name>.
func ServiceSelector(s Service) map[string]string {
	if len(s.Selector) > 0 {
		return s.Selector
	}
	return map[string]string{"app": s.Name}
}

// ServiceAccountName returns the workload's ServiceAccount, default its name.
func ServiceAccountName(w Workload) string {
	if w.ServiceAccount != "" {
		return w.ServiceAccount
	}
	return w.Name
}

// ReplicaCount returns the workload's replicas, default 1.
func ReplicaCount(w Workload) int {
	if w.Replicas > 0 {
		return w.Replicas
	}
	return 1
}

// ProtocolName returns the lower-cased protocol of a workload port, default http.
func (p WorkloadPort) ProtocolName() string {
	if p.Protocol == "" {
		return "http"
	}
	return strings.ToLower(p.Protocol)
}

// IsHTTP reports whether a protocol is served as HTTP by the sandbox's apps
// (gRPC is simulated as HTTP/1.1, labelled request_protocol="grpc").
func IsHTTP(protocol string) bool {
	switch strings.ToLower(protocol) {
	case "http", "http2", "grpc", "grpc-web", "https":
		return true
	}
	return false
}

// Selects reports whether selector matches labels (all pairs present).
func Selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
