package main

import (
	"github.com/spf13/cobra"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
)

// statusOptions are the inputs of `mtls-migrate status`.
type statusOptions struct {
	f        *factory
	PlanPath string
	Output   string
}

func newStatusCmd(f *factory, runF func(*statusOptions) error) *cobra.Command {
	o := &statusOptions{f: f}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each namespace's effective mTLS mode, stage state and live plaintext rate",
		Example: `  mtls-migrate status --plan plan.yaml
  mtls-migrate status -o json | jq '.namespaces[] | select(.mode != "STRICT")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return o.Run(cmd)
		},
	}
	cmd.Flags().StringVar(&o.PlanPath, "plan", "", "the plan being executed (optional: adds stage state)")
	cmd.Flags().StringVarP(&o.Output, "output", "o", cli.OutputTable, "output format: table, yaml or json")
	return cmd
}

// Validate rejects bad input before anything is contacted.
func (o *statusOptions) Validate() error { return cli.ValidateOutput(o.Output) }

// Run prints the status.
func (o *statusOptions) Run(_ *cobra.Command) error {
	return errNotBuilt("status")
}
