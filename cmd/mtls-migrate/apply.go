package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mtls-migrate/mtls-migrate/executor"
	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/clock"
	"github.com/mtls-migrate/mtls-migrate/internal/events"
	"github.com/mtls-migrate/mtls-migrate/internal/health"
	"github.com/mtls-migrate/mtls-migrate/internal/istiosync"
	"github.com/mtls-migrate/mtls-migrate/internal/kube"
	"github.com/mtls-migrate/mtls-migrate/internal/plansource"
	"github.com/mtls-migrate/mtls-migrate/internal/probe"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/internal/window"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// applyOptions are the inputs of `mtls-migrate apply`.
type applyOptions struct {
	f                    *factory
	PlanPath             string
	Stage                int
	Next                 bool
	DryRun               string
	Soak                 time.Duration
	Force                bool
	Reason               string
	Output               string
	StateNamespace       string
	Settle               time.Duration
	GateInterval         time.Duration
	MaxConsecutiveErrors int
	ProbeTimeout         time.Duration
	ProbeRetry           time.Duration
	AllowedWindow        string
	Replan               bool
	LockTTL              time.Duration
	PlanDigest           string
	AllowExec            bool
	IstiodURLs           []string
	IstiodTokenFile      string
	SyncTimeout          time.Duration
	// now is the clock of the window and the state's records; tests fix it.
	now func() time.Time
	// runID is the lock's identity once taken: the stage owner in the state.
	runID string
}

