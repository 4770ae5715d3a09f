// Package status builds the report behind `mtls-migrate status`: for each
// meshed namespace (meshed pods or an injection label) and the root
// namespace, the effective mTLS mode as istiod computes it (with the
// workloads and ports where a workload policy overrides the namespace's
// mode), the stage recorded for it in the migration state, and the live
// plaintext rate into it. It reads through interfaces only (client-go and
// Istio clientsets, a Prometheus querier, the state store), so tests run it
// on fakes. Prometheus is optional: without it, or when it does not answer,
// the rate is unknown (nil), never 0.
package status

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/prometheus/common/model"
	istio "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"github.com/mtls-migrate/mtls-migrate/internal/inventory"
	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Inputs are what Build reads.
type Inputs struct {
	Kube  kubernetes.Interface
	Istio istio.Interface
	// Metadata, when set, lists pods as metadata outside the namespaces
	// with workload policies (inventory.GatherModes).
	Metadata metadata.Interface
	// Store is the migration state; StateNamespace names where it lives
	// (for messages, and to tell a missing namespace from a missing
	// ConfigMap).
	Store          state.Store
	StateNamespace string
	// Plan, when set, selects the plan record (by PlanDigest) whose stages
	// are shown, and adds the stages not started yet.
	Plan       *plans.Plan
	PlanDigest string
	// LoadPlan, when set instead, loads Plan and PlanDigest while the
	// cluster is read: parsing a 2,000-stage plan (11 MB of YAML) takes as
	// long as reading the cluster, and the two need different resources
	// (a core, the API server). Its error is returned as it is, before
	// any error of the cluster read.
	LoadPlan func(context.Context) (*plans.Plan, string, error)
	// Prometheus is nil when none is configured; rates are then unknown.
	Prometheus        istiometrics.Querier
	PrometheusURL     string
	PrometheusTimeout time.Duration
	// RateWindow is the range of rate() in the plaintext query.
	RateWindow time.Duration
	Now        func() time.Time
}

// Report is the status of the mesh. Its JSON form is the stable output of
// `status -o json`.
type Report struct {
	RootNamespace string     `json:"rootNamespace" yaml:"rootNamespace"`
	MeshMode      plans.Mode `json:"meshMode" yaml:"meshMode"`
	// Plan is the plan record the stages come from; nil when none.
	Plan *PlanRef `json:"plan" yaml:"plan"`
	// RateWindow is the rate() range of plaintextRate, e.g. "5m".
	RateWindow string      `json:"rateWindow" yaml:"rateWindow"`
	Namespaces []Namespace `json:"namespaces" yaml:"namespaces"`
	// Notes are facts worth saying (no stage applied yet); Warnings are what
	// could not be told (Prometheus down, mesh config missing).
	Notes    []string `json:"notes" yaml:"notes"`
	Warnings []string `json:"warnings" yaml:"warnings"`
}

// PlanRef names a plan record of the state.
type PlanRef struct {
	Name   string `json:"name" yaml:"name"`
	Digest string `json:"digest" yaml:"digest"`
}

// Scopes of a row.
const (
	ScopeNamespace = "namespace"
	// ScopeMesh is the root namespace's row: its mode is the mesh-wide mode.
	ScopeMesh = "mesh"
)

// Namespace is one row.
type Namespace struct {
	Name  string     `json:"name" yaml:"name"`
	Scope string     `json:"scope" yaml:"scope"`
	Mode  plans.Mode `json:"mode" yaml:"mode"`
	// Overrides are the workloads (port nil) and ports whose effective mode
	// differs from Mode because a workload policy says so.
	Overrides []Override `json:"overrides" yaml:"overrides"`
	// Stage is nil when no stage of the plan (or the state) covers the
	// namespace.
	Stage *Stage `json:"stage" yaml:"stage"`
	// PlaintextRate is plaintext requests/s plus plaintext TCP
	// connections/s into the namespace, as its sidecars report; nil when
	// unknown (no Prometheus, or it did not answer).
	PlaintextRate *float64 `json:"plaintextRate" yaml:"plaintextRate"`
}

// Override is a workload, or one of its ports, whose mode differs from the
// namespace's.
type Override struct {
	Workload string `json:"workload" yaml:"workload"`
	// Port is nil when the override is the workload's mode on all its
	// ports not listed separately.
	Port   *uint32    `json:"port" yaml:"port"`
	Mode   plans.Mode `json:"mode" yaml:"mode"`
	Policy string     `json:"policy" yaml:"policy"`
}

