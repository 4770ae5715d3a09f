package main

import (
	"context"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/promclient"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/status"
)

// statusOptions are the inputs of `mtls-migrate status`.
type statusOptions struct {
	f              *factory
	PlanPath       string
	Output         string
	StateNamespace string
	RateWindow     time.Duration
	// now is the clock; tests fix it.
	now func() time.Time
}

func newStatusCmd(f *factory, runF func(*statusOptions) error) *cobra.Command {
	o := &statusOptions{f: f, now: time.Now}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each namespace's effective mTLS mode, stage state and live plaintext rate",
		Long: `status shows, for the root namespace (the mesh-wide mode) and every namespace
with meshed pods or an injection label: the effective mTLS mode, the workloads
and ports where a workload policy overrides it, the stage recorded in the
migration state (phase, when and by whom it was applied, why it ended, the
last gate values) and the plaintext requests/s plus TCP connections/s still
accepted into it. Prometheus is optional: without it the rate is "unknown"
(null in JSON), never 0. Nothing in the cluster changes.

-o json is stable for scripts:
  {"rootNamespace", "meshMode", "plan": {"name","digest"}|null, "rateWindow",
   "namespaces": [{"name", "scope": "mesh"|"namespace", "mode",
     "overrides": [{"workload", "port": N|null, "mode", "policy"}],
     "stage": {"number", "phase", "targetMode", "appliedAt", "finishedAt",
               "appliedBy", "reason", "forceReason",
               "gates": [{"name","verdict","value","threshold","message","at"}]}|null,
     "plaintextRate": N|null}],
   "notes": [...], "warnings": [...]}`,
		Example: `  mtls-migrate status --plan plan.yaml
  mtls-migrate status -o json | jq '.namespaces[] | select(.mode != "STRICT")'`,
		Args: cobra.NoArgs,
		RunE: runE(o, runF),
	}
	cmd.Flags().StringVar(&o.PlanPath, "plan", "", "the plan being executed, a file or configmap:NAMESPACE/NAME/KEY (optional: shows its record and its stages not started yet)")
	cmd.Flags().StringVarP(&o.Output, "output", "o", cli.OutputTable, "output format: table, yaml or json")
	cmd.Flags().StringVar(&o.StateNamespace, "state-namespace", state.DefaultNamespace, "namespace of the migration state ConfigMap")
	cmd.Flags().DurationVar(&o.RateWindow, "rate-window", 5*time.Minute, "range of rate() for the live plaintext rate (at least a few scrape intervals)")
	return cmd
}

// Validate rejects bad input before anything is contacted.
func (o *statusOptions) Validate() error {
	if o.StateNamespace == "" {
		return cli.Usagef("--state-namespace must not be empty")
	}
	if o.RateWindow <= 0 {
		return cli.Usagef("--rate-window must be positive, e.g. 5m")
	}
	return cli.ValidateOutput(o.Output)
}

// Run prints the status.
func (o *statusOptions) Run(cmd *cobra.Command) error {
	log, err := o.f.logger()
	if err != nil {
		return err
	}
	in := status.Inputs{StateNamespace: o.StateNamespace, RateWindow: o.RateWindow, Now: o.now}
	// Prometheus is optional here: no URL leaves the rates unknown, but a
	// malformed one is still bad usage.
	if o.f.promURL != "" {
		prom, popts, err := o.f.prometheus()
		if err != nil {
			return err
		}
		in.Prometheus, in.PrometheusURL, in.PrometheusTimeout = prom, promclient.Redact(popts.URL), popts.Timeout
	}
	clients, err := o.f.kubeClients()
	if err != nil {
		return err
	}
	in.Kube, in.Istio, in.Metadata = clients.Kube, clients.Istio, clients.Metadata
	in.Store = state.NewConfigMapStore(clients.Kube, o.StateNamespace)
	if o.PlanPath != "" {
		// Loaded while status reads the cluster (the clients exist, so
		// loadPlan only reads through them).
		in.LoadPlan = func(ctx context.Context) (*plans.Plan, string, error) {
			loaded, _, err := o.f.loadPlan(ctx, o.PlanPath)
			if err != nil {
				return nil, "", err
			}
			return loaded.Plan, loaded.Digest, nil
		}
	}

	rep, err := status.Build(cmd.Context(), in)
	if err != nil {
		return err
	}
	for _, w := range rep.Warnings {
		log.Warn(w)
	}
	return cli.PrintData(o.f.streams.Out, o.Output, rep, func(w io.Writer) error { return rep.WriteTable(w) })
}
