// Package executor runs one stage of a migration plan as an ordered list of
// steps (kind's Action pattern): pre-flight, baseline, snapshot, apply,
// settle, probes, soak with health gates, then commit or roll back. The
// migration state is written before every change (the snapshot before the
// apply, "soaking" before the soak), so a run that dies mid-way leaves
// enough for the next one to finish or undo it. Any failure after the change
// rolls the stage back from the state alone (Prometheus may be what failed).
package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istio "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/clock"
	"github.com/mtls-migrate/mtls-migrate/internal/events"
	"github.com/mtls-migrate/mtls-migrate/internal/istiometrics"
	"github.com/mtls-migrate/mtls-migrate/internal/istiosync"
	"github.com/mtls-migrate/mtls-migrate/internal/probe"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

// Deps are the executor's clients, all interfaces or fakes-friendly values.
type Deps struct {
	Kube   kubernetes.Interface
	Istio  istio.Interface
	Writer PolicyWriter
	Prom   istiometrics.Querier
	// PromTimeout bounds each Prometheus query.
	PromTimeout time.Duration
	Store       state.Store
	Prober      *probe.Prober
	Events      events.Recorder
	// Clock is the run's one clock: the executor's, the soak's and (when
	// Prober has none) the probes' retries'. nil: the wall clock.
	Clock    clock.Clock
	Progress Progress
	Log      *slog.Logger
	// Sync reads istiod's sync status, so the probes start once every
	// proxy has the change; nil: the settle time is waited instead.
	Sync Propagator
}

// Propagator marks what istiod has sent the proxies of a namespace ("" for
// all) before a change, and waits until every one has acknowledged newer
// configuration (istiosync.Client).
type Propagator interface {
	Mark(ctx context.Context, clk clock.Clock, namespace string) (istiosync.Mark, error)
	Wait(ctx context.Context, clk clock.Clock, m istiosync.Mark, expected int, within, interval time.Duration) (istiosync.Propagation, error)
}

// Options are one run's inputs.
type Options struct {
	Plan       *plans.Plan
	PlanDigest string
	Stage      int
	DryRun     bool
	// Soak overrides the stage's soak when positive.
	Soak   time.Duration
	Force  bool
	Reason string
	// Actor is who runs the stage (user or service account), recorded.
	Actor string
	// AllowExec lets the stage's exec probes run (curl inside the pods they
	// name): off by default, since a plan is a file and exec into a pod is
	// a privilege of its own.
	AllowExec bool
	// RunID identifies this run (the lock's holder identity): the stage's
	// owner in the state, which every state write checks (fencing).
	RunID string
	// Settle is the wait after the apply for the change to reach the
	// proxies, before the probes, when istiod's sync status cannot tell
	// (no Deps.Sync, or it failed).
	Settle time.Duration
	// SyncTimeout bounds the wait for every proxy to acknowledge the
	// change (Deps.Sync); past it the settle time is waited instead.
	SyncTimeout          time.Duration
	GateInterval         time.Duration
	MaxConsecutiveErrors int
	// ProbeWithin bounds each probe's retries.
	ProbeWithin time.Duration
}

// Outcome is how a run ended.
type Outcome string

// Outcomes.
const (
	OutcomeDone           Outcome = "done"
	OutcomeDryRun         Outcome = "dry-run"
	OutcomeRolledBack     Outcome = "rolled-back"
	OutcomeRollbackFailed Outcome = "rollback-failed"
	// OutcomeTakenOver: someone else took the stage over during the run
	// (a person's rollback, a run that resumed it); this run stopped.
	OutcomeTakenOver Outcome = "taken-over"
	// OutcomeNotVerified: the soak passed but the policy was changed by
	// someone else meanwhile; their change was left alone.
	OutcomeNotVerified Outcome = "not-verified"
)

// Result is what a run did, for output.
type Result struct {
	Stage     int     `json:"stage"`
	Namespace string  `json:"namespace"`
	Outcome   Outcome `json:"outcome"`
	Reason    string  `json:"reason,omitempty"`
	Forced    string  `json:"forced,omitempty"`
	// Applied is the PeerAuthentication as the API server returned it after
	// the (dry-run) apply.
	Applied *securityv1.PeerAuthentication `json:"applied,omitempty"`
	// AlsoApplied are the other namespace-wide policies the stage wrote
	// (the plan's policy.alsoUpdates), as the API server returned them.
	AlsoApplied []*securityv1.PeerAuthentication `json:"alsoApplied,omitempty"`
	Baseline    []state.GateValue                `json:"baseline,omitempty"`
	Probes      []state.ProbeResult              `json:"probes,omitempty"`
	Gates       []state.GateValue                `json:"gates,omitempty"`
	Rollback    []rollback.StageReport           `json:"rollback,omitempty"`
	// Propagation is how the change reached the proxies (see
	// state.StageState.Propagation); PropagatedIn the measured time, 0
	// when it was not measured.
	Propagation  string        `json:"propagation,omitempty"`
	PropagatedIn time.Duration `json:"propagatedIn,omitempty"`
	Notes        []string      `json:"notes,omitempty"`
}

// RefusedError says pre-flight refused the stage; nothing was touched.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "refused: " + e.Reason }

// RolledBackError says a probe or gate failed (or the run was interrupted) and
// the stage was rolled back.
type RolledBackError struct{ Reason string }

func (e *RolledBackError) Error() string {
	return "stage rolled back: " + e.Reason
}

// RollbackFailedError says the stage failed and the rollback failed or could
// not be confirmed; a person must look.
type RollbackFailedError struct {
	Reason string
	Err    error
}

func (e *RollbackFailedError) Error() string {
	return fmt.Sprintf("stage failed (%s) and the rollback failed too: %v", e.Reason, e.Err)
}

func (e *RollbackFailedError) Unwrap() error { return e.Err }

func refusef(format string, args ...any) error {
	return &RefusedError{Reason: fmt.Sprintf(format, args...)}
}

// IsRefused reports whether err is a pre-flight refusal.
func IsRefused(err error) bool {
	var r *RefusedError
	return errors.As(err, &r)
}

// Defaults of Options, which the command's flags use too: one source for
// both.
const (
	DefaultSettle               = 5 * time.Second
	DefaultSyncTimeout          = 60 * time.Second
	DefaultGateInterval         = 10 * time.Second
	DefaultMaxConsecutiveErrors = 3
	DefaultProbeWithin          = 30 * time.Second
)

// defaults fills the wall clock when Deps has none and hands the run's
// clock to a Prober without one, so that probes, gates and the executor
// read the same time. The caller's Prober is copied, not changed.
func (d *Deps) defaults() {
	if d.Clock == nil {
		d.Clock = clock.Real{}
	}
	if d.Prober != nil && d.Prober.Clock == nil {
		p := *d.Prober
		p.Clock = d.Clock
		d.Prober = &p
	}
}

func (o *Options) defaults() {
	if o.Settle <= 0 {
		o.Settle = DefaultSettle
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = DefaultSyncTimeout
	}
	if o.GateInterval <= 0 {
		o.GateInterval = DefaultGateInterval
	}
	if o.MaxConsecutiveErrors <= 0 {
		o.MaxConsecutiveErrors = DefaultMaxConsecutiveErrors
	}
	if o.ProbeWithin <= 0 {
		o.ProbeWithin = DefaultProbeWithin
	}
}

// OutcomePending means a resumed stage whose change never happened was put back
// to pending; the next run starts it afresh.
const OutcomePending Outcome = "pending"

func nan() float64 { return math.NaN() }