// Stage is the recorded state of the namespace's stage.
type Stage struct {
	Number     int    `json:"number" yaml:"number"`
	Phase      string `json:"phase" yaml:"phase"`
	TargetMode string `json:"targetMode" yaml:"targetMode"`
	// AppliedAt is when the apply started, FinishedAt when the stage ended
	// (done, rolled back or failed); nil when not (yet).
	AppliedAt  *time.Time `json:"appliedAt" yaml:"appliedAt"`
	FinishedAt *time.Time `json:"finishedAt" yaml:"finishedAt"`
	AppliedBy  string     `json:"appliedBy" yaml:"appliedBy"`
	// Reason says why the stage ended as it did; ForceReason is the
	// --reason given when a blocked stage was forced.
	Reason      string `json:"reason" yaml:"reason"`
	ForceReason string `json:"forceReason" yaml:"forceReason"`
	// Gates are the last gate values recorded during the soak.
	Gates []Gate `json:"gates" yaml:"gates"`
}

// Gate is one recorded gate value; nil numbers mean no data.
type Gate struct {
	Name      string     `json:"name" yaml:"name"`
	Verdict   string     `json:"verdict" yaml:"verdict"`
	Value     *float64   `json:"value" yaml:"value"`
	Threshold *float64   `json:"threshold" yaml:"threshold"`
	Message   string     `json:"message" yaml:"message"`
	At        *time.Time `json:"at" yaml:"at"`
}

// Build gathers the cluster state, the migration state and the plaintext
// rates into a report.
func Build(ctx context.Context, in Inputs) (*Report, error) {
	if in.RateWindow <= 0 {
		return nil, errors.New("status: the rate window must be positive")
	}
	now := time.Now
	if in.Now != nil {
		now = in.Now
	}
	type loaded struct {
		plan   *plans.Plan
		digest string
		err    error
	}
	planc := make(chan loaded, 1)
	if in.LoadPlan != nil {
		go func() {
			p, d, err := in.LoadPlan(ctx)
			planc <- loaded{p, d, err}
		}()
	}
	inv, err := inventory.GatherModes(ctx, inventory.Clients{Kube: in.Kube, Istio: in.Istio, Metadata: in.Metadata})
	if in.LoadPlan != nil {
		l := <-planc
		if l.err != nil {
			return nil, l.err
		}
		in.Plan, in.PlanDigest = l.plan, l.digest
	}
	if err != nil {
		return nil, fmt.Errorf("read the cluster state: %w", err)
	}
	res := mtlsmode.NewResolver(inv.RootNamespace, inv.PeerAuthentications)
	rep := &Report{
		RootNamespace: inv.RootNamespace,
		MeshMode:      res.NamespaceMode(inv.RootNamespace),
		RateWindow:    model.Duration(in.RateWindow).String(),
		Namespaces:    []Namespace{},
		Notes:         []string{},
		Warnings:      []string{},
	}
	if !inv.MeshConfigFound {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("mesh config (ConfigMap istio-system/istio) not found: assuming root namespace %q", inv.RootNamespace))
	}

	stages, err := stagesByNamespace(ctx, in, inv, rep)
	if err != nil {
		return nil, err
	}

	ix := inventory.NewIndex(inv)
	names := shownNamespaces(inv, ix, stages)
	for _, name := range names {
		row := Namespace{Name: name, Scope: ScopeNamespace, Mode: res.NamespaceMode(name), Overrides: []Override{}, Stage: stages[name]}
		if name == inv.RootNamespace {
			row.Scope = ScopeMesh
		} else {
			row.Overrides = overrides(res, name, ix.PodsByNS[name], row.Mode)
		}
		rep.Namespaces = append(rep.Namespaces, row)
	}
	var gone []string
	for name := range stages {
		if _, ok := ix.Namespaces[name]; !ok {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("namespace %q has a stage (%d) but does not exist", name, stages[name].Number))
	}

	rates, warns, err := plaintextRates(ctx, in, now())
	rep.Warnings = append(rep.Warnings, warns...)
	if err != nil {
		rep.Warnings = append(rep.Warnings, "plaintext rates unknown: "+err.Error())
	} else {
		for i := range rep.Namespaces {
			r := rates[rep.Namespaces[i].Name]
			rep.Namespaces[i].PlaintextRate = &r
		}
	}
	return rep, nil
}

