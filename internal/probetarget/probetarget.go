// Package probetarget is the one rule for what a plan's probe may reach. A
// plan is input from a file (a ConfigMap, for the scheduled Job) and its
// probes are requests the tool's process, or a pod it execs into, makes on
// the plan's word: without a rule a plan could point the Job's network
// position at any host. A probe may target a running pod of the stage's
// namespace, a Service of it (ClusterIP or cluster DNS name), or the mesh's
// ingress gateway (a gateway pod's IP, as the planner's --resolve probes use,
// or a gateway Service's address); the mesh-wide stage's probes, any meshed
// namespace's pods and Services. An exec probe runs in a pod of the stage's
// namespace (the mesh-wide stage: of a meshed namespace). The rule reads a
// probe's URL by host alone, so http://, https:// and tcp:// URLs are judged
// alike.
//
// Pods are classified with inventory.PodFrom, the planner's own reading
// (sidecar, gateway, running), so every probe the planner writes is one the
// rule accepts on the cluster the plan was made for.
package probetarget

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/pager"

	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// clusterDomain is the DNS domain a Service name may end in. Kubernetes'
// default (https://kubernetes.io/docs/concepts/services-networking/dns-pod-service/);
// a cluster with another domain is refused rather than guessed.
const clusterDomain = "cluster.local"

// Scope is what the probes of one stage may reach, built from the live pods
// and Services (Add). Giving it fewer objects can only refuse more probes,
// never accept more: a caller may try with the stage's namespace alone and
// add the rest of the cluster only when that refuses.
type Scope struct {
	namespace string
	mesh      bool
	pods      []pod
	services  []service
	ix        *index // what the objects allow; nil until Check, reset by Add
}

type pod struct {
	namespace, name, ip string
	labels              map[string]string
	running, sidecar    bool
	gateway             bool
}

type service struct {
	namespace, name string
	selector        map[string]string
	// addresses are the Service's ClusterIPs, external IPs and load
	// balancer ingress IPs and hostnames.
	addresses []string
}

// New is the scope of the stage on namespace; mesh is true for the
// mesh-wide stage (in the root namespace).
func New(namespace string, mesh bool) *Scope {
	return &Scope{namespace: namespace, mesh: mesh}
}

// AddPod adds a live pod.
func (s *Scope) AddPod(p *corev1.Pod) {
	s.ix = nil
	ip := inventory.PodFrom(p)
	s.pods = append(s.pods, pod{namespace: ip.Namespace, name: ip.Name, ip: ip.IP, labels: ip.Labels,
		running: ip.Running, sidecar: ip.Sidecar, gateway: ip.Gateway})
}

// AddService adds a live Service.
func (s *Scope) AddService(svc *corev1.Service) {
	s.ix = nil
	sv := service{namespace: svc.Namespace, name: svc.Name, selector: svc.Spec.Selector}
	for _, ip := range append(append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...), svc.Spec.ExternalIPs...) {
		if ip != "" && ip != corev1.ClusterIPNone {
			sv.addresses = append(sv.addresses, ip)
		}
	}
	for _, in := range svc.Status.LoadBalancer.Ingress {
		for _, a := range []string{in.IP, in.Hostname} {
			if a != "" {
				sv.addresses = append(sv.addresses, strings.ToLower(a))
			}
		}
	}
	s.services = append(s.services, sv)
}

// NotAllowedError says a probe targets what a plan's probe may not.
type NotAllowedError struct {
	Probe  string
	Target string
	Why    string
	Allows string
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("probe %s targets %s, %s; a plan's probe may target only %s: correct the probe in the plan, or re-run plan", e.Probe, e.Target, e.Why, e.Allows)
}

// index is what the scope allows, computed from the objects.
type index struct {
	// namespaces whose running pods and Services a probe may reach.
	namespaces map[string]bool
	// ips maps an allowed address to what it is, for messages.
	ips map[string]string
	// names maps an allowed DNS name (lower case, no trailing dot) to the
	// Service's namespace; bare Service names are in bare.
	names map[string]string
	bare  map[string][]string // name -> namespaces
	// execPods are the pods an exec probe may run in, "namespace/name".
	execPods map[string]bool
}

