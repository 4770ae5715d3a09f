package gates

import (
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

func TestDefaultsEscapeNamespaceAndUseWindow(t *testing.T) {
	gs := Defaults("cart", plans.Duration(10*time.Second))
	want := []string{"success-rate", "inbound-request-rate", "client-error-rate", "client-connection-failures"}
	if len(gs) != len(want) {
		t.Fatalf("%d gates", len(gs))
	}
	for i, g := range gs {
		if g.Name != want[i] || !strings.Contains(g.Query, `namespace="cart"`) || !strings.Contains(g.Query, "[10s]") || g.MinSamples != DefaultMinSamples || g.SamplesQuery == "" {
			t.Errorf("gate %d = %+v", i, g)
		}
	}
	if gs[0].Relative != plans.BaselineMinus || gs[1].Relative != plans.BaselineTimes || gs[2].Relative != plans.Absolute {
		t.Errorf("relative thresholds wrong: %+v", gs)
	}
	if mesh := Defaults("", plans.Duration(time.Minute)); strings.Contains(mesh[0].Query, "namespace=") {
		t.Errorf("mesh gates must not filter by namespace: %s", mesh[0].Query)
	}
}
