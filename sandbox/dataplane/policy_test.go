package dataplane

import (
	"testing"
	"time"
)

func TestEffectiveMode(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	api := map[string]string{"app": "api"}
	pa := func(ns, name string, created int, sel map[string]string, mode Mode, ports map[uint32]Mode) PeerAuthn {
		return PeerAuthn{Namespace: ns, Name: name, Created: at(created), Selector: sel, Mode: mode, PortLevel: ports}
	}
	tests := []struct {
		name     string
		policies []PeerAuthn
		port     uint32
		want     Mode
	}{
		{"nothing set is permissive", nil, 8080, ModePermissive},
		{"mesh strict", []PeerAuthn{pa("istio-system", "default", 0, nil, ModeStrict, nil)}, 8080, ModeStrict},
		{"namespace over mesh", []PeerAuthn{pa("istio-system", "default", 0, nil, ModeStrict, nil), pa("prod", "default", 1, nil, ModeDisable, nil)}, 8080, ModeDisable},
		{"workload over namespace", []PeerAuthn{pa("prod", "default", 0, nil, ModePermissive, nil), pa("prod", "api", 1, api, ModeStrict, nil)}, 8080, ModeStrict},
		{"workload selector not matching is ignored", []PeerAuthn{pa("prod", "w", 0, map[string]string{"app": "other"}, ModeStrict, nil)}, 8080, ModePermissive},
		{"other namespace ignored", []PeerAuthn{pa("dev", "default", 0, nil, ModeStrict, nil)}, 8080, ModePermissive},
		{"oldest namespace-wide wins", []PeerAuthn{pa("prod", "zzz-new", 5, nil, ModeStrict, nil), pa("prod", "legacy", 1, nil, ModePermissive, nil)}, 8080, ModePermissive},
		{"oldest namespace-wide wins (strict older)", []PeerAuthn{pa("prod", "a-new", 5, nil, ModePermissive, nil), pa("prod", "z-old", 1, nil, ModeStrict, nil)}, 8080, ModeStrict},
		{"same timestamp: name order", []PeerAuthn{pa("prod", "b", 1, nil, ModePermissive, nil), pa("prod", "a", 1, nil, ModeStrict, nil)}, 8080, ModeStrict},
		{"oldest workload policy wins", []PeerAuthn{pa("prod", "new", 3, api, ModeDisable, nil), pa("prod", "old", 2, api, ModeStrict, nil)}, 8080, ModeStrict},
		{"root namespace selector ignored", []PeerAuthn{pa("istio-system", "api", 0, api, ModeStrict, nil)}, 8080, ModePermissive},
		{"unset workload inherits namespace", []PeerAuthn{pa("prod", "default", 0, nil, ModeStrict, nil), pa("prod", "api", 1, api, ModeUnset, nil)}, 8080, ModeStrict},
		{"unset namespace inherits mesh", []PeerAuthn{pa("istio-system", "default", 0, nil, ModeStrict, nil), pa("prod", "default", 1, nil, ModeUnset, nil)}, 8080, ModeStrict},
		{"no mtls block is unset", []PeerAuthn{pa("istio-system", "default", 0, nil, ModeStrict, nil), pa("prod", "default", 1, nil, "", nil)}, 8080, ModeStrict},
		{"port level over workload", []PeerAuthn{pa("prod", "api", 0, api, ModeStrict, map[uint32]Mode{9090: ModeDisable})}, 9090, ModeDisable},
		{"port level other port keeps workload mode", []PeerAuthn{pa("prod", "api", 0, api, ModeStrict, map[uint32]Mode{9090: ModeDisable})}, 8080, ModeStrict},
		{"port level with unset workload inherits namespace on other ports", []PeerAuthn{pa("prod", "default", 0, nil, ModeStrict, nil), pa("prod", "api", 1, api, ModeUnset, map[uint32]Mode{9090: ModePermissive})}, 8080, ModeStrict},
		{"port level unset inherits", []PeerAuthn{pa("prod", "default", 0, nil, ModeStrict, nil), pa("prod", "api", 1, api, ModeDisable, map[uint32]Mode{9090: ModeUnset})}, 9090, ModeDisable},
		{"port level ignored on namespace-wide policy", []PeerAuthn{pa("prod", "default", 0, nil, ModeStrict, map[uint32]Mode{9090: ModeDisable})}, 9090, ModeStrict},
		{"port level only from the winning workload policy", []PeerAuthn{pa("prod", "old", 0, api, ModeStrict, nil), pa("prod", "new", 1, api, ModeStrict, map[uint32]Mode{9090: ModeDisable})}, 9090, ModeStrict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EffectiveMode(tc.policies, "istio-system", "prod", api, tc.port); got != tc.want {
				t.Errorf("EffectiveMode = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestClientTLS(t *testing.T) {
	dr := func(ns, host, mode string) DestRule {
		return DestRule{Namespace: ns, Name: host, Host: host, TLSMode: mode}
	}
	tests := []struct {
		name  string
		rules []DestRule
		want  string
	}{
		{"none: auto", nil, ""},
		{"fqdn in client namespace", []DestRule{dr("shop", "payments.payments.svc.cluster.local", "DISABLE")}, "DISABLE"},
		{"short name relative to rule namespace", []DestRule{dr("payments", "payments", "ISTIO_MUTUAL")}, "ISTIO_MUTUAL"},
		{"short name in another namespace does not match", []DestRule{dr("shop", "payments", "DISABLE")}, ""},
		{"client namespace before service namespace", []DestRule{dr("payments", "payments", "ISTIO_MUTUAL"), dr("shop", "payments.payments.svc.cluster.local", "DISABLE")}, "DISABLE"},
		{"wildcard in root namespace", []DestRule{dr("istio-system", "*.payments.svc.cluster.local", "DISABLE")}, "DISABLE"},
		{"port level", []DestRule{{Namespace: "shop", Host: "payments.payments.svc.cluster.local", TLSMode: "ISTIO_MUTUAL", PortTLS: map[uint32]string{50051: "DISABLE"}}}, "DISABLE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ClientTLS(tc.rules, "istio-system", "shop", "payments", "payments", 50051); got != tc.want {
				t.Errorf("ClientTLS = %q, want %q", got, tc.want)
			}
		})
	}
}
