package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mtls-migrate/mtls-migrate/executor"
	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/kube"
	"github.com/mtls-migrate/mtls-migrate/internal/lock"
	"github.com/mtls-migrate/mtls-migrate/internal/plansource"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/internal/window"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// nowFunc is the clock of the window check (tests replace it).
var nowFunc = time.Now

// readPlan loads the plan from a file or a ConfigMap key; an invalid plan
// is invalid input (exit 2).
func readPlan(ctx context.Context, source string, clients *kube.Clients) (*plans.Plan, string, error) {
	src, err := plansource.Parse(source)
	if err != nil {
		return nil, "", cli.WithCode(cli.ExitUsage, err)
	}
	if !src.IsConfigMap() {
		return loadPlan(src.Path)
	}
	data, err := src.Read(ctx, clients.Kube)
	if err != nil {
		return nil, "", err
	}
	p, err := plans.Load(src.String(), data)
	if err != nil {
		return nil, "", cli.WithCode(cli.ExitUsage, err)
	}
	d, err := plans.Digest(p)
	if err != nil {
		return nil, "", err
	}
	return p, d, nil
}

// runnerIdentity names this runner in the lock: the pod name in a Job (the
// hostname) plus a random suffix, so two processes never share it.
func runnerIdentity() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "mtls-migrate"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}

// acquireLock takes the Lease for the run and keeps it renewed; losing it
// cancels the run (the executor then rolls the stage back from the state).
func (o *applyOptions) acquireLock(ctx context.Context, clients *kube.Clients, say func(string)) (context.Context, func(), error) {
	l, err := lock.Acquire(ctx, lock.Options{Client: clients.Kube, Namespace: o.StateNamespace, Identity: runnerIdentity(), TTL: o.LockTTL})
	var held *lock.HeldError
	if errors.As(err, &held) {
		return nil, nil, cli.WithCode(cli.ExitLocked, err)
	}
	if err != nil {
		return nil, nil, err
	}
	if l.TookOver != "" {
		say(fmt.Sprintf("took over the lock from %s, whose lease had expired (that run died)", l.TookOver))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	l.KeepRenewed(ctx, func(err error) { say("lost the lock: " + err.Error()); cancel(err) })
	release := func() {
		rctx, c := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer c()
		if err := l.Release(rctx); err != nil {
			say("could not release the lock (it expires by itself): " + err.Error())
		}
		cancel(nil)
	}
	return ctx, release, nil
}

// runNext is `apply --next`: resume a stage a dead run left mid-way, or run
// the next pending stage, once, inside the allowed window.
func (o *applyOptions) runNext(cmd *cobra.Command) error {
	ctx := cmd.Context()
	out := o.f.streams.Out
	say := func(s string) { fmt.Fprintln(out, s) }
	var win *window.Window
	if o.AllowedWindow != "" {
		win, _ = window.Parse(o.AllowedWindow) // validated
	}
	clients, err := o.f.kubeClients()
	if err != nil {
		return err
	}
	plan, digest, err := readPlan(ctx, o.PlanPath, clients)
	if err != nil {
		return err
	}
	store := state.NewConfigMapStore(clients.Kube, o.StateNamespace)
	st, err := store.Load(ctx)
	if err != nil {
		return err
	}
	// Outside the window only a stage a dead run left mid-way is handled:
	// the window is about starting changes, and STRICT must not stay
	// unverified until the next window.
	if _, inProgress := st.InProgress(); inProgress == nil && win != nil {
		if in, _ := win.Contains(nowFunc()); !in {
			say(fmt.Sprintf("outside the allowed window %q (now %s; next opens %s): nothing to do", win, nowFunc().In(win.Loc).Format("Mon 15:04 MST"), win.Next(nowFunc()).Format("Mon 2006-01-02 15:04 MST")))
			return nil
		}
	}

	ctx, release, err := o.acquireLock(ctx, clients, say)
	if err != nil {
		return err
	}
	defer release()
	// Re-read under the lock: the state may have moved while we waited.
	if st, err = store.Load(ctx); err != nil {
		return err
	}

	rec, inProg := st.InProgress()
	if inProg != nil {
		ro := executor.Options{PlanDigest: rec.Digest, Stage: inProg.Number}
		if rec.Digest == digest {
			ro.Plan = plan
		} else if !o.Replan {
			return cli.WithCode(cli.ExitUsage, fmt.Errorf("stage %d (%s) of plan %q (%s) was left %s by a run that died, and the plan given is another one (%s); pass --replan to roll that stage back from the state and move to the new plan, or run `mtls-migrate apply --next` with the plan it started with",
				inProg.Number, inProg.Namespace, rec.Name, rec.Digest, inProg.Phase, digest))
		}
		return o.runResume(ctx, clients, ro, inProg.Namespace)
	}

	cur := st.Current()
	if cur != nil && cur.Digest != digest && st.Plan(digest) == nil {
		changes := executor.DiffOutlines(cur, executor.Outline(plan))
		if !o.Replan {
			return cli.WithCode(cli.ExitUsage, fmt.Errorf("the plan's digest %s differs from the one in progress (%q, %s): it changed since the migration started:\n  %s\nreview the change and pass --replan to continue with the new plan",
				digest, cur.Name, cur.Digest, strings.Join(changes, "\n  ")))
		}
		say(fmt.Sprintf("replanning: plan %q (%s) replaces %q (%s); stages changed:\n  %s", plan.Metadata.Name, digest, cur.Name, cur.Digest, strings.Join(changes, "\n  ")))
	}
	// Record the plan and its outline (once), carrying done stages over.
	var notes []string
	if err := store.Update(ctx, func(s *state.State) error {
		notes = nil
		prev := s.Current()
		isNew := s.Plan(digest) == nil
		r := s.EnsurePlan(plan.Metadata.Name, digest, nowFunc())
		if len(r.Outline) == 0 {
			r.Outline = executor.Outline(plan)
		}
		if isNew && prev != nil {
			// prev may have moved when EnsurePlan appended; look it up again.
			notes = executor.CarryOver(s.Plan(prev.Digest), s.Plan(digest), plan, nowFunc())
		}
		return nil
	}); err != nil {
		return err
	}
	for _, n := range notes {
		say(n)
	}
	if st, err = store.Load(ctx); err != nil {
		return err
	}
	next := executor.PickNext(st, plan, digest)
	say(next.Message)
	switch next.Kind {
	case executor.NextAllDone:
		return nil
	case executor.NextBlocked:
		return cli.WithCode(cli.ExitUsage, errors.New(next.Message))
	case executor.NextRolledBack:
		return cli.WithCode(cli.ExitRolledBack, errors.New(next.Message))
	case executor.NextFailed:
		return cli.WithCode(cli.ExitRollbackFailed, errors.New(next.Message))
	}
	o.Stage = next.Stage.Number
	return o.runStage(ctx, clients, plan, digest)
}

// runResume finishes the stage a dead run left mid-way.
func (o *applyOptions) runResume(ctx context.Context, clients *kube.Clients, ro executor.Options, namespace string) error {
	d, opts, err := o.deps(ctx, clients, ro.Plan, ro.PlanDigest, namespace)
	if err != nil {
		return err
	}
	opts.Stage, opts.Plan = ro.Stage, ro.Plan
	res, runErr := executor.Resume(ctx, d, opts)
	if res != nil {
		if err := cli.PrintData(o.f.streams.Out, o.Output, res, func(w io.Writer) error { return printApplyResult(w, res) }); err != nil {
			return err
		}
	}
	return applyExitError(runErr)
}
