package planner

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

func mtlsModeWorkload(ns string, w *workload) mtlsmode.Workload {
	return mtlsmode.Workload{Namespace: ns, Labels: w.pods[0].Labels, Ports: w.ports}
}

// gatewayRoute is a host an ingress gateway routes to a namespace, with the
// gateway pod's address for curl-style --resolve.
type gatewayRoute struct {
	host   string
	podIP  string
	port   int32
	source string
}

// httpish reports whether a Service port speaks HTTP (Istio's protocol from
// the port name prefix or appProtocol), so a plaintext HTTP request gets an
// HTTP answer under PERMISSIVE (the executor pre-checks that).
// https://istio.io/latest/docs/ops/configuration/traffic-management/protocol-selection/
func httpish(sp inventory.ServicePort) bool {
	proto := strings.ToLower(sp.AppProtocol)
	if proto == "" {
		proto, _, _ = strings.Cut(strings.ToLower(sp.Name), "-")
	}
	switch proto {
	case "http", "http2", "grpc", "grpc-web", "kubernetes.io/h2c":
		return true
	}
	return false
}

// probeKind is the plaintext probe a Service port gets: http for ports
// that speak HTTP, tcp for other TCP ports (databases, caches, queues:
// exactly the services a team fears to break, and that no request metric
// sees), none for UDP/SCTP and for ports whose application speaks TLS
// itself (Istio's https and tls prefixes): a plaintext line proves nothing
// there, the application would refuse it under any mode.
func probeKind(sp inventory.ServicePort) plans.ProbeKind {
	if sp.Protocol != "" && sp.Protocol != "TCP" {
		return ""
	}
	if httpish(sp) {
		return plans.ProbeHTTP
	}
	proto := strings.ToLower(sp.AppProtocol)
	if proto == "" {
		proto, _, _ = strings.Cut(strings.ToLower(sp.Name), "-")
	}
	if proto == "https" || proto == "tls" {
		return ""
	}
	return plans.ProbeTCP
}

// targetPort resolves a Service port's target on a pod (a named target is
// looked up in the pod's container ports).
func targetPort(sp inventory.ServicePort, p *inventory.Pod) int32 {
	if sp.TargetPort.Type == intstr.Int {
		return sp.TargetPort.IntVal
	}
	for _, cp := range p.Ports {
		if cp.Name == sp.TargetPort.StrVal {
			return cp.Port
		}
	}
	return 0
}

// probes derives a stage's probes: for each TCP port of each Service, a
// plaintext request (an HTTP one on ports that speak HTTP, a tcp probe's
// line on the others) from the tool's own process (no sidecar) straight to
// a running meshed pod; and requests through the ingress gateway for the
// hosts it routes here, which must keep working. What a plaintext probe
// expects comes from the same what-if as the plan's modes: a port STRICT
// after the stage must refuse it; a port that stays PERMISSIVE or DISABLE
// (a workload or port-level carve-out) must keep answering, as the gateway
// probes expect, so the carve-out is verified too. A port that refuses
// plaintext already before the stage gets none: the stage does not change
// it, and its pre-check (an answer before the change) could never pass.
// Pod IPs go stale: the executor checks each probe before the change.
// target is the mode the stage writes: STRICT, or PERMISSIVE for the first
// stage of a namespace that is DISABLE today, whose plaintext probes then
// all expect an answer (PERMISSIVE keeps the plaintext clients working,
// and that is what the stage must show).
func (e *env) probes(ns string, target plans.Mode) (plaintext, gateway []plans.Probe) {
	after := e.after(ns, target)
	byName := map[string]*workload{}
	for _, w := range e.workloads(ns) {
		byName[w.name] = w
	}
	for _, s := range e.ix.ServicesByNS[ns] {
		var pod *inventory.Pod
		for _, p := range e.ix.PodsByNS[ns] {
			if p.Running && p.Sidecar && p.IP != "" && inventory.Selects(s.Selector, p.Labels) && (pod == nil || p.Name < pod.Name) {
				pod = p
			}
		}
		if pod == nil || byName[pod.Workload] == nil {
			continue
		}
		mw := mtlsModeWorkload(ns, byName[pod.Workload])
		before, afterEff := e.res.Effective(mw), after.Effective(mw)
		for _, sp := range s.Ports {
			kind := probeKind(sp)
			if kind == "" {
				continue
			}
			tp := targetPort(sp, pod)
			if tp == 0 || pod.Excluded(tp) || before.PortMode(uint32(tp)) == plans.ModeStrict {
				continue
			}
			addr := net.JoinHostPort(pod.IP, strconv.Itoa(int(tp)))
			pr := plans.Probe{
				Name: fmt.Sprintf("plaintext-%s-%d", s.Name, sp.Port), Kind: kind,
				URL:    "http://" + addr + "/",
				Expect: plans.Expect{Refused: true},
			}
			stays := plans.Expect{Status: 200}
			if kind == plans.ProbeTCP {
				pr.URL, stays = "tcp://"+addr, plans.Expect{Open: true}
			}
			if m := afterEff.PortMode(uint32(tp)); m != plans.ModeStrict {
				pr.Name = fmt.Sprintf("plaintext-%s-%s-%d", strings.ToLower(string(m)), s.Name, sp.Port)
				pr.Expect = stays
			}
			plaintext = append(plaintext, pr)
		}
	}
	seen := map[string]bool{}
	for _, r := range e.routes[ns] {
		name := "gateway-" + r.host
		if seen[name] {
			continue
		}
		seen[name] = true
		port := strconv.Itoa(int(r.port))
		gateway = append(gateway, plans.Probe{
			Name: name, Kind: plans.ProbeHTTP,
			URL:     "http://" + net.JoinHostPort(r.host, port) + "/",
			Resolve: r.host + ":" + port + ":" + r.podIP,
			Expect:  plans.Expect{Status: 200},
		})
	}
	sort.Slice(plaintext, func(i, j int) bool { return plaintext[i].Name < plaintext[j].Name })
	sort.Slice(gateway, func(i, j int) bool { return gateway[i].Name < gateway[j].Name })
	return plaintext, gateway
}

