package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

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
	LockTTL        time.Duration
	Preempt        bool
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
A second run changes nothing and says so.

It takes the run lock (Lease mtls-migrate-lock) like apply. While another run
holds it (an apply soaking a stage) it refuses with exit 5, unless --preempt:
then the rollback takes the stage over and the running apply stops at its
next state write, leaving the rollback's result alone.`,
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
	cmd.Flags().DurationVar(&o.LockTTL, "lock-ttl", 2*time.Minute, "how long the run lock stays valid without renewal (as apply's)")
	cmd.Flags().BoolVar(&o.Preempt, "preempt", false, "roll back even while another run holds the lock (an apply soaking the stage): that run stops and leaves the rollback alone")
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
	if o.LockTTL < 3*time.Second {
		return cli.Usagef("--lock-ttl must be at least 3s")
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
	r := &rollback.Runner{Istio: clients.Istio, Kube: clients.Kube, Store: store, TakeOver: true}
	if o.DryRun != "server" {
		say := func(s string) { fmt.Fprintln(o.f.streams.ErrOut, s) }
		rl, err := takeLock(ctx, clients, o.StateNamespace, o.LockTTL, say)
		switch {
		case err == nil:
			defer rl.release()
			ctx, r.Owner = rl.ctx, rl.identity
		case o.Preempt && cli.Code(err) == cli.ExitLocked:
			// The holder keeps its lock; fencing on the stage's owner is
			// what makes it stop: the rollback owns the stage from
			// rolling-back on.
			say("preempting: " + err.Error())
			r.Owner = runnerIdentity()
		case cli.Code(err) == cli.ExitLocked:
			return cli.WithCode(cli.ExitLocked, fmt.Errorf("%w; to roll back while it runs, pass --preempt (it then stops at its next state write)", err))
		default:
			return err
		}
	}
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
