package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/kube"
	"github.com/mtls-migrate/mtls-migrate/internal/plansource"
	"github.com/mtls-migrate/mtls-migrate/internal/promclient"
)

// factory hands each command its clients (the GitHub CLI pattern), so tests
// can swap them. It holds flag values only; clients are built on demand.
type factory struct {
	streams     genericiooptions.IOStreams
	configFlags *genericclioptions.ConfigFlags

	promURL          string
	promTokenFile    string
	promCAFile       string
	promInsecure     bool
	promTimeout      time.Duration
	promHeaders      []string
	logFormat        string
	verbosity        int
	newKubeClients   func() (*kube.Clients, error)
	clients          *kube.Clients
	newPrometheusAPI func(promclient.Options) (v1.API, error)
}

func newRootCmd(streams genericiooptions.IOStreams) *cobra.Command {
	f := &factory{
		streams:     streams,
		configFlags: genericclioptions.NewConfigFlags(true),
	}
	f.newKubeClients = func() (*kube.Clients, error) { return kube.New(f.configFlags) }
	f.newPrometheusAPI = promclient.New

	cmd := &cobra.Command{
		Use:   "mtls-migrate",
		Short: "Move an Istio mesh from PERMISSIVE to STRICT mTLS, one verified namespace at a time",
		Long: `mtls-migrate moves an Istio mesh from PERMISSIVE to STRICT mutual TLS as a
reviewed, verified, reversible process:

  plan      read Istio telemetry and cluster state; write a staged plan to review
  apply     apply one stage; verify it with probes and health gates; roll back on failure
  rollback  restore the PeerAuthentications a stage changed, exactly
  status    show each namespace's effective mode and stage state

Exit codes: 0 done; 1 error; 2 bad usage or invalid input (nothing touched);
3 a gate failed and the stage was rolled back; 4 the rollback failed too;
5 another run holds the lock (nothing touched).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.NewLogger(f.streams.ErrOut, f.logFormat, f.verbosity); err != nil {
				return err
			}
			return nil
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.WithCode(cli.ExitUsage, err) })

	flags := cmd.PersistentFlags()
	f.configFlags.AddFlags(flags)
	flags.StringVar(&f.promURL, "prometheus-url", os.Getenv("PROMETHEUS_URL"), "Prometheus-compatible query API (Prometheus, Thanos, Mimir, VictoriaMetrics); default from $PROMETHEUS_URL")
	flags.StringVar(&f.promTokenFile, "prometheus-bearer-token-file", "", "file holding a bearer token for Prometheus (never printed)")
	flags.StringVar(&f.promCAFile, "prometheus-ca-file", "", "CA bundle to verify Prometheus' TLS certificate")
	flags.BoolVar(&f.promInsecure, "prometheus-insecure-skip-verify", false, "do not verify Prometheus' TLS certificate (testing only)")
	flags.DurationVar(&f.promTimeout, "prometheus-timeout", 30*time.Second, "timeout for each Prometheus query")
	flags.StringArrayVar(&f.promHeaders, "prometheus-header", nil, "extra header KEY=VALUE for Prometheus requests, repeatable (e.g. X-Scope-OrgID=tenant for Mimir)")
	flags.StringVar(&f.logFormat, "log-format", cli.LogText, "log format on stderr: text or json")
	flags.IntVarP(&f.verbosity, "v", "v", 0, "log verbosity: 0 info, 1 or more debug")

	cmd.AddCommand(
		newPlanCmd(f, nil),
		newApplyCmd(f, nil),
		newRollbackCmd(f, nil),
		newStatusCmd(f, nil),
		newVersionCmd(f),
	)
	usageArgs(cmd)
	return cmd
}

// commandOptions is kubectl's Options pattern: Validate rejects bad input
// before anything is contacted; Run does the work. Options that need derived
// values also implement Complete, called first.
type commandOptions interface {
	Validate() error
	Run(cmd *cobra.Command) error
}

// runE is every command's RunE: Complete (if any), Validate, then runF when a
// test passes one (flag parsing tested apart from behaviour), else Run.
func runE[O commandOptions](o O, runF func(O) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if c, ok := any(o).(interface{ Complete() error }); ok {
			if err := c.Complete(); err != nil {
				return err
			}
		}
		if err := o.Validate(); err != nil {
			return err
		}
		if runF != nil {
			return runF(o)
		}
		return o.Run(cmd)
	}
}

// validateDryRun checks a --dry-run value ("none" or "server", as kubectl).
func validateDryRun(v string) error {
	switch v {
	case "none", "server":
		return nil
	}
	return cli.Usagef(`--dry-run must be "none" or "server", got %q`, v)
}

// usageArgs makes argument errors (an unexpected positional argument) exit
// with the usage code, like flag errors: nothing was touched.
func usageArgs(c *cobra.Command) {
	if c.Args != nil {
		args := c.Args
		c.Args = func(cmd *cobra.Command, a []string) error {
			return cli.WithCode(cli.ExitUsage, args(cmd, a))
		}
	}
	for _, sub := range c.Commands() {
		usageArgs(sub)
	}
}

// logger returns the logger configured by --log-format and -v.
func (f *factory) logger() (*slog.Logger, error) {
	return cli.NewLogger(f.streams.ErrOut, f.logFormat, f.verbosity)
}

// prometheusOptions gathers and validates the Prometheus flags.
func (f *factory) prometheusOptions() (promclient.Options, error) {
	headers, err := promclient.ParseHeaders(f.promHeaders)
	if err != nil {
		return promclient.Options{}, cli.WithCode(cli.ExitUsage, err)
	}
	o := promclient.Options{
		URL:                f.promURL,
		BearerTokenFile:    f.promTokenFile,
		CAFile:             f.promCAFile,
		InsecureSkipVerify: f.promInsecure,
		Timeout:            f.promTimeout,
		Headers:            headers,
	}
	if err := o.Validate(); err != nil {
		return o, cli.WithCode(cli.ExitUsage, err)
	}
	return o, nil
}

// prometheus returns a Prometheus API client built from the flags.
func (f *factory) prometheus() (v1.API, promclient.Options, error) {
	o, err := f.prometheusOptions()
	if err != nil {
		return nil, o, err
	}
	api, err := f.newPrometheusAPI(o)
	if err != nil {
		return nil, o, err
	}
	return api, o, nil
}

// kubeClients returns the cluster clients built from the kubectl flags,
// once per command.
func (f *factory) kubeClients() (*kube.Clients, error) {
	if f.clients == nil {
		c, err := f.newKubeClients()
		if err != nil {
			return nil, err
		}
		f.clients = c
	}
	return f.clients, nil
}

// loadPlan loads the plan named by --plan, the same way for every command:
// a file, or a ConfigMap key (for which it builds the cluster clients, and
// returns them; nil for a file). A bad source or an invalid plan is invalid
// input (exit 2).
func (f *factory) loadPlan(ctx context.Context, source string) (*plansource.Loaded, *kube.Clients, error) {
	var clients *kube.Clients
	loaded, err := plansource.Load(ctx, source, func() (kubernetes.Interface, error) {
		c, err := f.kubeClients()
		if err != nil {
			return nil, err
		}
		clients = c
		return c.Kube, nil
	})
	var invalid *plansource.InvalidError
	if errors.As(err, &invalid) {
		return nil, nil, cli.WithCode(cli.ExitUsage, err)
	}
	if err != nil {
		return nil, nil, err
	}
	return loaded, clients, nil
}