// stageProbes caps the probes: gateway ones first (they prove the
// namespace still serves), then plaintext ones.
func (e *env) stageProbes(np *nsPlan, plaintext []plans.Probe) []plans.Probe {
	out := append(append([]plans.Probe(nil), np.gwProbes...), plaintext...)
	if len(out) > e.opts.MaxProbes {
		out = out[:e.opts.MaxProbes]
	}
	return out
}

// indexGatewayRoutes finds, for each namespace, the hosts an Istio gateway
// routes to one of its Services: a VirtualService bound to a Gateway whose
// route destination is a Service of the namespace. The gateway pods are
// those the Gateway's selector picks (istio=ingressgateway in the root
// namespace for the default install).
func (e *env) indexGatewayRoutes() {
	e.routes = map[string][]gatewayRoute{}
	gws := map[string]*inventory.Gateway{}
	for i := range e.inv.Gateways {
		g := &e.inv.Gateways[i]
		gws[g.Namespace+"/"+g.Name] = g
	}
	if len(gws) == 0 {
		return
	}
	type gwAt struct {
		pod  *inventory.Pod
		port int32
	}
	memo := map[*inventory.Gateway]gwAt{}
	for _, vs := range e.inv.VirtualServices {
		for _, gname := range vs.Gateways {
			if gname == "mesh" {
				continue
			}
			if !strings.Contains(gname, "/") {
				gname = vs.Namespace + "/" + gname
			}
			g := gws[gname]
			if g == nil {
				continue
			}
			at, ok := memo[g]
			if !ok {
				at.pod, at.port = e.gatewayPod(g)
				memo[g] = at
			}
			pod, port := at.pod, at.port
			if pod == nil {
				continue
			}
			for _, d := range vs.Destinations {
				svc, ns, ok := hostNamespace(d, vs.Namespace)
				if !ok || svc == "*" || !e.services[svc+"."+ns] {
					continue
				}
				for _, h := range vs.Hosts {
					if strings.Contains(h, "*") || !hostServed(g, h) {
						continue
					}
					e.routes[ns] = append(e.routes[ns], gatewayRoute{host: h, podIP: pod.IP, port: port, source: vs.Namespace + "/" + vs.Name})
				}
			}
		}
	}
}

func hostServed(g *inventory.Gateway, host string) bool {
	for _, s := range g.Servers {
		for _, h := range s.Hosts {
			if _, hh, ok := strings.Cut(h, "/"); ok {
				h = hh
			}
			if h == "*" || h == host || (strings.HasPrefix(h, "*.") && strings.HasSuffix(host, h[1:])) {
				return true
			}
		}
	}
	return false
}

// gatewayPod picks the first running gateway pod the Gateway selects and
// the container port its first HTTP server listens on: the gateway
// Service's targetPort for the server port, else a container port named
// http*.
func (e *env) gatewayPod(g *inventory.Gateway) (*inventory.Pod, int32) {
	var pod *inventory.Pod
	for i := range e.inv.Pods {
		p := &e.inv.Pods[i]
		if p.Gateway && p.Running && p.IP != "" && inventory.Selects(g.Selector, p.Labels) &&
			(pod == nil || p.Namespace+"/"+p.Name < pod.Namespace+"/"+pod.Name) {
			pod = p
		}
	}
	if pod == nil {
		return nil, 0
	}
	for _, s := range g.Servers {
		if proto := strings.ToUpper(s.Protocol); proto != "HTTP" && proto != "HTTP2" && proto != "" {
			continue
		}
		for _, svc := range e.ix.ServicesByNS[pod.Namespace] {
			if !inventory.Selects(svc.Selector, pod.Labels) {
				continue
			}
			for _, sp := range svc.Ports {
				if uint32(sp.Port) == s.Port {
					if tp := targetPort(sp, pod); tp > 0 {
						return pod, tp
					}
				}
			}
		}
		for _, cp := range pod.Ports {
			if cp.Port == int32(s.Port) {
				return pod, cp.Port
			}
		}
	}
	for _, cp := range pod.Ports {
		if strings.HasPrefix(cp.Name, "http") && cp.Port != 15090 && cp.Port != 15021 && cp.Port != 15020 {
			return pod, cp.Port
		}
	}
	return nil, 0
}