// shownNamespaces are the root namespace first, then, by name, every
// existing namespace with a meshed pod, an injection label or a stage.
func shownNamespaces(inv *inventory.Inventory, ix *inventory.Index, stages map[string]*Stage) []string {
	var out []string
	for _, n := range inv.Namespaces {
		if n.Name == inv.RootNamespace {
			continue
		}
		shown := n.InjectionEnabled() || stages[n.Name] != nil
		for _, p := range ix.PodsByNS[n.Name] {
			shown = shown || p.Sidecar
		}
		if shown {
			out = append(out, n.Name)
		}
	}
	// inv.Namespaces is sorted by name.
	return append([]string{inv.RootNamespace}, out...)
}

// overrides lists, per workload (running meshed pods grouped by workload
// name, as the planner groups them), where the effective mode differs from
// the namespace's: the workload as a whole, then each port that differs
// from the workload's mode.
func overrides(res *mtlsmode.Resolver, ns string, pods []*inventory.Pod, nsMode plans.Mode) []Override {
	type wl struct {
		labels map[string]string
		ports  []uint32
	}
	by := map[string]*wl{}
	var names []string
	for _, p := range pods {
		if !p.Running || !p.Sidecar {
			continue
		}
		w := by[p.Workload]
		if w == nil {
			w = &wl{labels: p.Labels}
			by[p.Workload] = w
			names = append(names, p.Workload)
		}
		for _, cp := range p.Ports {
			if !slices.Contains(w.ports, uint32(cp.Port)) {
				w.ports = append(w.ports, uint32(cp.Port))
			}
		}
	}
	sort.Strings(names)
	out := []Override{}
	for _, name := range names {
		w := by[name]
		sort.Slice(w.ports, func(i, j int) bool { return w.ports[i] < w.ports[j] })
		eff := res.Effective(mtlsmode.Workload{Namespace: ns, Labels: w.labels, Ports: w.ports})
		if eff.Workload == "" {
			// No workload policy: the namespace's mode applies throughout.
			continue
		}
		if eff.Mode != nsMode {
			out = append(out, Override{Workload: name, Mode: eff.Mode, Policy: eff.Workload})
		}
		ports := make([]uint32, 0, len(eff.Ports))
		for port := range eff.Ports {
			ports = append(ports, port)
		}
		sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
		for _, port := range ports {
			if m := eff.Ports[port]; m != eff.Mode {
				out = append(out, Override{Workload: name, Port: &port, Mode: m, Policy: eff.Workload})
			}
		}
	}
	return out
}

// stagesByNamespace reads the state and picks, per namespace, the stage to
// show. With a plan: that plan's record, and the plan's stages not started
// yet as pending. Without: for each namespace, its stage in the latest plan
// record that has one.
func stagesByNamespace(ctx context.Context, in Inputs, inv *inventory.Inventory, rep *Report) (map[string]*Stage, error) {
	out := map[string]*Stage{}
	stateNSExists := false
	for _, n := range inv.Namespaces {
		stateNSExists = stateNSExists || n.Name == in.StateNamespace
	}
	var st *state.State
	switch {
	case in.Store == nil:
		st = &state.State{}
	case !stateNSExists:
		// Reading would only say NotFound; say what it means instead.
		rep.Notes = append(rep.Notes, fmt.Sprintf("state namespace %q does not exist: no stage applied yet", in.StateNamespace))
		st = &state.State{}
	default:
		var err error
		if st, err = in.Store.Load(ctx); err != nil {
			return nil, fmt.Errorf("read the migration state in namespace %q: %w", in.StateNamespace, err)
		}
		if len(st.Plans) == 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("no migration state in namespace %q: no stage applied yet", in.StateNamespace))
		}
	}

	if in.Plan != nil {
		rec := st.Plan(in.PlanDigest)
		rep.Plan = &PlanRef{Name: in.Plan.Metadata.Name, Digest: in.PlanDigest}
		if rec == nil && len(st.Plans) > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("plan %q has no record in the migration state: no stage of it applied yet", in.Plan.Metadata.Name))
		}
		byNS := map[string][]state.StageState{}
		for _, s := range in.Plan.Stages {
			var ss state.StageState
			if rec != nil && rec.Stage(s.Number) != nil {
				ss = *rec.Stage(s.Number)
			} else {
				ss = state.StageState{Number: s.Number, Namespace: s.Namespace, Phase: state.Pending, TargetMode: string(s.TargetMode)}
			}
			if ss.TargetMode == "" {
				ss.TargetMode = string(s.TargetMode)
			}
			byNS[s.Namespace] = append(byNS[s.Namespace], ss)
		}
		for ns, ss := range byNS {
			out[ns] = stageFrom(pick(ss))
		}
		return out, nil
	}

	rec := st.Current()
	if rec == nil {
		return out, nil
	}
	rep.Plan = &PlanRef{Name: rec.Name, Digest: rec.Digest}
	for i := len(st.Plans) - 1; i >= 0; i-- {
		byNS := map[string][]state.StageState{}
		for _, s := range st.Plans[i].Stages {
			byNS[s.Namespace] = append(byNS[s.Namespace], s)
		}
		for ns, ss := range byNS {
			if out[ns] == nil {
				out[ns] = stageFrom(pick(ss))
			}
		}
	}
	return out, nil
}

