package xdsproxy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The RBAC filters below are written as istiod renders AuthorizationPolicies
// (pilot/pkg/security/authz/model in istio: principals as
// authenticated.principal_name, namespaces as a regex on the SPIFFE ID,
// methods as a :method header, paths as url_path, ports as
// destination_port, dry-run policies as shadow rules).
const (
	allowFromOther = `{"rules": {"action": "ALLOW", "policies": {"ns[prod]-policy[from-other]-rule[0]": {
		"permissions": [{"andRules": {"rules": [{"any": true}]}}],
		"principals": [{"andIds": {"ids": [{"orIds": {"ids": [
			{"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/other/sa/default"}}}]}}]}}]}}}}`
	denyLegacyNamespaceAdmin = `{"rules": {"action": "DENY", "policies": {"ns[prod]-policy[no-admin]-rule[0]": {
		"permissions": [{"andRules": {"rules": [
			{"orRules": {"rules": [{"urlPath": {"path": {"prefix": "/admin"}}}]}},
			{"orRules": {"rules": [{"header": {"name": ":method", "stringMatch": {"exact": "POST"}}}]}}]}}],
		"principals": [{"andIds": {"ids": [{"notId": {"orIds": {"ids": [
			{"authenticated": {"principalName": {"safeRegex": {"regex": ".*/ns/prod/.*"}}}}]}}}]}}]}}}}`
	allowNothing   = `{"rules": {"action": "ALLOW"}}`
	dryRunDenyPort = `{"shadowRulesStatPrefix": "istio_dry_run_deny_", "shadowRules": {"action": "DENY", "policies": {"ns[prod]-policy[dry]-rule[0]": {
		"permissions": [{"andRules": {"rules": [{"orRules": {"rules": [{"destinationPort": 5432}]}}]}}],
		"principals": [{"andIds": {"ids": [{"any": true}]}}]}}}}`
	allowFromIPBlock = `{"rules": {"action": "ALLOW", "policies": {"ns[prod]-policy[ips]-rule[0]": {
		"permissions": [{"any": true}],
		"principals": [{"directRemoteIp": {"addressPrefix": "127.9.0.0", "prefixLen": 16}}]}}}}`
	withCondition = `{"rules": {"action": "ALLOW", "policies": {"p": {
		"permissions": [{"any": true}], "principals": [{"any": true}],
		"condition": {"constExpr": {"boolValue": true}}}}}}`
	otherFilterState = `{"rules": {"action": "ALLOW", "policies": {"p": {
		"permissions": [{"any": true}],
		"principals": [{"filterState": {"key": "io.istio.something_else", "stringMatch": {"exact": "x"}}}]}}}}`
)

func httpChain(t *testing.T, configs ...string) *listenerv3.FilterChain {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "inbound_0.0.0.0_8080"}
	for _, c := range configs {
		r := &httprbacv3.RBAC{}
		if err := protojson.Unmarshal([]byte(c), r); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		hcm.HttpFilters = append(hcm.HttpFilters, &hcmv3.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, r)}})
	}
	hcm.HttpFilters = append(hcm.HttpFilters, &hcmv3.HttpFilter{Name: "envoy.filters.http.router"})
	return &listenerv3.FilterChain{Name: "0.0.0.0_8080", Filters: []*listenerv3.Filter{
		{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}}}
}

