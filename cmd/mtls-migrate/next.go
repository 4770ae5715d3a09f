package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mtls-migrate/mtls-migrate/executor"
	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/kube"
	"github.com/mtls-migrate/mtls-migrate/internal/lock"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/internal/window"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

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

// runLock is the run's hold on the Lease: its identity is the stage
// owner every state write is fenced with.
type runLock struct {
	ctx      context.Context
	release  func()
	identity string
}

// takeLock takes the Lease for the run and keeps it renewed until release,
// even while the run's own context is cancelled (a SIGTERM rollback must
// not lose the lock mid-way); losing it cancels the run (the executor then
// rolls the stage back from the state).
func takeLock(ctx context.Context, clients *kube.Clients, namespace string, ttl time.Duration, say func(string)) (*runLock, error) {
	id := runnerIdentity()
	l, err := lock.Acquire(ctx, lock.Options{Client: clients.Kube, Namespace: namespace, Identity: id, TTL: ttl})
	var held *lock.HeldError
	if errors.As(err, &held) {
		return nil, cli.WithCode(cli.ExitLocked, err)
	}
	if err != nil {
		return nil, err
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
	return &runLock{ctx: ctx, release: release, identity: id}, nil
}

// acquireLock takes the run's lock and records its identity for the
// executor's fencing.
func (o *applyOptions) acquireLock(ctx context.Context, clients *kube.Clients, say func(string)) (context.Context, func(), error) {
	rl, err := takeLock(ctx, clients, o.StateNamespace, o.LockTTL, say)
	if err != nil {
		return nil, nil, err
	}
	o.runID = rl.identity
	return rl.ctx, rl.release, nil
}

// runNext is `apply --next`: the executor decides (window, resume, replan,
// which stage); the command gives it the lock, the stage runner and the exit
// codes.
func (o *applyOptions) runNext(ctx context.Context) error {
	say := func(s string) { fmt.Fprintln(o.f.streams.Out, s) }
	var win *window.Window
	if o.AllowedWindow != "" {
		win, _ = window.Parse(o.AllowedWindow) // validated
	}
	loaded, clients, err := o.f.loadPlan(ctx, o.PlanPath)
	if err != nil {
		return err
	}
	if err := o.checkPinned(loaded); err != nil {
		return err
	}
	if clients == nil {
		if clients, err = o.f.kubeClients(); err != nil {
			return err
		}
	}
	out, runErr := executor.ApplyNext(ctx, executor.NextDeps{
		Store:  state.NewConfigMapStore(clients.Kube, o.StateNamespace),
		Lock:   func(ctx context.Context) (context.Context, func(), error) { return o.acquireLock(ctx, clients, say) },
		Stages: &stageRunner{o: o, clients: clients},
		Now:    o.now,
		Say:    say,
	}, executor.NextOptions{Plan: loaded.Plan, Digest: loaded.Digest, Window: win, Replan: o.Replan})
	var changed *executor.PlanChangedError
	if errors.As(runErr, &changed) {
		return cli.WithCode(cli.ExitUsage, runErr)
	}
	if out == nil {
		return runErr
	}
	switch out.Kind {
	case executor.NextBlocked:
		return cli.WithCode(cli.ExitUsage, errors.New(out.Message))
	case executor.NextRolledBack:
		return cli.WithCode(cli.ExitRolledBack, errors.New(out.Message))
	case executor.NextFailed:
		return cli.WithCode(cli.ExitRollbackFailed, errors.New(out.Message))
	case executor.NextRun:
		return o.printResult(out.Result, runErr)
	}
	return runErr
}

// stageRunner runs the stage ApplyNext picked with this command's clients
// and flags.
type stageRunner struct {
	o       *applyOptions
	clients *kube.Clients
}

func (s *stageRunner) Run(ctx context.Context, plan *plans.Plan, digest string, n int) (*executor.Result, error) {
	stage, err := plan.Stage(n)
	if err != nil {
		return nil, err
	}
	d, opts, err := s.o.deps(ctx, s.clients, plan, digest, stage.Namespace)
	if err != nil {
		return nil, err
	}
	opts.Stage = n
	return executor.Run(ctx, d, opts)
}

func (s *stageRunner) Resume(ctx context.Context, plan *plans.Plan, digest string, n int, namespace string) (*executor.Result, error) {
	d, opts, err := s.o.deps(ctx, s.clients, plan, digest, namespace)
	if err != nil {
		return nil, err
	}
	opts.Stage = n
	return executor.Resume(ctx, d, opts)
}
