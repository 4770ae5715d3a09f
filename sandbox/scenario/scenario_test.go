package scenario

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestShippedScenariosLoad(t *testing.T) {
	files, _ := filepath.Glob("../scenarios/*.yaml")
	if len(files) < 4 {
		t.Fatalf("expected the shipped scenarios, found %v", files)
	}
	for _, f := range files {
		if _, err := Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	base := `name: t
namespaces:
  - {name: a, injection: true}
workloads:
  - {name: api, namespace: a, ports: [{name: http, port: 8080}]}
services:
  - {name: api, namespace: a, ports: [{name: http, port: 8080}]}
`
	tests := []struct {
		name, doc, want string
	}{
		{"unknown field with line", base + "bogus: 1\n", "line 8"},
		{"unknown nested field", strings.Replace(base, "injection: true", "injektion: true", 1), "field injektion not found"},
		{"undeclared namespace", base + "flows:\n  - {name: f, from: b/x, to: \"api.a:8080\"}\n", "line 9: flows[0].from"},
		{"missing service port", base + "flows:\n  - {name: f, from: a/api, to: \"api.a:9999\"}\n", "has no port 9999"},
		{"external to ClusterIP", base + "flows:\n  - {name: f, from: external, to: \"api.a:8080\"}\n", "LoadBalancer or NodePort"},
		{"bad duration", base + "scrapeInterval: soon\n", "line 8"},
		{"target port missing on backend", strings.Replace(base, "services:\n  - {name: api, namespace: a, ports: [{name: http, port: 8080}]}", "services:\n  - {name: api, namespace: a, ports: [{name: http, port: 8080, targetPort: 81}]}", 1), "no port 81"},
		{"bad protocol", strings.Replace(base, "port: 8080}]}\nservices", "port: 8080, protocol: smtp}]}\nservices", 1), "unknown protocol"},
		{"object with a number key", base + "objects:\n  - {apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespace: a}, spec: {portLevelMtls: {9090: {mode: PERMISSIVE}}}}\n", "quote number keys"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := Parse([]byte(base)); err != nil {
		t.Fatalf("base document: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	s, err := Parse([]byte(`name: t
namespaces: [{name: a, injection: true}, {name: b}]
workloads:
  - {name: api, namespace: a}
  - {name: cli, namespace: b}
  - {name: forced, namespace: b, sidecar: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.ScrapeEvery() != DefaultScrapeInterval {
		t.Errorf("default scrape interval = %v", s.ScrapeEvery())
	}
	if !s.HasSidecar(s.Workloads[0]) || s.HasSidecar(s.Workloads[1]) || !s.HasSidecar(s.Workloads[2]) {
		t.Error("sidecar defaults do not follow namespace injection")
	}
	if ServiceAccountName(s.Workloads[0]) != "api" || ReplicaCount(s.Workloads[0]) != 1 {
		t.Error("workload defaults")
	}
}
