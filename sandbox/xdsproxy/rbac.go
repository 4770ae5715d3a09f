package xdsproxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// This file is the sidecar's authorization: the RBAC filters istiod renders
// from AuthorizationPolicies into each inbound filter chain, the network
// filter envoy.filters.network.rbac on TCP chains and the HTTP filter
// envoy.filters.http.rbac in the HTTP connection manager of HTTP chains
// (pilot/pkg/security/authz/builder/builder.go in istio: DENY policies in
// one filter, ALLOW in the next, AUDIT as LOG, dry-run policies as shadow
// rules). They are evaluated as Envoy's RBAC engine does
// (source/extensions/filters/common/rbac/engine_impl.cc in envoy, and
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/rbac/v3/rbac.proto):
//   - a policy matches when one of its permissions and one of its
//     principals match; policies are tried in name order (Envoy keeps them
//     in a sorted map) and the first match is the effective policy;
//   - ALLOW allows only on a match, DENY denies only on a match, LOG
//     allows; a filter without rules enforces nothing;
//   - the filters of a chain run in order and the first denial stops the
//     connection (network) or answers 403 (HTTP);
//   - shadow rules are evaluated the same way, recorded, never enforced.
//
// Every field the sandbox cannot evaluate (CEL conditions, the matcher
// API, custom extensions, metadata or filter state it does not have) is a
// decoding error, so a proxy given such a policy fails closed instead of
// allowing what Envoy might deny.

// AuthzInput is what the RBAC filters judge: the connection and, for the
// HTTP filter, one request.
type AuthzInput struct {
	// Source is the client's address (downstream direct remote); Destination
	// the pod's address the connection was redirected from.
	Source, Destination netip.AddrPort
	// Principal is the URI SAN of the client certificate when the sidecar
	// terminated mTLS, "" when the connection is not authenticated.
	Principal string
	// SNI is the server name of the TLS ClientHello ("" for plaintext).
	SNI string
	// HTTP is the request, nil for the connection (network RBAC).
	HTTP *HTTPRequest
}

// HTTPRequest is the part of a request the HTTP RBAC filter reads.
type HTTPRequest struct {
	Method, Host string
	// Path is the request target as sent (path and query).
	Path   string
	Header http.Header
}

// Authz is the decision of a chain's RBAC filters.
type Authz struct {
	Allowed bool
	// Policy is the effective policy of the filter that decided: the
	// matched DENY policy, or the matched ALLOW policy of the last ALLOW
	// filter ("" when an ALLOW filter matched none, or no rules apply).
	Policy string
	// Shadow has one result per filter with shadow rules, in order.
	Shadow []ShadowResult
}

// ShadowResult is a filter's shadow rules' verdict, what Envoy counts as
// shadow_allowed or shadow_denied under the filter's shadow stat prefix
// (istiod's "istio_dry_run_allow_" and "istio_dry_run_deny_").
type ShadowResult struct {
	Allowed    bool
	Policy     string
	StatPrefix string
}

func (a Authz) String() string {
	verdict := "denied"
	if a.Allowed {
		verdict = "allowed"
	}
	if a.Policy != "" {
		verdict += " by " + a.Policy
	}
	return verdict
}

// rbacFilter is one decoded RBAC filter.
type rbacFilter struct {
	rules, shadow *rbacEngine // nil: none
	shadowPrefix  string
}

type rbacEngine struct {
	action   rbacv3.RBAC_Action
	policies []rbacPolicy // by name
}

type rbacPolicy struct {
	name        string
	permissions []matchFn // any of
	principals  []matchFn // any of
}

type matchFn func(*AuthzInput) bool

// authorize runs filters in order over in.
func authorize(filters []rbacFilter, in *AuthzInput) Authz {
	out := Authz{Allowed: true}
	for _, f := range filters {
		if f.shadow != nil {
			ok, id := f.shadow.evaluate(in)
			out.Shadow = append(out.Shadow, ShadowResult{Allowed: ok, Policy: id, StatPrefix: f.shadowPrefix})
		}
		if f.rules == nil {
			continue
		}
		ok, id := f.rules.evaluate(in)
		if !ok {
			return Authz{Allowed: false, Policy: id, Shadow: out.Shadow}
		}
		if id != "" && f.rules.action == rbacv3.RBAC_ALLOW {
			out.Policy = id
		}
	}
	return out
}