func (s *Scope) index() *index {
	if s.ix != nil {
		return s.ix
	}
	ix := &index{namespaces: map[string]bool{}, ips: map[string]string{}, names: map[string]string{},
		bare: map[string][]string{}, execPods: map[string]bool{}}
	if s.mesh {
		// Meshed: a namespace with a running sidecar. The mesh-wide
		// policy applies to every one of them.
		for _, p := range s.pods {
			if p.running && p.sidecar {
				ix.namespaces[p.namespace] = true
			}
		}
	} else {
		ix.namespaces[s.namespace] = true
	}
	var gateways []pod
	for _, p := range s.pods {
		switch {
		case !p.running || p.ip == "":
		case p.gateway:
			gateways = append(gateways, p)
			ix.ips[p.ip] = "the ingress gateway pod " + p.namespace + "/" + p.name
		case ix.namespaces[p.namespace]:
			ix.ips[p.ip] = "pod " + p.namespace + "/" + p.name
		}
		if p.running && ix.namespaces[p.namespace] {
			ix.execPods[p.namespace+"/"+p.name] = true
		}
	}
	for _, sv := range s.services {
		what := ""
		switch {
		case ix.namespaces[sv.namespace]:
			what = "Service " + sv.namespace + "/" + sv.name
		case selectsAny(sv, gateways):
			what = "the ingress gateway Service " + sv.namespace + "/" + sv.name
		default:
			continue
		}
		for _, a := range sv.addresses {
			ix.ips[a] = what
		}
		for _, n := range serviceNames(sv.name, sv.namespace) {
			ix.names[n] = sv.namespace
		}
		ix.bare[sv.name] = append(ix.bare[sv.name], sv.namespace)
	}
	s.ix = ix
	return ix
}

// selectsAny reports whether the Service selects one of the gateway pods
// (in its own namespace: a selector picks pods there only).
func selectsAny(sv service, gateways []pod) bool {
	if len(sv.selector) == 0 {
		return false
	}
	for _, g := range gateways {
		if g.namespace == sv.namespace && inventory.Selects(sv.selector, g.labels) {
			return true
		}
	}
	return false
}

// serviceNames are the cluster DNS names of a Service beyond its bare name
// (https://kubernetes.io/docs/concepts/services-networking/dns-pod-service/#namespaces-of-services).
func serviceNames(name, ns string) []string {
	return []string{name + "." + ns, name + "." + ns + ".svc", name + "." + ns + ".svc." + clusterDomain}
}

// allows describes, for messages, what the scope's probes may reach.
func (s *Scope) allows(ix *index) string {
	where := fmt.Sprintf("namespace %q", s.namespace)
	if s.mesh {
		nss := make([]string, 0, len(ix.namespaces))
		for ns := range ix.namespaces {
			nss = append(nss, ns)
		}
		sort.Strings(nss)
		where = "a meshed namespace (" + strings.Join(nss, ", ") + ")"
		if len(nss) == 0 {
			where = "a meshed namespace (none has a running sidecar)"
		}
	}
	return fmt.Sprintf("a running pod's IP or a Service (ClusterIP, or svc.ns[.svc[.%s]]) of %s, or the mesh's ingress gateway (a gateway pod's IP as the resolve address, or a gateway Service's address); an exec probe runs in a running pod of %s", clusterDomain, where, where)
}

