package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// planOptions are the inputs of `mtls-migrate plan`.
type planOptions struct {
	f         *factory
	windowRaw string
	Window    time.Duration
	Out       string
	Output    string
}

func newPlanCmd(f *factory, runF func(*planOptions) error) *cobra.Command {
	o := &planOptions{f: f}
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Build a staged migration plan from Istio telemetry and cluster state",
		Long: `plan reads Istio's standard metrics (plaintext and mTLS traffic by source and
destination) over a window and the cluster's state (sidecars, Services,
PeerAuthentications, DestinationRules), and writes a staged plan: one
namespace per stage, each ready, blocked or needing review, with evidence,
risks and fixes. Nothing in the cluster changes.`,
		Example: `  # Plan from the last 7 days of telemetry and write it for review
  mtls-migrate plan --prometheus-url http://prometheus.istio-system:9090 --out plan.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return o.Run(cmd)
		},
	}
	cmd.Flags().StringVar(&o.windowRaw, "window", "7d", "telemetry window to read (long enough to see weekly jobs)")
	cmd.Flags().StringVar(&o.Out, "out", "", "write the plan to this file (YAML) as well as printing the summary")
	cmd.Flags().StringVarP(&o.Output, "output", "o", cli.OutputTable, "output format: table, yaml or json")
	return cmd
}

// Complete fills derived values from the flags.
func (o *planOptions) Complete() error {
	d, err := plans.ParseDuration(o.windowRaw)
	if err != nil {
		return cli.Usagef("--window: %v", err)
	}
	o.Window = d.Std()
	return nil
}

// Validate rejects bad input before anything is contacted.
func (o *planOptions) Validate() error {
	if o.Window <= 0 {
		return cli.Usagef("--window must be positive, e.g. 7d")
	}
	return cli.ValidateOutput(o.Output)
}

// Run builds the plan.
func (o *planOptions) Run(_ *cobra.Command) error {
	return errNotBuilt("plan")
}