// evaluate is Envoy's RoleBasedAccessControlEngineImpl::handleAction.
func (e *rbacEngine) evaluate(in *AuthzInput) (allowed bool, policy string) {
	for _, p := range e.policies {
		if anyOf(p.permissions, in) && anyOf(p.principals, in) {
			policy = p.name
			break
		}
	}
	switch e.action {
	case rbacv3.RBAC_ALLOW:
		return policy != "", policy
	case rbacv3.RBAC_DENY:
		return policy == "", policy
	}
	return true, policy // LOG
}

func anyOf(fs []matchFn, in *AuthzInput) bool {
	for _, f := range fs {
		if f(in) {
			return true
		}
	}
	return false
}

func allOf(fs []matchFn, in *AuthzInput) bool {
	for _, f := range fs {
		if !f(in) {
			return false
		}
	}
	return true
}

// rbacConfig is what the network and the HTTP RBAC filters' configs
// (envoy.extensions.filters.{network,http}.rbac.v3.RBAC) have in common.
type rbacConfig interface {
	proto.Message
	GetRules() *rbacv3.RBAC
	GetShadowRules() *rbacv3.RBAC
	GetShadowRulesStatPrefix() string
	GetMatcher() *xdsmatcherv3.Matcher
	GetShadowMatcher() *xdsmatcherv3.Matcher
}

// decodeRBAC unpacks one RBAC filter's typed config into cfg (a
// *netrbacv3.RBAC or *httprbacv3.RBAC) and compiles it.
func decodeRBAC(a *anypb.Any, cfg rbacConfig) (rbacFilter, error) {
	if err := a.UnmarshalTo(cfg); err != nil {
		return rbacFilter{}, err
	}
	if cfg.GetMatcher() != nil || cfg.GetShadowMatcher() != nil {
		return rbacFilter{}, fmt.Errorf("RBAC filter uses the matcher API, which the sandbox does not model")
	}
	return compileFilter(cfg.GetRules(), cfg.GetShadowRules(), cfg.GetShadowRulesStatPrefix())
}

func compileFilter(rules, shadow *rbacv3.RBAC, shadowPrefix string) (rbacFilter, error) {
	f := rbacFilter{shadowPrefix: shadowPrefix}
	var err error
	if f.rules, err = compileEngine(rules); err != nil {
		return rbacFilter{}, err
	}
	if f.shadow, err = compileEngine(shadow); err != nil {
		return rbacFilter{}, fmt.Errorf("shadow rules: %w", err)
	}
	return f, nil
}

func compileEngine(r *rbacv3.RBAC) (*rbacEngine, error) {
	if r == nil {
		return nil, nil
	}
	e := &rbacEngine{action: r.GetAction()}
	names := make([]string, 0, len(r.GetPolicies()))
	for n := range r.GetPolicies() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := r.GetPolicies()[n]
		if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
			return nil, fmt.Errorf("policy %s has a CEL condition, which the sandbox does not model", n)
		}
		perms, err := compileAll(p.GetPermissions(), compilePermission)
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", n, err)
		}
		principals, err := compileAll(p.GetPrincipals(), compilePrincipal)
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", n, err)
		}
		e.policies = append(e.policies, rbacPolicy{name: n, permissions: perms, principals: principals})
	}
	return e, nil
}

// compileAll compiles each of xs with compile.
func compileAll[T any](xs []T, compile func(T) (matchFn, error)) ([]matchFn, error) {
	out := make([]matchFn, 0, len(xs))
	for _, x := range xs {
		f, err := compile(x)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

func compilePermission(p *rbacv3.Permission) (matchFn, error) {
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return func(*AuthzInput) bool { return r.Any }, nil
	case *rbacv3.Permission_AndRules:
		fs, err := compileAll(r.AndRules.GetRules(), compilePermission)
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return allOf(fs, in) }, nil
	case *rbacv3.Permission_OrRules:
		fs, err := compileAll(r.OrRules.GetRules(), compilePermission)
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return anyOf(fs, in) }, nil
	case *rbacv3.Permission_NotRule:
		f, err := compilePermission(r.NotRule)
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return !f(in) }, nil
	case *rbacv3.Permission_DestinationPort:
		return func(in *AuthzInput) bool { return uint32(in.Destination.Port()) == r.DestinationPort }, nil
	case *rbacv3.Permission_DestinationPortRange:
		start, end := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		return func(in *AuthzInput) bool { p := int32(in.Destination.Port()); return p >= start && p < end }, nil
	case *rbacv3.Permission_DestinationIp:
		pf, err := cidr(r.DestinationIp)
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return pf.Contains(in.Destination.Addr()) }, nil
	case *rbacv3.Permission_Header:
		return compileHeader(r.Header)
	case *rbacv3.Permission_UrlPath:
		return compileURLPath(r.UrlPath)
	case *rbacv3.Permission_RequestedServerName:
		m, err := compileString(r.RequestedServerName)
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return m(in.SNI) }, nil
	case *rbacv3.Permission_Metadata:
		// Deprecated in Envoy, still rendered by istiod
		// (permissionMetadata in pilot/pkg/security/authz/model).
		return compileMetadata(r.Metadata) //nolint:staticcheck // see above
	}
	return nil, fmt.Errorf("permission %T is not modelled by the sandbox", p.GetRule())
}

