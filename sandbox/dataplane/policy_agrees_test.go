package dataplane

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// The sandbox enforces PeerAuthentication precedence itself; the planner
// predicts it with internal/mtlsmode. The end-to-end tests judge the tool
// by what the sandbox enforces, so the two must agree, in particular on the
// cases mtls-migrate's stages depend on: several namespace-wide policies
// (oldest wins, equal seconds broken by name), an empty selector
// (namespace-wide), selector policies in the root namespace (ignored),
// UNSET inheriting, and port-level settings on the winning workload policy.
func TestEffectiveModeAgreesWithThePlannersResolver(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 2026))
	modes := []Mode{ModeUnset, ModeDisable, ModePermissive, ModeStrict}
	names := []string{"default", "mtls-migrate-default", "a", "zz"}
	apps := []string{"a", "b"}
	ports := []uint32{8080, 9090}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 2000 {
		var dp []PeerAuthn
		var mm []mtlsmode.Policy
		for _, ns := range []string{"istio-system", "prod"} {
			for _, name := range names {
				if rng.IntN(2) == 0 {
					continue
				}
				p := PeerAuthn{Namespace: ns, Name: name, Created: t0.Add(time.Duration(rng.IntN(2)) * time.Second), Mode: modes[rng.IntN(len(modes))]}
				switch rng.IntN(4) {
				case 0:
					p.Selector = map[string]string{"app": apps[rng.IntN(len(apps))]}
				case 1:
					p.Selector = map[string]string{}
				}
				if len(p.Selector) > 0 {
					for _, port := range ports {
						if rng.IntN(3) == 0 {
							if p.PortLevel == nil {
								p.PortLevel = map[uint32]Mode{}
							}
							p.PortLevel[port] = modes[rng.IntN(len(modes))]
						}
					}
				}
				dp = append(dp, p)
				q := mtlsmode.Policy{Namespace: ns, Name: name, CreationTimestamp: p.Created, Selector: p.Selector, Mode: plans.Mode(p.Mode)}
				if p.PortLevel != nil {
					q.PortModes = map[uint32]plans.Mode{}
					for port, m := range p.PortLevel {
						q.PortModes[port] = plans.Mode(m)
					}
				}
				mm = append(mm, q)
			}
		}
		r := mtlsmode.NewResolver("istio-system", mm)
		for _, ns := range []string{"istio-system", "prod"} {
			for _, app := range apps {
				labels := map[string]string{"app": app}
				eff := r.Effective(mtlsmode.Workload{Namespace: ns, Labels: labels, Ports: ports})
				for _, port := range ports {
					got, want := EffectiveMode(dp, "istio-system", ns, labels, port), eff.PortMode(port)
					if string(got) != string(want) {
						t.Fatalf("case %d: %s/%s:%d: sandbox enforces %s, the planner predicts %s\npolicies: %+v", i, ns, app, port, got, want, dp)
					}
				}
			}
		}
	}
}