func tcpChain(t *testing.T, configs ...string) *listenerv3.FilterChain {
	t.Helper()
	fc := &listenerv3.FilterChain{Name: "0.0.0.0_5432"}
	for _, c := range configs {
		r := &netrbacv3.RBAC{}
		if err := protojson.Unmarshal([]byte(c), r); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		r.StatPrefix = "tcp."
		fc.Filters = append(fc.Filters, &listenerv3.Filter{Name: "envoy.filters.network.rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, r)}})
	}
	return fc
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

const (
	fromOther  = "spiffe://cluster.local/ns/other/sa/default"
	fromProd   = "spiffe://cluster.local/ns/prod/sa/default"
	fromLegacy = "spiffe://cluster.local/ns/legacy/sa/default"
)

func req(method, path string) *HTTPRequest {
	return &HTTPRequest{Method: method, Path: path, Host: "api.prod:8080", Header: http.Header{}}
}

// TestRBACDecidesAsEnvoy: each case decodes a chain as istiod sends it and
// runs a connection or request through its RBAC filters.
func TestRBACDecidesAsEnvoy(t *testing.T) {
	src := netip.MustParseAddrPort("127.1.0.7:40000")
	dst8080, dst5432 := netip.MustParseAddrPort("127.1.0.1:8080"), netip.MustParseAddrPort("127.1.0.1:5432")
	for _, tc := range []struct {
		name      string
		chain     *listenerv3.FilterChain
		in        AuthzInput
		allowed   bool
		policy    string
		shadowDen int
	}{
		{"ALLOW principals: the named peer", httpChain(t, allowFromOther), AuthzInput{Source: src, Destination: dst8080, Principal: fromOther, HTTP: req("GET", "/")}, true, "ns[prod]-policy[from-other]-rule[0]", 0},
		{"ALLOW principals: another peer", httpChain(t, allowFromOther), AuthzInput{Source: src, Destination: dst8080, Principal: fromLegacy, HTTP: req("GET", "/")}, false, "", 0},
		{"ALLOW principals: plaintext has no principal", httpChain(t, allowFromOther), AuthzInput{Source: src, Destination: dst8080, HTTP: req("GET", "/")}, false, "", 0},
		{"DENY then ALLOW: denied by the DENY filter first", httpChain(t, denyLegacyNamespaceAdmin, allowFromOther), AuthzInput{Source: src, Destination: dst8080, Principal: fromOther, HTTP: req("POST", "/admin/x?y=1")}, false, "ns[prod]-policy[no-admin]-rule[0]", 0},
		{"DENY: a GET is not a POST", httpChain(t, denyLegacyNamespaceAdmin), AuthzInput{Source: src, Destination: dst8080, Principal: fromLegacy, HTTP: req("GET", "/admin")}, true, "", 0},
		{"DENY: notNamespaces excludes prod", httpChain(t, denyLegacyNamespaceAdmin), AuthzInput{Source: src, Destination: dst8080, Principal: fromProd, HTTP: req("POST", "/admin")}, true, "", 0},
		{"DENY: url_path ignores the query", httpChain(t, denyLegacyNamespaceAdmin), AuthzInput{Source: src, Destination: dst8080, HTTP: req("POST", "/x?/admin")}, true, "", 0},
		{"DENY: plaintext is not prod", httpChain(t, denyLegacyNamespaceAdmin), AuthzInput{Source: src, Destination: dst8080, HTTP: req("POST", "/admin")}, false, "ns[prod]-policy[no-admin]-rule[0]", 0},
		{"ALLOW with no policies denies everything", httpChain(t, allowNothing), AuthzInput{Source: src, Destination: dst8080, Principal: fromProd, HTTP: req("GET", "/")}, false, "", 0},
		{"no filters: allowed", httpChain(t), AuthzInput{Source: src, Destination: dst8080, HTTP: req("GET", "/")}, true, "", 0},
		{"dry-run DENY on a TCP port: allowed, shadow denied", tcpChain(t, dryRunDenyPort), AuthzInput{Source: src, Destination: dst5432}, true, "", 1},
		{"dry-run DENY on another port: shadow allowed", tcpChain(t, dryRunDenyPort), AuthzInput{Source: src, Destination: dst8080}, true, "", 0},
		{"ipBlocks: inside", tcpChain(t, allowFromIPBlock), AuthzInput{Source: netip.MustParseAddrPort("127.9.3.4:1"), Destination: dst5432}, true, "ns[prod]-policy[ips]-rule[0]", 0},
		{"ipBlocks: outside", tcpChain(t, allowFromIPBlock), AuthzInput{Source: src, Destination: dst5432}, false, "", 0},
		{"TCP ALLOW principals over mTLS", tcpChain(t, allowFromOther), AuthzInput{Source: src, Destination: dst5432, Principal: fromOther}, true, "ns[prod]-policy[from-other]-rule[0]", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := decodeChain(tc.chain)
			if err != nil {
				t.Fatal(err)
			}
			v := Inbound{Accept: true, HTTP: c.http, chain: &c}
			var got Authz
			if tc.in.HTTP != nil {
				got = v.AuthorizeRequest(tc.in)
			} else {
				got = v.AuthorizeConnection(tc.in)
			}
			den := 0
			for _, s := range got.Shadow {
				if !s.Allowed {
					den++
				}
			}
			if got.Allowed != tc.allowed || got.Policy != tc.policy || den != tc.shadowDen {
				t.Errorf("got %s (shadow %+v), want allowed=%v policy=%q shadow denials %d", got, got.Shadow, tc.allowed, tc.policy, tc.shadowDen)
			}
		})
	}
}

// TestRBACRefusesWhatItCannotEvaluate: a chain whose filters the sandbox
// cannot evaluate does not decode, so the proxy fails closed.
func TestRBACRefusesWhatItCannotEvaluate(t *testing.T) {
	for name, c := range map[string]*listenerv3.FilterChain{
		"a CEL condition":             httpChain(t, withCondition),
		"an unknown filter state key": tcpChain(t, otherFilterState),
		"external authorization": {Name: "x", Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.ext_authz",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"}}}}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := decodeChain(c)
			if err == nil || !strings.Contains(err.Error(), "not model") {
				t.Fatalf("decoded: %v", err)
			}
		})
	}
}