func compilePrincipal(p *rbacv3.Principal) (matchFn, error) {
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return func(*AuthzInput) bool { return id.Any }, nil
	case *rbacv3.Principal_AndIds:
		fs, err := compileAll(id.AndIds.GetIds(), compilePrincipal)
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return allOf(fs, in) }, nil
	case *rbacv3.Principal_OrIds:
		fs, err := compileAll(id.OrIds.GetIds(), compilePrincipal)
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return anyOf(fs, in) }, nil
	case *rbacv3.Principal_NotId:
		f, err := compilePrincipal(id.NotId)
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return !f(in) }, nil
	case *rbacv3.Principal_Authenticated_:
		// Unset principal_name: any authenticated peer
		// (envoy/config/rbac/v3/rbac.proto, Principal.Authenticated).
		if id.Authenticated.GetPrincipalName() == nil {
			return func(in *AuthzInput) bool { return in.Principal != "" }, nil
		}
		m, err := compileString(id.Authenticated.GetPrincipalName())
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return in.Principal != "" && m(in.Principal) }, nil
	case *rbacv3.Principal_DirectRemoteIp, *rbacv3.Principal_RemoteIp:
		// The sandbox's clients connect directly (no proxies, no
		// X-Forwarded-For), so the remote and direct remote addresses are
		// the same. (The deprecated source_ip istiod does not render.)
		pf, err := cidr(cmpOr(p.GetDirectRemoteIp(), p.GetRemoteIp()))
		if err != nil {
			return nil, err
		}
		return func(in *AuthzInput) bool { return pf.Contains(in.Source.Addr()) }, nil
	case *rbacv3.Principal_Header:
		return compileHeader(id.Header)
	case *rbacv3.Principal_UrlPath:
		return compileURLPath(id.UrlPath)
	case *rbacv3.Principal_Metadata:
		// Deprecated in Envoy, still rendered by istiod for request.auth.*
		// (principalMetadata in pilot/pkg/security/authz/model).
		return compileMetadata(id.Metadata) //nolint:staticcheck // see above
	case *rbacv3.Principal_FilterState:
		return compileFilterState(id.FilterState)
	}
	return nil, fmt.Errorf("principal %T is not modelled by the sandbox", p.GetIdentifier())
}

func cmpOr(cs ...*corev3.CidrRange) *corev3.CidrRange {
	for _, c := range cs {
		if c != nil {
			return c
		}
	}
	return nil
}

func cidr(c *corev3.CidrRange) (netip.Prefix, error) {
	a, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("CIDR %q: %w", c.GetAddressPrefix(), err)
	}
	// An unset prefix_len is 0 (envoy/config/core/v3/address.proto).
	return a.Prefix(int(c.GetPrefixLen().GetValue()))
}

// peerPrincipalKey is the filter state istiod matches principals against
// when it does not use the TLS connection's peer (the peer identity an
// Istio proxy records, pilot/pkg/security/authz/model in istio).
const peerPrincipalKey = "io.istio.peer_principal"

func compileFilterState(f *matcherv3.FilterStateMatcher) (matchFn, error) {
	if f.GetKey() != peerPrincipalKey || f.GetStringMatch() == nil {
		return nil, fmt.Errorf("filter state matcher on %q is not modelled by the sandbox", f.GetKey())
	}
	m, err := compileString(f.GetStringMatch())
	if err != nil {
		return nil, err
	}
	return func(in *AuthzInput) bool { return in.Principal != "" && m(in.Principal) }, nil
}