// pick chooses among one namespace's stages of one plan (a DISABLE
// namespace has two: to PERMISSIVE, then to STRICT): the highest-numbered
// started one, else the first pending (the next to run).
func pick(ss []state.StageState) state.StageState {
	sort.Slice(ss, func(i, j int) bool { return ss[i].Number < ss[j].Number })
	for i := len(ss) - 1; i >= 0; i-- {
		if ss[i].Phase != state.Pending && ss[i].Phase != "" {
			return ss[i]
		}
	}
	return ss[0]
}

func stageFrom(s state.StageState) *Stage {
	out := &Stage{
		Number: s.Number, Phase: string(s.Phase), TargetMode: s.TargetMode,
		AppliedAt: timePtr(s.StartedAt), FinishedAt: timePtr(s.FinishedAt),
		AppliedBy: s.AppliedBy, Reason: s.Reason, ForceReason: s.ForceReason,
		Gates: []Gate{},
	}
	if out.Phase == "" {
		out.Phase = string(state.Pending)
	}
	for _, g := range s.Gates {
		out.Gates = append(out.Gates, Gate{Name: g.Name, Verdict: g.Verdict, Value: g.Value, Threshold: g.Threshold, Message: g.Message, At: timePtr(g.At)})
	}
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// Kinds of series in the plaintext query, set by label_replace so that one
// query carries both metrics (`or` would otherwise drop the second one's
// series: after `sum by`, both have the same label set).
const (
	kindLabel       = "mm_kind"
	kindRequests    = "requests"
	kindConnections = "connections"
)

// PlaintextQuery is the one query for every namespace's plaintext rate:
// requests and TCP connections that the destination's sidecar reports as
// not mutual TLS. Rejected plaintext (under STRICT) leaves no metric, so
// this is the plaintext still accepted.
func PlaintextQuery(window time.Duration) string {
	w := model.Duration(window).String()
	sel := istiometrics.DestinationPlaintext("")
	part := func(metric, kind string) string {
		return fmt.Sprintf(`label_replace(sum by (%s) (rate(%s{%s}[%s])), %q, %q, "", "")`, istiometrics.LabelDestinationWorkloadNamespace, metric, sel, w, kindLabel, kind)
	}
	return part(istiometrics.RequestsTotal, kindRequests) + " or " + part(istiometrics.TCPConnectionsOpened, kindConnections)
}

// plaintextRates runs PlaintextQuery. A namespace absent from a successful
// answer has no plaintext (rate 0); an error means every rate is unknown.
func plaintextRates(ctx context.Context, in Inputs, now time.Time) (map[string]float64, []string, error) {
	if in.Prometheus == nil {
		return nil, nil, errors.New("no Prometheus configured (pass --prometheus-url or set PROMETHEUS_URL)")
	}
	val, warns, infos, err := istiometrics.Instant(ctx, in.Prometheus, PlaintextQuery(in.RateWindow), now, in.PrometheusTimeout)
	if err != nil {
		return nil, nil, fmt.Errorf("prometheus at %s did not answer: %w; check --prometheus-url and --prometheus-timeout", in.PrometheusURL, err)
	}
	var out []string
	for _, w := range warns {
		out = append(out, "prometheus warning (plaintext rates): "+w)
	}
	for _, i := range infos {
		out = append(out, "prometheus info (plaintext rates): "+i)
	}
	vec, ok := val.(model.Vector)
	if !ok && val != nil {
		return nil, out, fmt.Errorf("prometheus at %s answered the plaintext query with a %s, not a vector", in.PrometheusURL, val.Type())
	}
	rates := map[string]float64{}
	for _, s := range vec {
		v := float64(s.Value)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, out, fmt.Errorf("prometheus at %s answered %v for namespace %q", in.PrometheusURL, v, s.Metric[istiometrics.LabelDestinationWorkloadNamespace])
		}
		switch string(s.Metric[kindLabel]) {
		case kindRequests, kindConnections:
			rates[string(s.Metric[istiometrics.LabelDestinationWorkloadNamespace])] += v
		}
	}
	return rates, out, nil
}
