package peerauth

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

func pol(name string, sec int, sel map[string]string) mtlsmode.Policy {
	return mtlsmode.Policy{Namespace: "ns", Name: name, CreationTimestamp: time.Unix(1000+int64(sec), 0), Selector: sel, Mode: plans.ModePermissive}
}

func TestDecideTarget(t *testing.T) {
	app := map[string]string{"app": "a"}
	tests := []struct {
		name     string
		policies []mtlsmode.Policy
		want     Target
	}{
		{"nothing: create default", nil,
			Target{Namespace: "ns", Name: "default", Create: true, MustNotExist: []string{"default"}}},
		{"one namespace-wide: update it", []mtlsmode.Policy{pol("legacy", 0, nil)},
			Target{Namespace: "ns", Name: "legacy"}},
		{"several: the oldest, and the others too", []mtlsmode.Policy{pol("b", 0, nil), pol("a", 1, nil), pol("c", 2, nil)},
			Target{Namespace: "ns", Name: "b", AlsoUpdates: []string{"a", "c"}}},
		{"equal seconds: the name decides, as istiod's sort", []mtlsmode.Policy{pol("zz", 0, nil), pol("default", 0, nil)},
			Target{Namespace: "ns", Name: "default", AlsoUpdates: []string{"zz"}}},
		{"an empty selector is namespace-wide", []mtlsmode.Policy{pol("empty", 0, map[string]string{})},
			Target{Namespace: "ns", Name: "empty"}},
		{"a workload policy named default is never written into", []mtlsmode.Policy{pol("default", 0, app)},
			Target{Namespace: "ns", Name: "mtls-migrate-default", Create: true, MustNotExist: []string{"mtls-migrate-default"}}},
		{"then a numeric suffix", []mtlsmode.Policy{pol("default", 0, app), pol("mtls-migrate-default", 0, app), pol("mtls-migrate-default-2", 0, app)},
			Target{Namespace: "ns", Name: "mtls-migrate-default-3", Create: true, MustNotExist: []string{"mtls-migrate-default-3"}}},
		{"a workload policy next to a namespace-wide one", []mtlsmode.Policy{pol("default", 0, app), pol("legacy", 5, nil)},
			Target{Namespace: "ns", Name: "legacy"}},
		{"other namespaces do not count", []mtlsmode.Policy{{Namespace: "other", Name: "default"}},
			Target{Namespace: "ns", Name: "default", Create: true, MustNotExist: []string{"default"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DecideTarget("ns", tt.policies)
			if got.Name != tt.want.Name || got.Create != tt.want.Create || !slices.Equal(got.AlsoUpdates, tt.want.AlsoUpdates) || !slices.Equal(got.MustNotExist, tt.want.MustNotExist) {
				t.Errorf("DecideTarget = %+v, want %+v", got, tt.want)
			}
			// Input order does not matter.
			rev := slices.Clone(tt.policies)
			slices.Reverse(rev)
			if again := DecideTarget("ns", rev); again.Diff(got) != "" {
				t.Errorf("reversed input: %s", again.Diff(got))
			}
			// The plan's policy records the target exactly.
			if back := RecordedTarget(got.Policy(plans.ModeStrict)); back.Diff(got) != "" || !slices.Equal(back.MustNotExist, got.MustNotExist) {
				t.Errorf("recorded in a plan and read back: %+v, want %+v", back, got)
			}
		})
	}
}

func TestTargetDiffSaysWhatChanged(t *testing.T) {
	planned := Target{Namespace: "ns", Name: "default", Create: true}
	live := DecideTarget("ns", []mtlsmode.Policy{pol("legacy", 0, nil)})
	d := planned.Diff(live)
	if !strings.Contains(d, "create default") || !strings.Contains(d, "update legacy in place") {
		t.Errorf("Diff = %q", d)
	}
	if live.Diff(live) != "" {
		t.Errorf("a target differs from itself")
	}
}

func TestTargetWhatIfWritesEveryNamespaceWidePolicy(t *testing.T) {
	ps := []mtlsmode.Policy{pol("old", 0, nil), pol("young", 1, nil)}
	tg := DecideTarget("ns", ps)
	r := tg.WhatIf(mtlsmode.NewResolver("istio-system", ps), plans.ModeStrict)
	for _, p := range r.Policies("ns") {
		if p.Mode != plans.ModeStrict {
			t.Errorf("%s is %s after the what-if, want STRICT", p.Name, p.Mode)
		}
	}
	// Without the oldest, the next one still gives STRICT.
	r2 := mtlsmode.NewResolver("istio-system", []mtlsmode.Policy{*r.Policies("ns")[1]})
	if m := r2.NamespaceMode("ns"); m != plans.ModeStrict {
		t.Errorf("after deleting the oldest the namespace is %s, want STRICT", m)
	}
	created := DecideTarget("ns", nil)
	if r := created.WhatIf(mtlsmode.NewResolver("istio-system", nil), plans.ModeStrict); r.NamespacePolicy("ns").Name != "default" {
		t.Errorf("created what-if uses %q", r.NamespacePolicy("ns").Name)
	}
	if a := created.Applied(); a.Create || a.Name != "default" {
		t.Errorf("Applied = %+v, want an update of default", a)
	}
}
