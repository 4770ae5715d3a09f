// Command sandbox runs a sandbox in the foreground:
//
//	go run ./cmd/sandbox up --scenario scenarios/online-boutique.yaml --dir /tmp/sb [--scrape-interval 1s]
//
// Once ready it writes DIR/kubeconfig, DIR/env and, last, DIR/ready, and it
// runs until SIGINT or SIGTERM, then tears everything down.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mtls-migrate/mtls-migrate/sandbox"
	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

type upOptions struct {
	scenario, dir, apiserver, prometheus string
	scrapeInterval                       time.Duration
	check                                bool
	istiod                               string
}

func run(args []string, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "up" {
		return usageError{errors.New("usage: sandbox up --scenario FILE --dir DIR [--scrape-interval 1s] [--istiod auto|on|off] [--check]")}
	}
	var o upOptions
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.scenario, "scenario", "", "scenario file (see sandbox/README.md)")
	fs.StringVar(&o.dir, "dir", "", "working directory: kubeconfig, env, ready, logs, Prometheus data")
	fs.DurationVar(&o.scrapeInterval, "scrape-interval", 0, "Prometheus scrape interval (default: the scenario's, else 15s)")
	fs.StringVar(&o.apiserver, "apiserver-binary", "", "kube-apiserver binary (default: the one scripts/build-kube-apiserver.sh cached)")
	fs.StringVar(&o.prometheus, "prometheus-binary", "", "prometheus binary (default: prometheus on PATH)")
	fs.BoolVar(&o.check, "check", false, "only load and validate the scenario, then exit")
	fs.StringVar(&o.istiod, "istiod", "auto", "run the real istiod and enforce its configuration: auto (when scripts/build-istiod.sh has cached it, always with CI=true), on, off")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err}
	}
	if o.scenario == "" {
		return usageError{errors.New("--scenario is required")}
	}
	if o.istiod != "auto" && o.istiod != "on" && o.istiod != "off" {
		return usageError{fmt.Errorf("--istiod %q: want auto, on or off", o.istiod)}
	}
	scn, err := scenario.Load(o.scenario)
	if err != nil {
		return usageError{err}
	}
	if o.check {
		fmt.Fprintf(stderr, "scenario %s is valid: %d namespaces, %d workloads, %d services, %d flows\n", scn.Name, len(scn.Namespaces), len(scn.Workloads), len(scn.Services), len(scn.Flows))
		return nil
	}
	if o.dir == "" {
		return usageError{errors.New("--dir is required")}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sb, err := sandbox.Start(ctx, sandbox.Options{
		Scenario: scn, Dir: o.dir, APIServerBinary: o.apiserver, PrometheusBinary: o.prometheus,
		ScrapeInterval: o.scrapeInterval, Logger: log, Istiod: o.istiod == "on", NoIstiod: o.istiod == "off",
	})
	if err != nil {
		return err
	}
	if err := sb.WriteFiles(o.dir); err != nil {
		_ = sb.Stop()
		return fmt.Errorf("write %s/env and ready: %w", o.dir, err)
	}
	log.Info("ready; Ctrl-C to stop", "env", o.dir+"/env", "flows", sb.FlowsURL())
	<-ctx.Done()
	log.Info("stopping")
	return sb.Stop()
}
