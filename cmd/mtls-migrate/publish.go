package main

import (
	"bufio"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/plansource"
)

// DefaultPlanSource is where deploy/ has the CronJob read the plan.
const DefaultPlanSource = "configmap:mtls-migrate/mtls-migrate-plan"

// publishOptions are the inputs of `mtls-migrate plan publish`.
type publishOptions struct {
	f        *factory
	PlanPath string
	To       string
	DryRun   string
	Out      string
	to       plansource.Source
}

func newPlanPublishCmd(f *factory, runF func(*publishOptions) error) *cobra.Command {
	o := &publishOptions{f: f}
	cmd := &cobra.Command{
		Use:   "publish --plan FILE [--to configmap:NAMESPACE/NAME]",
		Short: "Put a reviewed plan where the scheduled Job reads it: ConfigMaps of well under 1 MiB each",
		Long: `publish writes the reviewed plan into the cluster as the Job reads it: its
YAML, exactly as reviewed, cut between stages into gzip-compressed shards (one
ConfigMap each, a few hundred KiB), and an index ConfigMap NAME that lists them
with the sha256 of each and the plan's digest. Objects are written with
server-side apply (no last-applied annotation), the shards first and the index
last; the shards of the plan published before this one are kept (a run may be
reading them), older ones deleted. With --out FILE it writes the ConfigMaps to
a file instead, for GitOps (kubectl apply --server-side -f FILE).`,
		Example: `  # What deploy/README.md does after the plan's review
  mtls-migrate plan publish --plan deploy/plan.yaml --to configmap:mtls-migrate/mtls-migrate-plan

  # For a repository a GitOps controller applies (server-side)
  mtls-migrate plan publish --plan deploy/plan.yaml --out deploy/published-plan.yaml`,
		Args: cobra.NoArgs,
		RunE: runE(o, runF),
	}
	fl := cmd.Flags()
	fl.StringVar(&o.PlanPath, "plan", "", "the reviewed plan file (written by `mtls-migrate plan --out`)")
	fl.StringVar(&o.To, "to", DefaultPlanSource, "where the Job reads it: configmap:NAMESPACE/NAME (the index; shards are NAME-<digest>-<n>)")
	fl.StringVar(&o.DryRun, "dry-run", "none", `"server" sends every object through the API server's validation without persisting it`)
	fl.StringVar(&o.Out, "out", "", "write the ConfigMaps to this file (YAML) instead of the cluster")
	return cmd
}

// Validate rejects bad input before anything is contacted.
func (o *publishOptions) Validate() error {
	if o.PlanPath == "" {
		return cli.Usagef("--plan is required: the reviewed plan file")
	}
	src, err := plansource.Parse(o.To)
	if err != nil {
		return cli.Usagef("--to: %v", err)
	}
	if !src.IsConfigMap() || src.Key != "" {
		return cli.Usagef("--to must be configmap:NAMESPACE/NAME (the index ConfigMap), got %q", o.To)
	}
	if len(src.Name) > 253-20 {
		return cli.Usagef("--to: the ConfigMap name %q is too long for its shards' names (at most 233 characters)", src.Name)
	}
	o.to = src
	if err := validateDryRun(o.DryRun); err != nil {
		return err
	}
	if o.Out != "" && o.DryRun != "none" {
		return cli.Usagef("--out writes a file: --dry-run goes with writing to the cluster")
	}
	return nil
}

// Run lays the plan out and writes it.
func (o *publishOptions) Run(cmd *cobra.Command) error {
	ctx := cmd.Context()
	loaded, _, err := o.f.loadPlan(ctx, o.PlanPath)
	if err != nil {
		return err
	}
	pub, err := plansource.Build(loaded.Plan, o.to.Namespace, o.to.Name)
	if err != nil {
		return cli.WithCode(cli.ExitUsage, err)
	}
	if pub.Index.Digest != loaded.Digest {
		return fmt.Errorf("internal error: the shards' digest %s is not the plan's %s; nothing was published", pub.Index.Digest, loaded.Digest)
	}
	out := o.f.streams.Out
	if o.Out != "" {
		if err := writeManifests(o.Out, pub); err != nil {
			return err
		}
	} else {
		clients, err := o.f.kubeClients()
		if err != nil {
			return err
		}
		say := func(s string) { fmt.Fprintln(o.f.streams.ErrOut, s) }
		if err := plansource.Publish(ctx, clients.Kube, pub, plansource.PublishOptions{DryRun: o.DryRun == "server", Say: say}); err != nil {
			return err
		}
	}
	verb := "published"
	switch {
	case o.Out != "":
		verb = "wrote to " + o.Out
	case o.DryRun == "server":
		verb = "validated (dry run, nothing persisted)"
	}
	fmt.Fprintf(out, "plan %q %s: %d stages, %d bytes of YAML in %d shards (largest %d KiB compressed) and the index ConfigMap %s/%s\n",
		pub.Index.Plan, verb, pub.Index.Stages, pub.Index.Bytes, len(pub.Index.Shards), largestShard(pub)>>10, pub.Namespace, pub.Name)
	fmt.Fprintf(out, "digest %s\nrun it with: --plan %s --plan-digest %s\n", pub.Index.Digest, o.to, pub.Index.Digest)
	return nil
}

func largestShard(pub *plansource.Published) int {
	n := 0
	for _, sh := range pub.Index.Shards {
		n = max(n, sh.Compressed)
	}
	return n
}

// writeManifests writes the ConfigMaps as one YAML stream, shards first.
func writeManifests(path string, pub *plansource.Published) error {
	f, err := os.Create(path) // #nosec G304 -- the user names the file.
	if err != nil {
		return fmt.Errorf("write the plan's ConfigMaps: %w", err)
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "# The plan %q (%s), published by mtls-migrate plan publish.\n# Apply with: kubectl apply --server-side -f %s\n", pub.Index.Plan, pub.Index.Digest, path)
	for _, cm := range pub.ConfigMaps() {
		b, err := yaml.Marshal(cm)
		if err != nil {
			_ = f.Close()
			return fmt.Errorf("write the plan's ConfigMaps: %w", err)
		}
		fmt.Fprintf(w, "---\n%s", b)
	}
	if err := w.Flush(); err != nil {
		_ = f.Close()
		return fmt.Errorf("write the plan's ConfigMaps to %s: %w", path, err)
	}
	return f.Close()
}
