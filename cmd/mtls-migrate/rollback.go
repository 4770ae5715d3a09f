package main

import (
	"github.com/spf13/cobra"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
)

// rollbackOptions are the inputs of `mtls-migrate rollback`.
type rollbackOptions struct {
	f        *factory
	PlanPath string
	Stage    int
	All      bool
	DryRun   string
}

func newRollbackCmd(f *factory, runF func(*rollbackOptions) error) *cobra.Command {
	o := &rollbackOptions{f: f}
	cmd := &cobra.Command{
		Use:   "rollback --plan FILE (--stage N | --all)",
		Short: "Restore the PeerAuthentications a stage changed, exactly as they were",
		Example: `  # Undo stage 3
  mtls-migrate rollback --plan plan.yaml --stage 3

  # Undo every applied stage, latest first
  mtls-migrate rollback --plan plan.yaml --all`,
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
	cmd.Flags().StringVar(&o.PlanPath, "plan", "", "the plan whose stages to roll back")
	cmd.Flags().IntVar(&o.Stage, "stage", 0, "the stage number to roll back")
	cmd.Flags().BoolVar(&o.All, "all", false, "roll back every applied stage, latest first")
	cmd.Flags().StringVar(&o.DryRun, "dry-run", "none", `"server" validates the restore without persisting it`)
	return cmd
}

// Validate rejects bad input before anything is contacted.
func (o *rollbackOptions) Validate() error {
	if o.PlanPath == "" {
		return cli.Usagef("--plan is required")
	}
	if (o.Stage == 0) == !o.All {
		return cli.Usagef("give exactly one of --stage N or --all")
	}
	if o.Stage < 0 {
		return cli.Usagef("--stage must be a stage number from the plan (1..n)")
	}
	switch o.DryRun {
	case "none", "server":
	default:
		return cli.Usagef(`--dry-run must be "none" or "server", got %q`, o.DryRun)
	}
	return nil
}

// Run restores the snapshots.
func (o *rollbackOptions) Run(_ *cobra.Command) error {
	return errNotBuilt("rollback")
}
