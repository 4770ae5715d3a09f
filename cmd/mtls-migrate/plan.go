package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/promclient"
	"github.com/mtls-migrate/mtls-migrate/internal/telemetry"
	"github.com/mtls-migrate/mtls-migrate/planner"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// planOptions are the inputs of `mtls-migrate plan`.
type planOptions struct {
	f             *factory
	windowRaw     string
	gateWindowRaw string
	soakRaw       string
	Window        time.Duration
	GateWindow    plans.Duration
	Soak          plans.Duration
	Out           string
	Output        string
	Name          string
	Namespaces    []string
	Exclude       []string
	// PrometheusSteps is planner.Options.PrometheusSteps.
	PrometheusSteps int
	// now is the clock; tests fix it.
	now func() time.Time
}

func newPlanCmd(f *factory, runF func(*planOptions) error) *cobra.Command {
	o := &planOptions{f: f, now: time.Now}
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Build a staged migration plan from Istio telemetry and cluster state",
		Long: `plan reads Istio's standard metrics (plaintext and mTLS traffic by source and
destination) over a window and the cluster's state (sidecars, Services,
PeerAuthentications, DestinationRules), and writes a staged plan: one
namespace per stage, each ready, blocked or needing review, with evidence,
risks and fixes. Nothing in the cluster changes.`,
		Example: `  # Plan from the last 7 days of telemetry and write it for review
  mtls-migrate plan --prometheus-url http://prometheus.istio-system:9090 --out plan.yaml

  # Only two namespaces, short gate windows (a demo with 1s scrapes)
  mtls-migrate plan --namespaces cart,checkout --gate-window 10s -o yaml`,
		Args: cobra.NoArgs,
		RunE: runE(o, runF),
	}
	fl := cmd.Flags()
	fl.StringVar(&o.windowRaw, "window", "7d", "telemetry window to read (long enough to see weekly jobs)")
	fl.StringVar(&o.gateWindowRaw, "gate-window", planner.DefaultGateWindow.String(), "range of the health gates' rates in the plan (use about 10x the scrape interval)")
	fl.StringVar(&o.soakRaw, "soak", planner.DefaultSoak.String(), "soak time of each stage in the plan")
	fl.StringVar(&o.Out, "out", "", "write the plan to this file (YAML) as well as printing the summary")
	fl.StringVarP(&o.Output, "output", "o", cli.OutputTable, "output format: table, yaml or json")
	fl.StringVar(&o.Name, "name", "", "the plan's metadata.name (default mtls-migrate-<time>)")
	fl.StringSliceVar(&o.Namespaces, "namespaces", nil, "plan only these namespaces (comma-separated); each must exist")
	fl.StringSliceVar(&o.Exclude, "exclude-namespaces", nil, "leave these namespaces out of the plan")
	fl.IntVar(&o.PrometheusSteps, "prometheus-steps", 0, fmt.Sprintf("read the window's traffic totals with range queries of this many steps (2-%d), for a Thanos or Mimir query-frontend that splits range queries by day; 0 (or 1): instant queries over the whole window", telemetry.MaxSteps))
	cmd.AddCommand(newPlanPublishCmd(f, nil))
	return cmd
}

// Complete fills derived values from the flags.
func (o *planOptions) Complete() error {
	d, err := plans.ParseDuration(o.windowRaw)
	if err != nil {
		return cli.Usagef("--window: %v", err)
	}
	o.Window = d.Std()
	if o.GateWindow, err = plans.ParseDuration(o.gateWindowRaw); err != nil {
		return cli.Usagef("--gate-window: %v", err)
	}
	if o.Soak, err = plans.ParseDuration(o.soakRaw); err != nil {
		return cli.Usagef("--soak: %v", err)
	}
	return nil
}

