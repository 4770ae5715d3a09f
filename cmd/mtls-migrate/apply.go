package main

import (
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
)

// applyOptions are the inputs of `mtls-migrate apply`.
type applyOptions struct {
	f        *factory
	PlanPath string
	Stage    int
	Next     bool
	DryRun   string
	Soak     time.Duration
	Force    bool
	Reason   string
	Output   string
}

func newApplyCmd(f *factory, runF func(*applyOptions) error) *cobra.Command {
	o := &applyOptions{f: f}
	cmd := &cobra.Command{
		Use:   "apply --plan FILE (--stage N | --next)",
		Short: "Apply one stage of a plan, verify it, and roll it back if health degrades",
		Long: `apply runs one stage of a reviewed plan: pre-flight checks, a snapshot of the
namespace's PeerAuthentications, STRICT by server-side apply, probes (plaintext
must now be refused; traffic through the ingress gateway must still succeed),
and Prometheus health gates through the soak. If anything degrades it restores
the snapshot by itself and exits 3.`,
		Example: `  # Check a stage against the API server's validation without changing anything
  mtls-migrate apply --plan plan.yaml --stage 1 --dry-run=server

  # Apply stage 1 with a 10 minute soak
  mtls-migrate apply --plan plan.yaml --stage 1 --soak 10m`,
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
	cmd.Flags().StringVar(&o.PlanPath, "plan", "", "the reviewed plan file")
	cmd.Flags().IntVar(&o.Stage, "stage", 0, "the stage number to apply")
	cmd.Flags().BoolVar(&o.Next, "next", false, "apply the next pending stage")
	cmd.Flags().StringVar(&o.DryRun, "dry-run", "none", `"server" sends the change through the API server's validation without persisting it; "none" applies`)
	cmd.Flags().DurationVar(&o.Soak, "soak", 0, "override the stage's soak time")
	cmd.Flags().BoolVar(&o.Force, "force", false, "apply a blocked stage (requires --reason, which is recorded)")
	cmd.Flags().StringVar(&o.Reason, "reason", "", "why a blocked stage is forced")
	cmd.Flags().StringVarP(&o.Output, "output", "o", cli.OutputTable, "output format of the result: table, yaml or json")
	return cmd
}

// Validate rejects bad input before anything is contacted.
func (o *applyOptions) Validate() error {
	if o.PlanPath == "" {
		return cli.Usagef("--plan is required: the plan file written by `mtls-migrate plan`")
	}
	if (o.Stage == 0) == !o.Next {
		return cli.Usagef("give exactly one of --stage N or --next")
	}
	if o.Stage < 0 {
		return cli.Usagef("--stage must be a stage number from the plan (1..n)")
	}
	switch o.DryRun {
	case "none", "server":
	default:
		return cli.Usagef(`--dry-run must be "none" or "server", got %q`, o.DryRun)
	}
	if o.Soak < 0 {
		return cli.Usagef("--soak must not be negative")
	}
	if o.Force && strings.TrimSpace(o.Reason) == "" {
		return cli.Usagef("--force needs --reason \"...\": the reason is recorded with the stage")
	}
	if !o.Force && o.Reason != "" {
		return cli.Usagef("--reason goes with --force")
	}
	return cli.ValidateOutput(o.Output)
}

// Run applies the stage.
func (o *applyOptions) Run(_ *cobra.Command) error {
	return errNotBuilt("apply")
}
