package scenario

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads, strictly decodes and validates the scenario file at path.
func Load(path string) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	return s, nil
}

// Parse strictly decodes and validates one scenario document.
func Parse(data []byte) (*Scenario, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var s Scenario
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty scenario")
		}
		return nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	if errs := s.validate(); len(errs) > 0 {
		msgs := make([]string, 0, len(errs))
		for _, e := range errs {
			if line := lineOf(&root, e.path); line > 0 {
				msgs = append(msgs, fmt.Sprintf("line %d: %s: %s", line, e.path, e.msg))
			} else {
				msgs = append(msgs, fmt.Sprintf("%s: %s", e.path, e.msg))
			}
		}
		return nil, fmt.Errorf("invalid scenario:\n  %s", strings.Join(msgs, "\n  "))
	}
	return &s, nil
}

// Validate checks a scenario built in Go (Parse already validates).
func (s *Scenario) Validate() error {
	errs := s.validate()
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, 0, len(errs))
	for _, e := range errs {
		msgs = append(msgs, e.path+": "+e.msg)
	}
	return fmt.Errorf("invalid scenario:\n  %s", strings.Join(msgs, "\n  "))
}

type fieldError struct{ path, msg string }

var dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

var knownProtocols = map[string]bool{
	"http": true, "http2": true, "https": true, "grpc": true, "grpc-web": true, "tcp": true,
	"tls": true, "mongo": true, "mysql": true, "redis": true,
}

func (s *Scenario) validate() []fieldError {
	var errs []fieldError
	add := func(path, format string, a ...any) { errs = append(errs, fieldError{path, fmt.Sprintf(format, a...)}) }
	name := func(path, v string) {
		if v == "" {
			add(path, "required")
		} else if !dns1123.MatchString(v) || len(v) > 63 {
			add(path, "%q is not a DNS-1123 label", v)
		}
	}

	name("name", s.Name)
	if s.ScrapeInterval.Duration < 0 {
		add("scrapeInterval", "must be positive")
	}
	nsSeen := map[string]bool{}
	for i, n := range s.Namespaces {
		p := fmt.Sprintf("namespaces[%d]", i)
		name(p+".name", n.Name)
		if nsSeen[n.Name] {
			add(p+".name", "duplicate namespace %q", n.Name)
		}
		nsSeen[n.Name] = true
		if n.Name == "istio-system" {
			add(p+".name", "istio-system is created by the sandbox; do not declare it")
		}
		if n.Injection && n.Revision != "" {
			add(p, "set injection or revision, not both")
		}
	}
	nsOK := func(path, ns string) {
		if ns == "" {
			add(path, "required")
		} else if !nsSeen[ns] {
			add(path, "namespace %q is not declared under namespaces", ns)
		}
	}

	wSeen := map[string]bool{}
	for i, w := range s.Workloads {
		p := fmt.Sprintf("workloads[%d]", i)
		name(p+".name", w.Name)
		nsOK(p+".namespace", w.Namespace)
		key := w.Namespace + "/" + w.Name
		if wSeen[key] {
			add(p+".name", "duplicate workload %s", key)
		}
		wSeen[key] = true
		if w.ServiceAccount != "" {
			name(p+".serviceAccount", w.ServiceAccount)
		}
		if w.Replicas < 0 || w.Replicas > 20 {
			add(p+".replicas", "must be between 1 and 20")
		}
		if w.ErrorRate < 0 || w.ErrorRate > 1 {
			add(p+".errorRate", "must be between 0 and 1")
		}
		if w.ErrorStatus != 0 && (w.ErrorStatus < 400 || w.ErrorStatus > 599) {
			add(p+".errorStatus", "must be an HTTP error status (400-599)")
		}
		portSeen := map[int]bool{}
		for j, port := range w.Ports {
			pp := fmt.Sprintf("%s.ports[%d]", p, j)
			if port.Port <= 0 || port.Port > 65535 {
				add(pp+".port", "must be 1-65535")
			}
			if port.Port == 15090 || (port.Port >= 15000 && port.Port <= 15099) {
				add(pp+".port", "%d is reserved for the sidecar (15000-15099)", port.Port)
			}
			if portSeen[port.Port] {
				add(pp+".port", "duplicate port %d", port.Port)
			}
			portSeen[port.Port] = true
			if !knownProtocols[port.ProtocolName()] {
				add(pp+".protocol", "unknown protocol %q", port.Protocol)
			}
			if (port.Readiness != "" || port.Liveness != "") && !IsHTTP(port.ProtocolName()) {
				add(pp, "readiness/liveness probes need an HTTP port")
			}
		}
		for _, a := range []string{"traffic.sidecar.istio.io/excludeInboundPorts", "traffic.sidecar.istio.io/includeInboundPorts"} {
			if v, ok := w.PodAnnotations[a]; ok && v != "*" && v != "" {
				if _, err := ParsePortList(v); err != nil {
					add(p+".podAnnotations", "%s: %v", a, err)
				}
			}
		}
	}

	svcSeen := map[string]bool{}
	for i, svc := range s.Services {
		p := fmt.Sprintf("services[%d]", i)
		name(p+".name", svc.Name)
		nsOK(p+".namespace", svc.Namespace)
		key := svc.Namespace + "/" + svc.Name
		if svcSeen[key] {
			add(p+".name", "duplicate service %s", key)
		}
		svcSeen[key] = true
		switch svc.Type {
		case "", "ClusterIP", "LoadBalancer", "NodePort":
		default:
			add(p+".type", "must be ClusterIP, LoadBalancer or NodePort")
		}
		if len(svc.Ports) == 0 {
			add(p+".ports", "at least one port")
		}
		sel := ServiceSelector(svc)
		var backends []Workload
		for _, w := range s.Workloads {
			if w.Namespace == svc.Namespace && Selects(sel, WorkloadLabels(w)) {
				backends = append(backends, w)
			}
		}
		pSeen := map[int]bool{}
		for j, sp := range svc.Ports {
			pp := fmt.Sprintf("%s.ports[%d]", p, j)
			name(pp+".name", sp.Name)
			if sp.Port <= 0 || sp.Port > 65535 {
				add(pp+".port", "must be 1-65535")
			}
			if pSeen[sp.Port] {
				add(pp+".port", "duplicate port %d", sp.Port)
			}
			pSeen[sp.Port] = true
			for _, w := range backends {
				found := false
				for _, wp := range w.Ports {
					found = found || wp.Port == sp.Target()
				}
				if !found {
					add(pp+".targetPort", "workload %s/%s selected by the service has no port %d", w.Namespace, w.Name, sp.Target())
				}
			}
		}
	}

	hostSeen := map[string]bool{}
	for i, r := range s.Gateway.Routes {
		p := fmt.Sprintf("gateway.routes[%d]", i)
		if r.Host == "" {
			add(p+".host", "required")
		}
		if hostSeen[r.Host] {
			add(p+".host", "duplicate host %q", r.Host)
		}
		hostSeen[r.Host] = true
		if err := s.checkServiceRef(r.Service); err != nil {
			add(p+".service", "%v", err)
		}
	}

	flowSeen := map[string]bool{}
	for i, f := range s.Flows {
		p := fmt.Sprintf("flows[%d]", i)
		if f.Name == "" {
			add(p+".name", "required")
		} else if !dns1123.MatchString(f.Name) {
			add(p+".name", "%q: use lower-case letters, digits and '-'", f.Name)
		}
		if flowSeen[f.Name] {
			add(p+".name", "duplicate flow %q", f.Name)
		}
		flowSeen[f.Name] = true
		if f.Rate < 0 || f.Rate > 100 {
			add(p+".rate", "must be between 0 and 100 requests per second")
		}
		if f.StartAfter.Duration < 0 || f.StopAfter.Duration < 0 {
			add(p, "startAfter and stopAfter must be positive")
		}
		if f.StopAfter.Duration > 0 && f.StopAfter.Duration <= f.StartAfter.Duration {
			add(p+".stopAfter", "must be after startAfter")
		}
		if f.From == "" {
			add(p+".from", "required")
		} else if f.From != External {
			if _, err := s.FindWorkload(f.From); err != nil {
				add(p+".from", "%v", err)
			}
		}
		if _, ok := s.GatewayRoute(f.To); ok {
			continue
		}
		ref, err := ParseServiceRef(f.To)
		if err != nil {
			add(p+".to", "%v (or a gateway route host)", err)
			continue
		}
		if err := s.checkServiceRef(f.To); err != nil {
			add(p+".to", "%v", err)
			continue
		}
		svc, _ := s.FindService(ref.Service, ref.Namespace)
		if f.From == External && svc.Type != "LoadBalancer" && svc.Type != "NodePort" {
			add(p+".to", "an external client can only reach a LoadBalancer or NodePort service or a gateway host; %s is %s", ref.Service, orDefault(svc.Type, "ClusterIP"))
		}
	}

	for i, o := range s.Objects {
		p := fmt.Sprintf("objects[%d]", i)
		if av, _ := o["apiVersion"].(string); av == "" {
			add(p+".apiVersion", "required")
		}
		if k, _ := o["kind"].(string); k == "" {
			add(p+".kind", "required")
		}
		md, _ := o["metadata"].(map[string]any)
		if n, _ := md["name"].(string); n == "" {
			add(p+".metadata.name", "required")
		}
		// Objects go to the API server as JSON, whose keys are strings: an
		// unquoted number key (portLevelMtls: {9090: ...}) would only fail
		// when the sandbox starts.
		if _, err := json.Marshal(o); err != nil {
			add(p, "cannot be sent as JSON (quote number keys, e.g. \"9090\"): %v", err)
		}
	}
	return errs
}