// Validate rejects bad input before anything is contacted.
func (o *planOptions) Validate() error {
	if o.Window <= 0 {
		return cli.Usagef("--window must be positive, e.g. 7d")
	}
	if o.GateWindow <= 0 {
		return cli.Usagef("--gate-window must be positive, e.g. 1m")
	}
	if o.Soak <= 0 {
		return cli.Usagef("--soak must be positive, e.g. 5m")
	}
	if o.PrometheusSteps < 0 || o.PrometheusSteps > telemetry.MaxSteps {
		return cli.Usagef("--prometheus-steps must be 0 (instant queries) or a number of steps up to %d (7 is a day each for --window 7d), got %d", telemetry.MaxSteps, o.PrometheusSteps)
	}
	excl := map[string]bool{}
	for _, n := range o.Exclude {
		excl[n] = true
	}
	for _, n := range o.Namespaces {
		if excl[n] {
			return cli.Usagef("namespace %q is both in --namespaces and --exclude-namespaces", n)
		}
	}
	return cli.ValidateOutput(o.Output)
}

// Run builds the plan, writes it and prints it.
func (o *planOptions) Run(cmd *cobra.Command) error {
	log, err := o.f.logger()
	if err != nil {
		return err
	}
	prom, popts, err := o.f.prometheus()
	if err != nil {
		return err
	}
	clients, err := o.f.kubeClients()
	if err != nil {
		return err
	}
	var dyn dynamic.Interface
	if clients.Config != nil {
		if dyn, err = dynamic.NewForConfig(clients.Config); err != nil {
			return fmt.Errorf("build the dynamic client (to read CRD conversion webhooks): %w", err)
		}
	}
	server := ""
	if clients.Config != nil {
		server = clients.Config.Host
	}
	ctx := cmd.Context()
	plan, err := planner.Build(ctx, planner.Inputs{
		Prometheus: prom, Kube: clients.Kube, Istio: clients.Istio, Dynamic: dyn,
		Now: o.now, Window: o.Window,
		Options: planner.Options{
			Name: o.Name, GateWindow: o.GateWindow, Soak: o.Soak,
			Namespaces: o.Namespaces, ExcludeNamespaces: o.Exclude,
			PrometheusURL: promclient.Redact(popts.URL), ClusterServer: server,
			PrometheusTimeout: popts.Timeout, PrometheusSteps: o.PrometheusSteps, Log: log,
		},
	})
	var nf *planner.NamespaceNotFoundError
	if errors.As(err, &nf) {
		return cli.WithCode(cli.ExitUsage, err)
	}
	if err != nil {
		return err
	}
	for _, w := range plan.Metadata.Warnings {
		log.Warn(w)
	}
	if o.Out != "" {
		digest, err := plans.Save(o.Out, plan)
		if err != nil {
			return fmt.Errorf("write the plan to %s: %w", o.Out, err)
		}
		log.Info("plan written", "file", o.Out, "stages", len(plan.Stages), "digest", digest)
	}
	if o.Output == cli.OutputYAML {
		// The plan's own writer: streamed, and the bytes --out writes.
		w := bufio.NewWriter(o.f.streams.Out)
		if err := plans.Write(w, plan); err != nil {
			return err
		}
		return w.Flush()
	}
	return cli.PrintData(o.f.streams.Out, o.Output, plan, func(w io.Writer) error { return printPlanTable(w, plan) })
}

// printPlanTable is the human view: one line per stage.
func printPlanTable(w io.Writer, p *plans.Plan) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STAGE\tNAMESPACE\tMODE\tSTATUS\tPLAINTEXT/S\tTOP SOURCES\tRISKS")
	for _, s := range p.Stages {
		ns := s.Namespace
		if s.Scope == plans.ScopeMesh {
			ns += " (mesh)"
		}
		var srcs []string
		for i, src := range s.Evidence.PlaintextSources {
			if i == 3 {
				srcs = append(srcs, fmt.Sprintf("+%d", len(s.Evidence.PlaintextSources)-3))
				break
			}
			srcs = append(srcs, src.Namespace+"/"+src.Workload)
		}
		seen := map[string]bool{}
		var risks []string
		for _, r := range s.Risks {
			if !seen[r.Code] {
				seen[r.Code] = true
				risks = append(risks, r.Code)
			}
		}
		rate := s.Evidence.PlaintextRequestRate + s.Evidence.PlaintextConnectionRate
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%g\t%s\t%s\n", s.Number, ns, orDash(string(s.TargetMode)), s.Status, rate, orDash(strings.Join(srcs, ",")), orDash(strings.Join(risks, ",")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, wn := range p.Metadata.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
