package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

// rollbackOptions are the inputs of `mtls-migrate rollback`.
type rollbackOptions struct {
	f              *factory
	PlanPath       string
	Stage          int
	All            bool
	DryRun         string
	StateNamespace string
	Output         string
}

func newRollbackCmd(f *factory, runF func(*rollbackOptions) error) *cobra.Command {
	o := &rollbackOptions{f: f}
	cmd := &cobra.Command{
		Use:   "rollback --plan SOURCE (--stage N | --all)",
		Short: "Restore the PeerAuthentications a stage changed, exactly as they were",
		Long: `rollback restores, from the migration state alone (Prometheus is not needed),
the PeerAuthentications a stage changed: it deletes what the stage created and
patches back in place the spec, labels and annotations of what it changed. It
never overwrites a change someone else made since (exit 4: a person must look).
A second run changes nothing and says so.`,
		Example: `  # Undo stage 3
  mtls-migrate rollback --plan plan.yaml --stage 3

  # Undo every applied stage, latest first
  mtls-migrate rollback --plan plan.yaml --all`,
		Args: cobra.NoArgs,
		RunE: runE(o, runF),
	}
	cmd.Flags().StringVar(&o.PlanPath, "plan", "", "the plan whose stages to roll back: a file, or configmap:NAMESPACE/NAME/KEY")
	cmd.Flags().IntVar(&o.Stage, "stage", 0, "the stage number to roll back")
	cmd.Flags().BoolVar(&o.All, "all", false, "roll back every applied stage, latest first")
	cmd.Flags().StringVar(&o.DryRun, "dry-run", "none", `"server" validates the restore without persisting it`)
	cmd.Flags().StringVar(&o.StateNamespace, "state-namespace", state.DefaultNamespace, "namespace of the migration state ConfigMap")
	cmd.Flags().StringVarP(&o.Output, "output", "o", cli.OutputTable, "output format: table, yaml or json")
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
	if err := validateDryRun(o.DryRun); err != nil {
		return err
	}
	if o.StateNamespace == "" {
		return cli.Usagef("--state-namespace must not be empty")
	}
	return cli.ValidateOutput(o.Output)
}

// Run restores the snapshots.
func (o *rollbackOptions) Run(cmd *cobra.Command) error {
	ctx := cmd.Context()
	loaded, _, err := o.f.loadPlan(ctx, o.PlanPath)
	if err != nil {
		return err
	}
	digest := loaded.Digest
	if o.Stage > 0 {
		if _, err := loaded.Plan.Stage(o.Stage); err != nil {
			return cli.Usagef("--stage: %v", err)
		}
	}
	clients, err := o.f.kubeClients()
	if err != nil {
		return err
	}
	store := state.NewConfigMapStore(clients.Kube, o.StateNamespace)
	numbers := []int{o.Stage}
	if o.All {
		s, err := store.Load(ctx)
		if err != nil {
			return err
		}
		if numbers, err = rollback.AppliedStages(s, digest); err != nil {
			return fmt.Errorf("plan %s: %w", o.PlanPath, err)
		}
	}
	r := &rollback.Runner{Istio: clients.Istio, Store: store}
	reports, rbErr := r.Stages(ctx, digest, numbers, "rollback requested", rollback.Options{DryRun: o.DryRun == "server"})
	if errors.Is(rbErr, rollback.ErrNoRecord) {
		return fmt.Errorf("plan %s: %w; nothing to roll back", o.PlanPath, rbErr)
	}
	if err := cli.PrintData(o.f.streams.Out, o.Output, reports, func(w io.Writer) error { return printRollback(w, reports) }); err != nil {
		return err
	}
	if rbErr != nil {
		return cli.WithCode(cli.ExitRollbackFailed, rbErr)
	}
	return nil
}

func printRollback(w io.Writer, reports []rollback.StageReport) error {
	var b strings.Builder
	changed := false
	for _, r := range reports {
		fmt.Fprintf(&b, "stage %d (%s):", r.Number, r.Namespace)
		if r.Note != "" {
			fmt.Fprintf(&b, " %s", r.Note)
		}
		b.WriteString("\n")
		for _, a := range r.Actions {
			fmt.Fprintf(&b, "  %s: %s\n", a.Object, a.Did)
		}
		if r.Error != "" {
			fmt.Fprintf(&b, "  error: %s\n", r.Error)
		}
		changed = changed || r.Changed
	}
	if !changed {
		b.WriteString("nothing changed: everything was already as before\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