func newApplyCmd(f *factory, runF func(*applyOptions) error) *cobra.Command {
	o := &applyOptions{f: f, now: time.Now}
	cmd := &cobra.Command{
		Use:   "apply --plan SOURCE (--stage N | --next)",
		Short: "Apply one stage of a plan, verify it, and roll it back if health degrades",
		Long: `apply runs one stage of a reviewed plan: pre-flight checks, a snapshot of the
namespace's PeerAuthentications, STRICT by server-side apply, probes (plaintext
must now be refused; traffic through the ingress gateway must still succeed),
and Prometheus health gates through the soak. If anything degrades it restores
the snapshot by itself and exits 3.`,
		Example: `  # Check a stage against the API server's validation without changing anything
  mtls-migrate apply --plan plan.yaml --stage 1 --dry-run=server

  # Apply stage 1 with a 10 minute soak
  mtls-migrate apply --plan plan.yaml --stage 1 --soak 10m

  # What the CronJob runs: the next stage, from the reviewed plan in a ConfigMap
  mtls-migrate apply --plan configmap:mtls-migrate/mtls-migrate-plan --next \
    --allowed-window "Mon-Fri 09:00-16:00 Europe/Berlin"`,
		Args: cobra.NoArgs,
		RunE: runE(o, runF),
	}
	cmd.Flags().StringVar(&o.PlanPath, "plan", "", "the reviewed plan: a file, or configmap:NAMESPACE/NAME/KEY (what a scheduled Job runs)")
	cmd.Flags().IntVar(&o.Stage, "stage", 0, "the stage number to apply")
	cmd.Flags().BoolVar(&o.Next, "next", false, "finish a stage a dead run left mid-way, or else apply the next pending stage; exit 0 when all are done")
	cmd.Flags().StringVar(&o.AllowedWindow, "allowed-window", "", `with --next: start a stage only inside "DAYS HH:MM-HH:MM [ZONE]", e.g. "Mon-Fri 09:00-16:00 Europe/Berlin"; outside it exit 0 doing nothing`)
	cmd.Flags().BoolVar(&o.Replan, "replan", false, "with --next: continue with a plan whose digest differs from the one in progress (says which stages changed)")
	cmd.Flags().BoolVar(&o.AllowExec, "allow-exec-probes", false, "let the plan's exec probes run curl inside the pods they name (off: such a stage is refused)")
	cmd.Flags().StringVar(&o.PlanDigest, "plan-digest", "", "refuse to run unless the plan's digest is this one (sha256:...): pins the reviewed plan, so a changed ConfigMap cannot make the Job run another")
	cmd.Flags().DurationVar(&o.LockTTL, "lock-ttl", 2*time.Minute, "how long the run's lock (Lease mtls-migrate-lock) stays valid without renewal; renewed every third of it; a dead run's lock is taken over after it")
	cmd.Flags().StringVar(&o.DryRun, "dry-run", "none", `"server" sends the change through the API server's validation without persisting it; "none" applies`)
	cmd.Flags().DurationVar(&o.Soak, "soak", 0, "override the stage's soak time")
	cmd.Flags().BoolVar(&o.Force, "force", false, "apply a blocked stage, or despite plaintext seen since the plan (requires --reason, which is recorded)")
	cmd.Flags().StringVar(&o.Reason, "reason", "", "why a blocked stage is forced")
	cmd.Flags().StringVarP(&o.Output, "output", "o", cli.OutputTable, "output format of the result: table, yaml or json")
	cmd.Flags().StringVar(&o.StateNamespace, "state-namespace", state.DefaultNamespace, "namespace of the migration state ConfigMap (must exist)")
	cmd.Flags().DurationVar(&o.Settle, "settle", executor.DefaultSettle, "wait after the change for the proxies to receive it, before probing, when istiod's sync status cannot tell (no --istiod-url, or it failed)")
	cmd.Flags().StringSliceVar(&o.IstiodURLs, "istiod-url", nil, "istiod's monitoring port (e.g. http://istiod.istio-system:15014), once per replica: apply waits until every proxy has acknowledged the change before probing")
	cmd.Flags().StringVar(&o.IstiodTokenFile, "istiod-token-file", "", "a Kubernetes token with the istio-ca audience for istiod's debug endpoints (a projected ServiceAccount token)")
	cmd.Flags().DurationVar(&o.SyncTimeout, "sync-timeout", executor.DefaultSyncTimeout, "how long to wait for every proxy to acknowledge the change before falling back to --settle")
	cmd.Flags().DurationVar(&o.GateInterval, "gate-interval", executor.DefaultGateInterval, "how often the health gates are evaluated during the soak")
	cmd.Flags().IntVar(&o.MaxConsecutiveErrors, "max-consecutive-errors", executor.DefaultMaxConsecutiveErrors, "no data, NaN or query errors in a row that fail a gate")
	cmd.Flags().DurationVar(&o.ProbeTimeout, "probe-timeout", 5*time.Second, "timeout of each probe attempt")
	cmd.Flags().DurationVar(&o.ProbeRetry, "probe-retry", executor.DefaultProbeWithin, "how long probes are retried before they fail (the change takes a moment to reach every proxy)")
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
	if err := validateDryRun(o.DryRun); err != nil {
		return err
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
	if o.Next && (o.Force || o.Reason != "") {
		return cli.Usagef("--force goes with --stage N: a scheduled run never forces a blocked stage")
	}
	if !o.Next && (o.AllowedWindow != "" || o.Replan) {
		return cli.Usagef("--allowed-window and --replan go with --next")
	}
	if o.AllowedWindow != "" {
		if _, err := window.Parse(o.AllowedWindow); err != nil {
			return cli.Usagef("--allowed-window: %v", err)
		}
	}
	if o.LockTTL < 3*time.Second {
		return cli.Usagef("--lock-ttl must be at least 3s")
	}
	if o.PlanDigest != "" && !planDigestRE.MatchString(o.PlanDigest) {
		return cli.Usagef("--plan-digest must be sha256: and 64 hex digits, as `mtls-migrate status --plan FILE -o json` shows it")
	}
	if o.StateNamespace == "" {
		return cli.Usagef("--state-namespace must not be empty")
	}
	if o.Settle < 0 || o.GateInterval <= 0 || o.ProbeTimeout <= 0 || o.ProbeRetry <= 0 {
		return cli.Usagef("--settle must not be negative; --gate-interval, --probe-timeout and --probe-retry must be positive")
	}
	if o.MaxConsecutiveErrors < 1 {
		return cli.Usagef("--max-consecutive-errors must be at least 1")
	}
	for _, u := range o.IstiodURLs {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.User != nil {
			return cli.Usagef("--istiod-url %q must be http(s)://host:port, without credentials (the token goes in --istiod-token-file)", u)
		}
	}
	if o.IstiodTokenFile != "" && len(o.IstiodURLs) == 0 {
		return cli.Usagef("--istiod-token-file goes with --istiod-url")
	}
	if o.SyncTimeout <= 0 {
		return cli.Usagef("--sync-timeout must be positive")
	}
	return cli.ValidateOutput(o.Output)
}

var planDigestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// checkPinned refuses a plan whose digest is not the one --plan-digest pins.
func (o *applyOptions) checkPinned(loaded *plansource.Loaded) error {
	if o.PlanDigest == "" || loaded.Digest == o.PlanDigest {
		return nil
	}
	return cli.Usagef("plan %s has digest %s, not %s as --plan-digest pins: it is not the reviewed plan; nothing was done", loaded.Source, loaded.Digest, o.PlanDigest)
}

// Run applies the stage (--stage) or the next one (--next).
func (o *applyOptions) Run(cmd *cobra.Command) error {
	ctx := cmd.Context()
	if o.Next {
		return o.runNext(ctx)
	}
	loaded, clients, err := o.f.loadPlan(ctx, o.PlanPath)
	if err != nil {
		return err
	}
	if err := o.checkPinned(loaded); err != nil {
		return err
	}
	stage, err := loaded.Plan.Stage(o.Stage)
	if err != nil {
		return cli.Usagef("--stage: %v", err)
	}
	if clients == nil {
		if clients, err = o.f.kubeClients(); err != nil {
			return err
		}
	}
	if o.DryRun != "server" {
		lctx, release, err := o.acquireLock(ctx, clients, func(s string) { fmt.Fprintln(o.f.streams.ErrOut, s) })
		if err != nil {
			return err
		}
		defer release()
		ctx = lctx
	}
	d, opts, err := o.deps(ctx, clients, loaded.Plan, loaded.Digest, stage.Namespace)
	if err != nil {
		return err
	}
	res, runErr := executor.Run(ctx, d, opts)
	return o.printResult(res, runErr)
}

// printResult prints a stage's result (not for a refusal: nothing was done,
// the error says why) and maps its outcome to the exit codes.
func (o *applyOptions) printResult(res *executor.Result, runErr error) error {
	if res != nil && (runErr == nil || !executor.IsRefused(runErr)) {
		if err := cli.PrintData(o.f.streams.Out, o.Output, res, func(w io.Writer) error { return printApplyResult(w, res) }); err != nil {
			return err
		}
	}
	return applyExitError(runErr)
}

// deps builds the executor's clients and options for a stage in namespace.
func (o *applyOptions) deps(ctx context.Context, clients *kube.Clients, plan *plans.Plan, digest, namespace string) (executor.Deps, executor.Options, error) {
	log, err := o.f.logger()
	if err != nil {
		return executor.Deps{}, executor.Options{}, err
	}
	prom, popts, err := o.f.prometheus()
	if err != nil {
		return executor.Deps{}, executor.Options{}, err
	}
	var progress executor.Progress = executor.LogProgress{Log: log}
	if cli.IsTerminal(o.f.streams.ErrOut) && o.f.logFormat != cli.LogJSON {
		progress = &ttyProgress{w: o.f.streams.ErrOut}
	}
	d := executor.Deps{
		Kube: clients.Kube, Istio: clients.Istio, Writer: executor.SSAWriter{Client: clients.Istio},
		Prom: prom, PromTimeout: popts.Timeout,
		Store: state.NewConfigMapStore(clients.Kube, o.StateNamespace),
		Prober: &probe.Prober{Timeout: o.ProbeTimeout, Exec: &probe.KubeExec{Config: clients.Config, Client: clients.Kube},
			Namespace: namespace},
		Events: &events.Kube{Client: clients.Kube}, Clock: clock.Real{}, Progress: progress, Log: log,
	}
	if len(o.IstiodURLs) > 0 {
		d.Sync = &istiosync.Client{URLs: o.IstiodURLs, TokenFile: o.IstiodTokenFile}
	}
	opts := executor.Options{
		Plan: plan, PlanDigest: digest, Stage: o.Stage, DryRun: o.DryRun == "server", Soak: o.Soak,
		Force: o.Force, Reason: o.Reason, Actor: whoAmI(ctx, clients, o.f), RunID: o.runID, AllowExec: o.AllowExec,
		Settle: o.Settle, SyncTimeout: o.SyncTimeout, GateInterval: o.GateInterval, MaxConsecutiveErrors: o.MaxConsecutiveErrors, ProbeWithin: o.ProbeRetry,
	}
	return d, opts, nil
}

// applyExitError maps the executor's outcome to the exit codes.
func applyExitError(err error) error {
	var (
		refused *executor.RefusedError
		rolled  *executor.RolledBackError
		failed  *executor.RollbackFailedError
		notVer  *executor.NotVerifiedError
		nsMiss  *state.NamespaceMissingError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &refused), errors.As(err, &nsMiss):
		return cli.WithCode(cli.ExitUsage, err)
	case errors.As(err, &failed):
		return cli.WithCode(cli.ExitRollbackFailed, fmt.Errorf("%w; a person must look: `mtls-migrate rollback` retries, the snapshot is in the migration state", err))
	case errors.As(err, &notVer):
		return cli.WithCode(cli.ExitRollbackFailed, fmt.Errorf("%w; a person must look: `mtls-migrate status` shows the namespace's mode now", err))
	case errors.As(err, &rolled):
		return cli.WithCode(cli.ExitRolledBack, err)
	}
	return err
}

