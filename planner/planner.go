package planner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	istio "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Inputs are Build's clients and settings.
type Inputs struct {
	Prometheus istiometrics.Querier
	Kube       kubernetes.Interface
	Istio      istio.Interface
	// Dynamic is optional: it reads APIServices and CRD conversion webhooks.
	Dynamic dynamic.Interface
	// Now is the clock (generatedAt and the end of the window).
	Now     func() time.Time
	Window  time.Duration
	Options Options
}

// Options shape the plan.
type Options struct {
	// Name is the plan's metadata.name (default mtls-migrate-<time>).
	Name string
	// GateWindow is the range of the health gates' rates (default 1m).
	GateWindow plans.Duration
	// Soak is each stage's soak (default 5m).
	Soak plans.Duration
	// Namespaces restricts the plan to these namespaces; each must exist.
	Namespaces []string
	// ExcludeNamespaces leaves these out.
	ExcludeNamespaces []string
	// MaxProbes caps a stage's probes (default 10).
	MaxProbes int
	// PrometheusURL and ClusterServer are recorded in the metadata.
	PrometheusURL string
	ClusterServer string
	// PrometheusTimeout bounds each query.
	PrometheusTimeout time.Duration
	// PrometheusSteps is telemetry.Options.Steps: 0 or 1 reads the
	// window's totals with instant queries, n > 1 with range queries of n
	// steps (for a query-frontend that splits them by day).
	PrometheusSteps int
	Log             *slog.Logger
}

// Defaults of Options, which the plan command's flags use too.
const (
	DefaultGateWindow = plans.Duration(time.Minute)
	DefaultSoak       = plans.Duration(5 * time.Minute)
	DefaultMaxProbes  = 10
)

func (o *Options) defaults() {
	if o.GateWindow <= 0 {
		o.GateWindow = DefaultGateWindow
	}
	if o.Soak <= 0 {
		o.Soak = DefaultSoak
	}
	if o.MaxProbes <= 0 {
		o.MaxProbes = DefaultMaxProbes
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// NamespaceNotFoundError is returned when --namespaces names a namespace the
// cluster does not have.
type NamespaceNotFoundError struct{ Names []string }

func (e *NamespaceNotFoundError) Error() string {
	return fmt.Sprintf("namespace(s) %s not found in the cluster (check --namespaces and --context)", strings.Join(e.Names, ", "))
}

// Build gathers the inventory and the telemetry and decides the plan.
func Build(ctx context.Context, in Inputs) (*plans.Plan, error) {
	if in.Prometheus == nil || in.Kube == nil || in.Istio == nil {
		return nil, errors.New("planner: Prometheus, Kube and Istio clients are required")
	}
	if in.Now == nil {
		in.Now = time.Now
	}
	if in.Window <= 0 {
		return nil, errors.New("planner: the telemetry window must be positive")
	}
	in.Options.defaults()
	now := in.Now()
	inv, err := inventory.Gather(ctx, inventory.Clients{Kube: in.Kube, Istio: in.Istio, Dynamic: in.Dynamic})
	if err != nil {
		return nil, fmt.Errorf("read the cluster: %w", err)
	}
	if err := checkNamespaces(inv, in.Options.Namespaces); err != nil {
		return nil, err
	}
	tel, err := telemetry.Fetch(ctx, in.Prometheus, telemetry.Options{
		Window: in.Window, Now: now, URL: in.Options.PrometheusURL,
		Timeout: in.Options.PrometheusTimeout, Namespaces: in.Options.Namespaces,
		Steps: in.Options.PrometheusSteps,
	})
	if err != nil {
		return nil, err
	}
	return Decide(inv, tel, now, in.Options)
}

func checkNamespaces(inv *inventory.Inventory, want []string) error {
	have := make(map[string]bool, len(inv.Namespaces))
	for _, n := range inv.Namespaces {
		have[n.Name] = true
	}
	var missing []string
	for _, n := range want {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return &NamespaceNotFoundError{Names: missing}
	}
	return nil
}

// round keeps 4 significant digits so a plan does not change with float
// noise and reads well.
func round(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 4, 64), 64)
	return r
}