// compileMetadata: the sandbox's proxies run no filter that writes dynamic
// metadata (no JWT authentication), so a metadata matcher sees none: it
// fails, or passes when inverted, as Envoy's MetadataMatcher does on a
// missing value. Matchers that would pass on a missing value are refused.
func compileMetadata(m *matcherv3.MetadataMatcher) (matchFn, error) {
	if _, ok := m.GetValue().GetMatchPattern().(*matcherv3.ValueMatcher_NullMatch_); ok {
		return nil, fmt.Errorf("metadata matcher on %s with a null match is not modelled by the sandbox", m.GetFilter())
	}
	inv := m.GetInvert()
	return func(*AuthzInput) bool { return inv }, nil
}

func compileURLPath(p *matcherv3.PathMatcher) (matchFn, error) {
	m, err := compileString(p.GetPath())
	if err != nil {
		return nil, err
	}
	return func(in *AuthzInput) bool {
		if in.HTTP == nil {
			return false
		}
		path, _, _ := strings.Cut(in.HTTP.Path, "?")
		path, _, _ = strings.Cut(path, "#")
		return m(path)
	}, nil
}

// compileHeader follows Envoy's header matching
// (source/common/http/header_utility.cc, HeaderDataBaseImpl and
// HeaderDataPresentMatch): a present match (also what a matcher without a
// specifier is) compares presence; any other match fails on a missing
// header, and invert_match flips the result (so a missing header passes an
// inverted match), unless treat_missing_header_as_empty matches "" instead.
func compileHeader(h *routev3.HeaderMatcher) (matchFn, error) {
	name, inv, empty := strings.ToLower(h.GetName()), h.GetInvertMatch(), h.GetTreatMissingHeaderAsEmpty()
	var match func(string) bool
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_PresentMatch, nil:
		want := s == nil || h.GetPresentMatch()
		return func(in *AuthzInput) bool {
			_, ok := header(in.HTTP, name)
			return (ok == want) != inv
		}, nil
	case *routev3.HeaderMatcher_StringMatch:
		m, err := compileString(s.StringMatch)
		if err != nil {
			return nil, err
		}
		match = m
	default:
		// The deprecated exact/prefix/suffix/contains/safe_regex fields:
		// istiod renders string_match.
		return nil, fmt.Errorf("header matcher %T on %s is not modelled by the sandbox", s, h.GetName())
	}
	return func(in *AuthzInput) bool {
		v, ok := header(in.HTTP, name)
		if !ok && !empty {
			return inv
		}
		return match(v) != inv
	}, nil
}

// header is a request header as Envoy's HTTP RBAC filter sees it: the
// pseudo-headers of the request line, others joined with "," when repeated.
func header(r *HTTPRequest, name string) (string, bool) {
	if r == nil {
		return "", false
	}
	switch name {
	case ":method":
		return r.Method, true
	case ":path":
		return r.Path, true
	case ":authority", "host":
		return r.Host, true
	case ":scheme":
		return "http", true
	}
	vs := r.Header.Values(name)
	if len(vs) == 0 {
		return "", false
	}
	return strings.Join(vs, ","), true
}

func compileString(m *matcherv3.StringMatcher) (func(string) bool, error) {
	fold := m.GetIgnoreCase()
	eq := func(a, b string) bool { return a == b }
	norm := func(s string) string { return s }
	if fold {
		eq = strings.EqualFold
		norm = strings.ToLower
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return func(v string) bool { return eq(v, p.Exact) }, nil
	case *matcherv3.StringMatcher_Prefix:
		pre := norm(p.Prefix)
		return func(v string) bool { return strings.HasPrefix(norm(v), pre) }, nil
	case *matcherv3.StringMatcher_Suffix:
		suf := norm(p.Suffix)
		return func(v string) bool { return strings.HasSuffix(norm(v), suf) }, nil
	case *matcherv3.StringMatcher_Contains:
		sub := norm(p.Contains)
		return func(v string) bool { return strings.Contains(norm(v), sub) }, nil
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return nil, err
		}
		return re.MatchString, nil
	}
	return nil, fmt.Errorf("string matcher %T is not modelled by the sandbox", m.GetMatchPattern())
}

// compileRegex: Envoy's safe_regex is RE2 matched against the whole value,
// as Go's regexp (also RE2) does when anchored.
func compileRegex(r *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + r.GetRegex() + `)$`)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", r.GetRegex(), err)
	}
	return re, nil
}