func (s *Scenario) checkServiceRef(v string) error {
	ref, err := ParseServiceRef(v)
	if err != nil {
		return err
	}
	svc, ok := s.FindService(ref.Service, ref.Namespace)
	if !ok {
		return fmt.Errorf("no service %s in namespace %s", ref.Service, ref.Namespace)
	}
	for _, p := range svc.Ports {
		if p.Port == ref.Port {
			return nil
		}
	}
	return fmt.Errorf("service %s.%s has no port %d", ref.Service, ref.Namespace, ref.Port)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// ParsePortList parses a comma-separated list of ports ("8080, 9090").
func ParsePortList(v string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 || n > 65535 {
			return nil, fmt.Errorf("bad port %q", f)
		}
		out = append(out, n)
	}
	sort.Ints(out)
	return out, nil
}

var pathStep = regexp.MustCompile(`([A-Za-z0-9_]+)|\[(\d+)\]`)

// lineOf finds the line of a validation path like "flows[2].to" in the
// document, falling back to the closest ancestor that exists.
func lineOf(root *yaml.Node, path string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, m := range pathStep.FindAllStringSubmatch(path, -1) {
		var next *yaml.Node
		if m[1] != "" && n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == m[1] {
					line = n.Content[i].Line
					next = n.Content[i+1]
					break
				}
			}
		} else if m[2] != "" && n.Kind == yaml.SequenceNode {
			idx, _ := strconv.Atoi(m[2])
			if idx < len(n.Content) {
				next = n.Content[idx]
				line = next.Line
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}