// Check returns a *NotAllowedError when probe p targets anything the
// scope does not allow, nil otherwise.
func (s *Scope) Check(p plans.Probe) error {
	ix := s.index()
	deny := func(target, why string) error {
		return &NotAllowedError{Probe: p.Name, Target: target, Why: why, Allows: s.allows(ix)}
	}
	u, err := url.Parse(p.URL)
	if err != nil || u.Hostname() == "" {
		return deny(fmt.Sprintf("%q", p.URL), "which has no host")
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	dialed, via := host, ""
	if p.Resolve != "" {
		rh, rp, addr, err := plans.ParseResolve(p.Resolve)
		if err != nil {
			return deny(fmt.Sprintf("resolve %q", p.Resolve), err.Error())
		}
		// curl's --resolve (and the tool's HTTP probe, which follows it)
		// applies only to the URL's own host and port; any other
		// override is ignored and the URL's host is dialled.
		if strings.TrimSuffix(strings.ToLower(rh), ".") != host || rp != port {
			return deny(fmt.Sprintf("resolve %q", p.Resolve), fmt.Sprintf("whose host:port is not the URL's (%s:%s), so it would not be used", host, port))
		}
		dialed, via = addr, " (resolve)"
	}

	// Where the request starts: the tool's own process, or the pod an exec
	// probe runs in (a bare pod name is in the stage's namespace, as
	// probe.Prober reads it).
	from := ""
	if p.Kind == plans.ProbeExec {
		ns, name, ok := strings.Cut(p.Pod, "/")
		if !ok {
			ns, name = s.namespace, p.Pod
		}
		if !ix.execPods[ns+"/"+name] {
			return deny("pod "+ns+"/"+name+" (exec)", "which is not a running pod there")
		}
		from = ns
	}

	if ip := net.ParseIP(strings.Trim(dialed, "[]")); ip != nil {
		if _, ok := ix.ips[ip.String()]; ok {
			return nil
		}
		if _, ok := ix.ips[dialed]; ok {
			return nil
		}
		return deny(dialed+via, "which is no running pod, Service or gateway address it may reach")
	}
	if _, ok := ix.names[dialed]; ok {
		return nil
	}
	if _, ok := ix.ips[dialed]; ok {
		// A load balancer's hostname.
		return nil
	}
	if !strings.Contains(dialed, ".") {
		for _, ns := range ix.bare[dialed] {
			// A bare name resolves in the namespace the request starts
			// from (the first entry of its resolv.conf search list): in
			// the exec pod's namespace, but in the tool's own namespace
			// for a request the tool makes itself.
			if from != "" && ns == from {
				return nil
			}
		}
		if from == "" && len(ix.bare[dialed]) > 0 {
			return deny(dialed, fmt.Sprintf("a bare name, which resolves in the tool's own namespace, not in %s: write %s.%s", ix.bare[dialed][0], dialed, ix.bare[dialed][0]))
		}
	}
	return deny(dialed, "which is no Service name or address it may reach")
}

// CheckAll returns the first probe's refusal, in the stage's order, or nil.
func (s *Scope) CheckAll(probes []plans.Probe) error {
	for _, p := range probes {
		if err := s.Check(p); err != nil {
			return err
		}
	}
	return nil
}

// Load adds the pods and Services of namespace ("": every namespace),
// page by page, keeping only what the rule reads of each.
func (s *Scope) Load(ctx context.Context, kube kubernetes.Interface, namespace string) error {
	pods := pager.New(pager.SimplePageFunc(func(o metav1.ListOptions) (runtime.Object, error) {
		return kube.CoreV1().Pods(namespace).List(ctx, o)
	}))
	pods.PageSize = 500
	if err := pods.EachListItem(ctx, metav1.ListOptions{}, func(obj runtime.Object) error {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return fmt.Errorf("unexpected %T in pod list", obj)
		}
		s.AddPod(p)
		return nil
	}); err != nil {
		return fmt.Errorf("list pods%s: %w", inNamespace(namespace), err)
	}
	svcs := pager.New(pager.SimplePageFunc(func(o metav1.ListOptions) (runtime.Object, error) {
		return kube.CoreV1().Services(namespace).List(ctx, o)
	}))
	svcs.PageSize = 500
	if err := svcs.EachListItem(ctx, metav1.ListOptions{}, func(obj runtime.Object) error {
		sv, ok := obj.(*corev1.Service)
		if !ok {
			return fmt.Errorf("unexpected %T in service list", obj)
		}
		s.AddService(sv)
		return nil
	}); err != nil {
		return fmt.Errorf("list services%s: %w", inNamespace(namespace), err)
	}
	return nil
}

func inNamespace(ns string) string {
	if ns == "" {
		return " in every namespace"
	}
	return fmt.Sprintf(" in %q", ns)
}