// whoAmI names the runner as the API server knows it (SelfSubjectReview),
// falling back to the kubeconfig's user name.
func whoAmI(ctx context.Context, c *kube.Clients, f *factory) string {
	r, err := c.Kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err == nil && r.Status.UserInfo.Username != "" {
		return r.Status.UserInfo.Username
	}
	if raw, err := f.configFlags.ToRawKubeConfigLoader().RawConfig(); err == nil {
		ctxName := raw.CurrentContext
		if f.configFlags.Context != nil && *f.configFlags.Context != "" {
			ctxName = *f.configFlags.Context
		}
		if kc, ok := raw.Contexts[ctxName]; ok && kc.AuthInfo != "" {
			return kc.AuthInfo
		}
	}
	return "unknown"
}

func printApplyResult(w io.Writer, r *executor.Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "stage %d (%s): %s\n", r.Stage, r.Namespace, r.Outcome)
	if r.Reason != "" {
		fmt.Fprintf(&b, "reason: %s\n", r.Reason)
	}
	if r.Forced != "" {
		fmt.Fprintf(&b, "forced: %s\n", r.Forced)
	}
	if r.Propagation != "" {
		fmt.Fprintf(&b, "propagation: %s\n", r.Propagation)
	}
	for _, p := range r.Probes {
		fmt.Fprintf(&b, "probe %-30s ok=%-5v %s\n", p.Name, p.OK, p.Observed)
	}
	for _, g := range r.Gates {
		fmt.Fprintf(&b, "gate  %-30s %-12s %s\n", g.Name, g.Verdict, g.Message)
	}
	for _, rb := range r.Rollback {
		for _, a := range rb.Actions {
			fmt.Fprintf(&b, "rollback: %s: %s\n", a.Object, a.Did)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ttyProgress shows the run to a person: a line per step, and the soak's
// countdown with gate values as they come in.
type ttyProgress struct{ w io.Writer }

func (p *ttyProgress) Step(step, message string, attrs ...any) {
	var b strings.Builder
	fmt.Fprintf(&b, "==> %-9s %s", step, message)
	for i := 0; i+1 < len(attrs); i += 2 {
		fmt.Fprintf(&b, " %v=%v", attrs[i], attrs[i+1])
	}
	fmt.Fprintln(p.w, b.String())
}

func (p *ttyProgress) Tick(t health.Tick) {
	var b strings.Builder
	fmt.Fprintf(&b, "    soak %s left:", t.Remaining.Round(time.Second))
	for _, r := range t.Results {
		fmt.Fprintf(&b, "  %s=%.4g (%s)", r.Gate, r.Value, r.Verdict)
	}
	fmt.Fprintln(p.w, b.String())
}
