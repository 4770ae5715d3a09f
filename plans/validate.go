package plans

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// PeerAuthentication identifiers the plan's policies must use: apply writes
// security.istio.io/v1.
const (
	PolicyAPIVersion = "security.istio.io/v1"
	PolicyKind       = "PeerAuthentication"
)

// Validate checks a decoded plan and returns every problem found, with
// field paths (lines are filled in by Load). An empty result means valid.
func Validate(p *Plan) []Problem {
	v := &validator{}
	if p.APIVersion != APIVersion {
		v.add("apiVersion", "must be %q, got %q", APIVersion, p.APIVersion)
	}
	if p.Kind != Kind {
		v.add("kind", "must be %q, got %q", Kind, p.Kind)
	}
	v.metadata(&p.Metadata)
	if len(p.Stages) == 0 {
		v.add("stages", "a plan needs at least one stage")
	}
	seen := map[string]Mode{}
	for i := range p.Stages {
		v.stage(p, i, seen)
	}
	return v.problems
}

type validator struct{ problems []Problem }

func (v *validator) add(field, format string, args ...any) {
	v.problems = append(v.problems, Problem{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) dnsLabel(field, value, what string) {
	if value == "" {
		v.add(field, "%s is required", what)
		return
	}
	if errs := validation.IsDNS1123Label(value); len(errs) > 0 {
		v.add(field, "%q is not a valid %s: %s", value, what, strings.Join(errs, "; "))
	}
}

func (v *validator) metadata(m *Metadata) {
	if strings.TrimSpace(m.Name) == "" {
		v.add("metadata.name", "a plan needs a name")
	}
	if m.GeneratedAt.IsZero() {
		v.add("metadata.generatedAt", "is required (RFC 3339 time)")
	}
	if m.Window <= 0 {
		v.add("metadata.window", "the telemetry window must be positive, e.g. 7d")
	}
	if m.PrometheusURL != "" {
		v.httpURL("metadata.prometheusURL", m.PrometheusURL)
	}
	if m.ClusterServer != "" {
		v.httpURL("metadata.clusterServer", m.ClusterServer)
	}
	v.dnsLabel("metadata.rootNamespace", m.RootNamespace, "namespace name")
}

func (v *validator) httpURL(field, raw string) {
	u, err := url.Parse(raw)
	if err != nil {
		v.add(field, "%q is not a URL: %v", raw, err)
		return
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		v.add(field, "%q must be an http:// or https:// URL", raw)
		return
	}
	if u.Host == "" {
		v.add(field, "%q has no host", raw)
	}
}

func (v *validator) tcpURL(field, raw string) {
	if _, err := TCPAddress(raw); err != nil {
		v.add(field, "%v", err)
	}
}

func (v *validator) stage(p *Plan, i int, seen map[string]Mode) {
	s := &p.Stages[i]
	f := func(name string) string { return fmt.Sprintf("stages[%d].%s", i, name) }

	if s.Number != i+1 {
		v.add(f("number"), "stages must be numbered 1..n in order: expected %d, got %d", i+1, s.Number)
	}
	v.dnsLabel(f("namespace"), s.Namespace, "namespace name (DNS-1123 label)")
	switch s.Scope {
	case "", ScopeNamespace:
		if s.Namespace == p.Metadata.RootNamespace && s.Namespace != "" {
			// Istio reads a namespace-wide policy in the root namespace as
			// the mesh-wide one
			// (https://istio.io/latest/docs/reference/config/security/peer_authentication/).
			v.add(f("namespace"), "%q is the mesh's root namespace (metadata.rootNamespace): a namespace-wide policy there applies to the whole mesh, so only the last stage, with scope mesh, may target it", s.Namespace)
		}
	case ScopeMesh:
		if i != len(p.Stages)-1 {
			v.add(f("scope"), "only the last stage may have scope mesh")
		}
		if s.Namespace != p.Metadata.RootNamespace {
			v.add(f("namespace"), "a mesh-scope stage applies in the root namespace %q, not %q", p.Metadata.RootNamespace, s.Namespace)
		}
	default:
		v.add(f("scope"), "must be namespace or mesh, got %q", s.Scope)
	}
	switch s.Status {
	case StatusReady, StatusBlocked, StatusNeedsReview:
	default:
		v.add(f("status"), "must be ready, blocked or needs-review, got %q", s.Status)
	}
	switch s.TargetMode {
	case ModeStrict, ModePermissive:
	default:
		v.add(f("targetMode"), "must be STRICT or PERMISSIVE, got %q", s.TargetMode)
	}
	switch s.CurrentMode {
	case "", ModeUnset, ModeDisable, ModePermissive, ModeStrict:
	default:
		v.add(f("currentMode"), "must be one of UNSET, DISABLE, PERMISSIVE, STRICT, got %q", s.CurrentMode)
	}
	if s.CurrentMode == ModeDisable && s.TargetMode == ModeStrict {
		v.add(f("targetMode"), "a namespace that is DISABLE goes to PERMISSIVE in its own stage first, never straight to STRICT")
	}
	if prev, ok := seen[s.Namespace]; ok && !(prev == ModePermissive && s.TargetMode == ModeStrict) {
		v.add(f("namespace"), "namespace %q already has a stage; a namespace appears twice only for PERMISSIVE then STRICT", s.Namespace)
	}
	seen[s.Namespace] = s.TargetMode
	v.policyDigest(f("policyDigest"), p, i)

	for j, r := range s.Risks {
		rf := func(name string) string { return fmt.Sprintf("stages[%d].risks[%d].%s", i, j, name) }
		if r.Code == "" {
			v.add(rf("code"), "a risk needs a code")
		}
		switch r.Severity {
		case SeverityBlock, SeverityReview, SeverityInfo:
		default:
			v.add(rf("severity"), "must be block, review or info, got %q", r.Severity)
		}
	}
	v.policy(f("policy"), s)
	names := map[string]bool{}
	for j := range s.Probes {
		v.probe(fmt.Sprintf("stages[%d].probes[%d]", i, j), &s.Probes[j], names)
	}
	gateNames := map[string]bool{}
	for j := range s.Gates {
		v.gate(fmt.Sprintf("stages[%d].gates[%d]", i, j), &s.Gates[j], gateNames)
	}
	if s.Soak <= 0 {
		v.add(f("soak"), "the soak must be a positive duration, e.g. 5m")
	}
}

// sha256Digest is the form of peerauth.PolicyDigest.
var sha256Digest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// policyDigest checks that stage i says what its namespace's
// PeerAuthentications must be: without it pre-flight could not tell a
// namespace changed since the plan from one that did not.
func (v *validator) policyDigest(field string, p *Plan, i int) {
	s := &p.Stages[i]
	d := s.PolicyDigest
	rest, after := strings.CutPrefix(d, afterStagePrefix)
	switch {
	case d == "":
		v.add(field, "is required: sha256:<64 hex digits> (the namespace's PeerAuthentications when the plan was made) or after-stage:N (exactly what stage N, an earlier stage on the same namespace, leaves); `mtls-migrate plan` writes it")
	case after:
		n, ok := s.PolicyAfterStage()
		switch {
		case !ok:
			v.add(field, "%q: after-stage takes a stage number, e.g. after-stage:1, got %q", d, rest)
		case n > i:
			v.add(field, "%q: stage %d does not come before this stage (%d); after-stage names an earlier stage on the same namespace", d, n, i+1)
		case p.Stages[n-1].Namespace != s.Namespace:
			v.add(field, "%q: stage %d is on namespace %q, not %q; after-stage names an earlier stage on the same namespace", d, n, p.Stages[n-1].Namespace, s.Namespace)
		}
	case !sha256Digest.MatchString(d):
		v.add(field, "%q must be sha256: and 64 lower-case hex digits, or after-stage:N", d)
	}
}

func (v *validator) policy(field string, s *Stage) {
	pol := &s.Policy
	if pol.APIVersion != PolicyAPIVersion {
		v.add(field+".apiVersion", "must be %q, got %q", PolicyAPIVersion, pol.APIVersion)
	}
	if pol.Kind != PolicyKind {
		v.add(field+".kind", "must be %q, got %q", PolicyKind, pol.Kind)
	}
	if errs := validation.IsDNS1123Subdomain(pol.Metadata.Name); len(errs) > 0 {
		v.add(field+".metadata.name", "%q is not a valid object name: %s", pol.Metadata.Name, strings.Join(errs, "; "))
	}
	if pol.Metadata.Namespace != s.Namespace {
		v.add(field+".metadata.namespace", "must be the stage's namespace %q, got %q", s.Namespace, pol.Metadata.Namespace)
	}
	if pol.Spec.MTLS.Mode != s.TargetMode {
		v.add(field+".spec.mtls.mode", "must equal the stage's targetMode %q, got %q", s.TargetMode, pol.Spec.MTLS.Mode)
	}
	if len(pol.AlsoUpdates) > 0 && !pol.UpdatesExisting {
		v.add(field+".alsoUpdates", "other namespace-wide policies exist only where the stage updates the one Istio uses: set updatesExisting, or drop alsoUpdates")
	}
	seen := map[string]bool{pol.Metadata.Name: true}
	for j, name := range pol.AlsoUpdates {
		af := fmt.Sprintf("%s.alsoUpdates[%d]", field, j)
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			v.add(af, "%q is not a valid object name: %s", name, strings.Join(errs, "; "))
		} else if seen[name] {
			v.add(af, "%q is named twice (metadata.name and alsoUpdates list each object once)", name)
		}
		seen[name] = true
	}
}

func (v *validator) probe(field string, pr *Probe, names map[string]bool) {
	if pr.Name == "" {
		v.add(field+".name", "a probe needs a name")
	} else if names[pr.Name] {
		v.add(field+".name", "duplicate probe name %q", pr.Name)
	}
	names[pr.Name] = true
	switch pr.Kind {
	case ProbeHTTP, ProbeTCP:
		if pr.Pod != "" || pr.Container != "" || len(pr.Command) > 0 {
			v.add(field+".kind", "pod, container and command belong to exec probes, not %s", pr.Kind)
		}
	case ProbeExec:
		if pr.Pod == "" {
			v.add(field+".pod", "an exec probe needs the pod to run in (namespace/name)")
		}
		if len(pr.Command) > 0 {
			// A plan is input from a file that drives a privileged Job: a
			// command in it would run anything in any pod it names.
			v.add(field+".command", "a custom command is not allowed: an exec probe runs curl on its url; remove command")
		}
	default:
		v.add(field+".kind", "must be http, tcp or exec, got %q", pr.Kind)
	}
	switch {
	case pr.URL == "":
		v.add(field+".url", "a probe needs a URL")
	case pr.Kind == ProbeTCP:
		v.tcpURL(field+".url", pr.URL)
	default:
		v.httpURL(field+".url", pr.URL)
	}
	if pr.Resolve != "" {
		if err := checkResolve(pr.Resolve); err != nil {
			v.add(field+".resolve", "%v", err)
		}
	}
	if pr.Kind == ProbeTCP {
		switch {
		case pr.Expect.Status != 0:
			v.add(field+".expect.status", "a tcp probe has no HTTP status: expect refused: true or open: true")
		case pr.Expect.Refused == pr.Expect.Open:
			v.add(field+".expect", "a tcp probe expects either refused: true or open: true")
		}
		if pr.Resolve != "" {
			v.add(field+".resolve", "resolve belongs to http and exec probes; a tcp probe's url names the address")
		}
		return
	}
	switch {
	case pr.Expect.Open:
		v.add(field+".expect.open", "open belongs to tcp probes; an %s probe expects status: N or refused: true", pr.Kind)
	case pr.Expect.Refused && pr.Expect.Status != 0:
		v.add(field+".expect", "expect either status or refused, not both")
	case !pr.Expect.Refused && pr.Expect.Status == 0:
		v.add(field+".expect", "expect status: N (100-599) or refused: true")
	case pr.Expect.Status != 0 && (pr.Expect.Status < 100 || pr.Expect.Status > 599):
		v.add(field+".expect.status", "%d is not an HTTP status (100-599)", pr.Expect.Status)
	}
}

// checkResolve validates curl's --resolve form "host:port:address".
func checkResolve(s string) error {
	host, rest, ok := strings.Cut(s, ":")
	port, addr, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || host == "" {
		return fmt.Errorf("%q must be host:port:address, as curl's --resolve", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number 1-65535", s, port)
	}
	if net.ParseIP(strings.Trim(addr, "[]")) == nil {
		return fmt.Errorf("%q: address %q is not an IP address", s, addr)
	}
	return nil
}

// ParseResolve splits a validated resolve override into host, port and address.
func ParseResolve(s string) (host, port, addr string, err error) {
	if err := checkResolve(s); err != nil {
		return "", "", "", err
	}
	host, rest, _ := strings.Cut(s, ":")
	port, addr, _ = strings.Cut(rest, ":")
	return host, port, strings.Trim(addr, "[]"), nil
}

func (v *validator) gate(field string, g *Gate, names map[string]bool) {
	if g.Name == "" {
		v.add(field+".name", "a gate needs a name")
	} else if names[g.Name] {
		v.add(field+".name", "duplicate gate name %q", g.Name)
	}
	names[g.Name] = true
	if strings.TrimSpace(g.Query) == "" {
		v.add(field+".query", "a gate needs a PromQL query")
	}
	switch g.Comparison {
	case GreaterOrEqual, Greater, LessOrEqual, Less:
	default:
		v.add(field+".comparison", "must be one of >=, >, <=, <, got %q", g.Comparison)
	}
	if math.IsNaN(g.Threshold) || math.IsInf(g.Threshold, 0) {
		v.add(field+".threshold", "must be a finite number")
	}
	switch g.Relative {
	case Absolute, BaselineMinus, BaselineTimes:
	default:
		v.add(field+".relative", "must be empty, baseline-minus or baseline-times, got %q", g.Relative)
	}
	if g.MinSamples < 0 {
		v.add(field+".minSamples", "must not be negative")
	}
	if g.MinSamples > 0 && strings.TrimSpace(g.SamplesQuery) == "" {
		v.add(field+".samplesQuery", "minSamples needs a samplesQuery that counts the requests behind the gate")
	}
}