// TestHeaderMatchAsEnvoy: presence, inversion and a missing header.
func TestHeaderMatchAsEnvoy(t *testing.T) {
	in := func(h http.Header) *AuthzInput {
		return &AuthzInput{HTTP: &HTTPRequest{Method: "GET", Path: "/", Host: "Api.Prod", Header: h}}
	}
	withX := http.Header{"X-User": {"alice"}}
	for _, tc := range []struct {
		name, json string
		h          http.Header
		want       bool
	}{
		{"exact, present", `{"name": "x-user", "stringMatch": {"exact": "alice"}}`, withX, true},
		{"exact, missing", `{"name": "x-user", "stringMatch": {"exact": "alice"}}`, nil, false},
		{"inverted exact, missing: passes", `{"name": "x-user", "invertMatch": true, "stringMatch": {"exact": "alice"}}`, nil, true},
		{"present, missing", `{"name": "x-user", "presentMatch": true}`, nil, false},
		{"present false, missing", `{"name": "x-user", "presentMatch": false}`, nil, true},
		{"inverted present, present", `{"name": "x-user", "presentMatch": true, "invertMatch": true}`, withX, false},
		{"no specifier means present", `{"name": "x-user"}`, withX, true},
		{"authority ignoring case", `{"name": ":authority", "stringMatch": {"exact": "api.prod", "ignoreCase": true}}`, nil, true},
		{"missing treated as empty", `{"name": "x-user", "treatMissingHeaderAsEmpty": true, "stringMatch": {"exact": ""}}`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &httprbacv3.RBAC{}
			cfg := `{"rules": {"action": "ALLOW", "policies": {"p": {"permissions": [{"header": ` + tc.json + `}], "principals": [{"any": true}]}}}}`
			if err := protojson.Unmarshal([]byte(cfg), p); err != nil {
				t.Fatal(err)
			}
			f, err := decodeRBAC(mustAny(t, p), &httprbacv3.RBAC{})
			if err != nil {
				t.Fatal(err)
			}
			if got := authorize([]rbacFilter{f}, in(tc.h)).Allowed; got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
