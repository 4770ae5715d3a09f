package mtlsmode

import (
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

const (
	S = plans.ModeStrict
	P = plans.ModePermissive
	D = plans.ModeDisable
	U = plans.ModeUnset
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func pol(ns, name string, age int, sel map[string]string, mode plans.Mode, ports map[uint32]plans.Mode) Policy {
	return Policy{Namespace: ns, Name: name, CreationTimestamp: t0.Add(time.Duration(age) * time.Hour), Selector: sel, Mode: mode, PortModes: ports}
}

func TestEffectiveModeAsIstiod(t *testing.T) {
	app := map[string]string{"app": "a"}
	tests := []struct {
		name     string
		policies []Policy
		ns       string
		want     plans.Mode
		port     uint32
		wantPort plans.Mode
	}{
		{"nothing set is PERMISSIVE", nil, "ns", P, 8080, P},
		{"mesh policy applies", []Policy{pol("istio-system", "default", 0, nil, S, nil)}, "ns", S, 8080, S},
		{"namespace over mesh", []Policy{pol("istio-system", "default", 0, nil, S, nil), pol("ns", "default", 0, nil, P, nil)}, "ns", P, 8080, P},
		{"workload over namespace", []Policy{pol("ns", "default", 0, nil, P, nil), pol("ns", "w", 0, app, S, nil)}, "ns", S, 8080, S},
		{"UNSET namespace inherits mesh", []Policy{pol("istio-system", "default", 0, nil, D, nil), pol("ns", "default", 0, nil, U, nil)}, "ns", D, 8080, D},
		{"UNSET workload inherits namespace", []Policy{pol("ns", "default", 0, nil, S, nil), pol("ns", "w", 0, app, U, nil)}, "ns", S, 8080, S},
		{"oldest namespace policy wins", []Policy{pol("ns", "young", 2, nil, S, nil), pol("ns", "old", 1, nil, D, nil)}, "ns", D, 8080, D},
		{"same age: name breaks the tie", []Policy{pol("ns", "b", 1, nil, S, nil), pol("ns", "a", 1, nil, D, nil)}, "ns", D, 8080, D},
		{"oldest workload policy wins", []Policy{pol("ns", "w2", 2, app, S, nil), pol("ns", "w1", 1, app, D, nil)}, "ns", D, 8080, D},
		{"selector policy in root namespace ignored", []Policy{pol("istio-system", "sel", 0, app, S, nil)}, "ns", P, 8080, P},
		{"selector policy not matching ignored", []Policy{pol("ns", "w", 0, map[string]string{"app": "b"}, S, nil)}, "ns", P, 8080, P},
		{"other namespace ignored", []Policy{pol("other", "default", 0, nil, S, nil)}, "ns", P, 8080, P},
		{"port level from workload policy", []Policy{pol("ns", "default", 0, nil, S, nil), pol("ns", "w", 0, app, U, map[uint32]plans.Mode{8080: D})}, "ns", S, 8080, D},
		{"port level UNSET inherits workload", []Policy{pol("ns", "default", 0, nil, D, nil), pol("ns", "w", 0, app, S, map[uint32]plans.Mode{8080: U})}, "ns", S, 8080, S},
		{"port level only for its port", []Policy{pol("ns", "w", 0, app, S, map[uint32]plans.Mode{9090: P})}, "ns", S, 8080, S},
		{"port level of losing workload policy ignored", []Policy{pol("ns", "w1", 1, app, S, nil), pol("ns", "w2", 2, app, S, map[uint32]plans.Mode{8080: D})}, "ns", S, 8080, S},
		{"port level on namespace policy ignored", []Policy{pol("ns", "default", 0, nil, S, map[uint32]plans.Mode{8080: D})}, "ns", S, 8080, S},
		{"workload in root namespace: namespace policy is mesh", []Policy{pol("istio-system", "default", 0, nil, S, nil), pol("istio-system", "sel", 0, app, D, nil)}, "istio-system", S, 8080, S},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewResolver("istio-system", tt.policies)
			got := r.Effective(Workload{Namespace: tt.ns, Labels: map[string]string{"app": "a"}, Ports: []uint32{8080}})
			if got.Mode != tt.want || got.PortMode(tt.port) != tt.wantPort {
				t.Errorf("mode %s port %d %s, want %s and %s", got.Mode, tt.port, got.PortMode(tt.port), tt.want, tt.wantPort)
			}
		})
	}
}

func TestWithNamespaceMode(t *testing.T) {
	app := map[string]string{"app": "a"}
	w := Workload{Namespace: "ns", Labels: app, Ports: []uint32{8080}}
	tests := []struct {
		name     string
		policies []Policy
		want     plans.Mode
		port     plans.Mode
	}{
		{"no policy: a new default", nil, S, S},
		{"existing namespace policy changed in place", []Policy{pol("ns", "legacy", 0, nil, P, nil)}, S, S},
		{"changes the oldest of two", []Policy{pol("ns", "a", 0, nil, P, nil), pol("ns", "b", 1, nil, D, nil)}, S, S},
		{"workload policy still wins", []Policy{pol("ns", "w", 0, app, P, nil)}, P, P},
		{"port-level DISABLE stays", []Policy{pol("ns", "w", 0, app, U, map[uint32]plans.Mode{8080: D})}, S, D},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewResolver("istio-system", tt.policies)
			before := r.Effective(w)
			got := r.WithNamespaceMode("ns", S).Effective(w)
			if got.Mode != tt.want || got.PortMode(8080) != tt.port {
				t.Errorf("after = %s/%s, want %s/%s", got.Mode, got.PortMode(8080), tt.want, tt.port)
			}
			if again := r.Effective(w); again.Mode != before.Mode {
				t.Errorf("the what-if changed the original resolver")
			}
		})
	}
}
