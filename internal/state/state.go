// Package state keeps the migration's state where every run (and the
// scheduled Job) can find it: which plan is being executed,
// each stage's phase with times, reasons, gate values and who ran it, and the
// snapshots of the PeerAuthentications taken before each change. The Store
// interface has a ConfigMap implementation (the state sharded over ConfigMaps
// of well under 1 MiB each, optimistic concurrency on each one's
// resourceVersion, never a blind overwrite) and an in-memory one for tests.
package state

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Phase is where a stage stands.
type Phase string

// Phases. A stage is written Applying (with its snapshot) before the policy
// changes and Soaking before the soak, so a run that finds either knows a
// previous run died mid-stage and must finish or roll back.
const (
	Pending     Phase = "pending"
	Applying    Phase = "applying"
	Soaking     Phase = "soaking"
	RollingBack Phase = "rolling-back"
	Done        Phase = "done"
	RolledBack  Phase = "rolled-back"
	// Failed: the rollback failed or could not be verified; a person must look.
	Failed Phase = "failed"
)

// InProgress reports whether a run is (or was, if it died) in the middle of
// the stage.
func (p Phase) InProgress() bool {
	return p == Applying || p == Soaking || p == RollingBack
}

// State is the whole migration state, as every run sees it.
type State struct {
	// Plans holds one record per plan digest ever applied, oldest first;
	// the last is the plan in progress. Older records are kept because their
	// snapshots are what `rollback --plan OLD` restores.
	Plans []PlanRecord `json:"plans"`
	// ProbedAt is, per namespace, when the tool last sent its own plaintext
	// probes there: pre-flight's "plaintext since the plan" check starts
	// after it, so the tool's own probes are not mistaken for a client.
	ProbedAt map[string]time.Time `json:"probedAt,omitempty"`
}

// PlanRecord is the execution record of one plan.
type PlanRecord struct {
	Name      string       `json:"name"`
	Digest    string       `json:"digest"`
	StartedAt time.Time    `json:"startedAt"`
	Stages    []StageState `json:"stages"`
	// Outline is the plan's stages as `apply --next` first saw them, so a
	// run with another plan can say which stages changed (--replan).
	Outline []StageOutline `json:"outline,omitempty"`
}

// StageOutline is one planned stage, enough to compare two plans.
type StageOutline struct {
	Number     int    `json:"number"`
	Namespace  string `json:"namespace"`
	Status     string `json:"status"`
	TargetMode string `json:"targetMode"`
	// Digest covers what the executor acts on: policy, probes, gates, soak.
	Digest string `json:"digest"`
}

// StageState is one stage's execution record.
type StageState struct {
	Number    int    `json:"number"`
	Namespace string `json:"namespace"`
	Phase     Phase  `json:"phase"`
	// Owner is the run that holds the stage (the lock identity of the
	// apply, or of the rollback that took it over): a write from any other
	// run is refused (fencing), so a run that lost the stage cannot
	// overwrite what the new owner decided.
	Owner      string    `json:"owner,omitempty"`
	TargetMode string    `json:"targetMode,omitempty"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	// AppliedBy is the user or service account the API server knows the
	// runner as.
	AppliedBy string `json:"appliedBy,omitempty"`
	// ForceReason is set when a blocked stage (or a pre-flight refusal) was
	// overridden with --force.
	ForceReason string `json:"forceReason,omitempty"`
	// Reason says why the stage ended as it did (the failed gate or probe,
	// the error).
	Reason string `json:"reason,omitempty"`
	// Target is the PeerAuthentication the stage writes whose mode Istio
	// uses; set before the change and completed (UID, resourceVersion)
	// after it.
	Target *Target `json:"target,omitempty"`
	// AlsoTargets are the other pre-existing namespace-wide policies the
	// stage writes (the plan's policy.alsoUpdates), recorded and completed
	// as Target is. Absent in state written before it existed: those
	// stages wrote Target only.
	AlsoTargets []Target `json:"alsoTargets,omitempty"`
	// Snapshot holds every PeerAuthentication of the namespace, whole, as
	// JSON, taken before the change (managedFields dropped).
	Snapshot []json.RawMessage `json:"snapshot,omitempty"`
	// PolicyDigest is the digest (peerauth.PolicyDigest) of the
	// namespace's PeerAuthentications as the stage left them, written with
	// done: a later stage of the plan whose policyDigest is after-stage:N
	// requires exactly these. Absent in state written before it existed.
	PolicyDigest string      `json:"policyDigest,omitempty"`
	Baseline     []GateValue `json:"baseline,omitempty"`
	// Gates are the latest gate values seen during the soak.
	Gates  []GateValue   `json:"gates,omitempty"`
	Probes []ProbeResult `json:"probes,omitempty"`
	// Propagation says how the change reached the proxies: measured from
	// istiod's sync status (the write to the last acknowledgement), or
	// that the settle time was waited instead, and why.
	Propagation string `json:"propagation,omitempty"`
	// History holds the stage's last MaxHistory transitions, oldest first;
	// EarlierTransitions counts those dropped before them, Attempts the
	// runs that started the stage (moves into applying from another phase).
	History            []Transition `json:"history,omitempty"`
	EarlierTransitions int          `json:"earlierTransitions,omitempty"`
	Attempts           int          `json:"attempts,omitempty"`
	// CarriedFrom is set on a stage `apply --next --replan` carried over,
	// done, from an earlier plan's record: the stage it copies. The
	// ConfigMap store keeps the copy's snapshot, gates and the rest once,
	// with the original (see ConfigMapStore).
	CarriedFrom *StageRef `json:"carriedFrom,omitempty"`
}

// StageRef names one stage of one plan record.
type StageRef struct {
	Digest string `json:"digest"`
	Number int    `json:"number"`
}

// MaxHistory is how many transitions a stage record keeps: about the last
// eight runs of the stage; the count of older ones is kept.
const MaxHistory = 32

// AddTransition appends t to the history, keeping the last MaxHistory.
func (st *StageState) AddTransition(t Transition) {
	st.History = append(st.History, t)
	if over := len(st.History) - MaxHistory; over > 0 {
		st.History = append(st.History[:0:0], st.History[over:]...)
		st.EarlierTransitions += over
	}
}

// Target describes the object a stage writes.
type Target struct {
	Name string `json:"name"`
	// Created is true when the stage created the object (rollback deletes
	// it); false when it patched a pre-existing one in place (rollback
	// restores its spec, labels and annotations).
	Created bool `json:"created"`
	// UID and ResourceVersion of the object as the apply left it: rollback
	// deletes only an object with this UID, and treats any other version as
	// a possible change by someone else to re-check before touching.
	UID             string `json:"uid,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
	// Mode is the mTLS mode the stage wrote.
	Mode string `json:"mode"`
}

// Targets returns every object the stage writes, Target first; nil when
// nothing was recorded.
func (st *StageState) Targets() []*Target {
	if st.Target == nil {
		return nil
	}
	out := []*Target{st.Target}
	for i := range st.AlsoTargets {
		out = append(out, &st.AlsoTargets[i])
	}
	return out
}

// GateValue is one gate evaluation as recorded. Numbers are pointers because
// NaN has no JSON form: a nil value means no data.
type GateValue struct {
	Name      string    `json:"name"`
	Verdict   string    `json:"verdict"`
	Value     *float64  `json:"value,omitempty"`
	Threshold *float64  `json:"threshold,omitempty"`
	Samples   *float64  `json:"samples,omitempty"`
	Message   string    `json:"message,omitempty"`
	At        time.Time `json:"at,omitzero"`
}

// ProbeResult is one probe's outcome as recorded.
type ProbeResult struct {
	Name     string    `json:"name"`
	OK       bool      `json:"ok"`
	Observed string    `json:"observed"`
	At       time.Time `json:"at,omitzero"`
}

// Transition is one phase change.
type Transition struct {
	Phase  Phase     `json:"phase"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// Plan returns the record of the plan with digest, or nil.
func (s *State) Plan(digest string) *PlanRecord {
	for i := range s.Plans {
		if s.Plans[i].Digest == digest {
			return &s.Plans[i]
		}
	}
	return nil
}

// Current returns the latest plan record, or nil.
func (s *State) Current() *PlanRecord {
	if len(s.Plans) == 0 {
		return nil
	}
	return &s.Plans[len(s.Plans)-1]
}

// InProgress returns the first stage of any plan that is mid-way, with its
// plan, or nils.
func (s *State) InProgress() (*PlanRecord, *StageState) {
	for i := range s.Plans {
		for j := range s.Plans[i].Stages {
			if s.Plans[i].Stages[j].Phase.InProgress() {
				return &s.Plans[i], &s.Plans[i].Stages[j]
			}
		}
	}
	return nil, nil
}

// EnsurePlan returns the record for digest, appending one when it is new.
func (s *State) EnsurePlan(name, digest string, now time.Time) *PlanRecord {
	if p := s.Plan(digest); p != nil {
		return p
	}
	s.Plans = append(s.Plans, PlanRecord{Name: name, Digest: digest, StartedAt: now.UTC()})
	return &s.Plans[len(s.Plans)-1]
}

// Stage returns the stage numbered n, or nil.
func (p *PlanRecord) Stage(n int) *StageState {
	for i := range p.Stages {
		if p.Stages[i].Number == n {
			return &p.Stages[i]
		}
	}
	return nil
}

// EnsureStage returns the stage numbered n, adding a pending one (kept in
// number order) when it is new.
func (p *PlanRecord) EnsureStage(n int, namespace string) *StageState {
	if st := p.Stage(n); st != nil {
		return st
	}
	i := 0
	for i < len(p.Stages) && p.Stages[i].Number < n {
		i++
	}
	p.Stages = append(p.Stages, StageState{})
	copy(p.Stages[i+1:], p.Stages[i:])
	p.Stages[i] = StageState{Number: n, Namespace: namespace, Phase: Pending}
	return &p.Stages[i]
}

// transitions is the stage's phase machine: from each phase, the phases a
// run may move it to. Everything else is refused, so a bug (or a second
// writer) cannot, say, mark a stage done that is rolling back.
//
//	pending      -> applying                     a run starts (snapshot taken)
//	applying     -> applying                     the change landed / a resume took over
//	applying     -> soaking                      probes passed
//	applying     -> pending                      nothing of ours landed (someone else wrote the policy)
//	soaking      -> applying                     a resume re-verifies from the start
//	soaking      -> done                         the soak passed and the policy is as applied
//	soaking      -> failed                       someone else changed the policy during the soak
//	applying, soaking, done, rolled-back, failed -> rolling-back
//	rolling-back -> rolling-back                 a rollback takes over a dead one's
//	rolling-back -> rolled-back | failed
//	rolled-back  -> failed                       the rollback did not reach the proxies
//	rolled-back  -> pending                      a resume found the change never happened
//	rolled-back, failed -> applying              a person applies the stage again
var transitions = map[Phase][]Phase{
	Pending:     {Applying},
	Applying:    {Applying, Soaking, Pending, RollingBack},
	Soaking:     {Applying, Done, RollingBack, Failed},
	Done:        {RollingBack},
	RollingBack: {RollingBack, RolledBack, Failed},
	RolledBack:  {RollingBack, Failed, Pending, Applying},
	Failed:      {RollingBack, Applying},
}

// IllegalTransitionError says a write would move a stage along no edge of
// the phase machine: the state is not what the writer believed.
type IllegalTransitionError struct {
	Stage    int
	From, To Phase
}

func (e *IllegalTransitionError) Error() string {
	return fmt.Sprintf("stage %d is %s and cannot become %s: the migration state changed under this run (another run or a person), so it writes nothing; check `mtls-migrate status`", e.Stage, e.From, e.To)
}

// FencedError says a run tried to write a stage it no longer holds: another
// run or a person took it over (a rollback during the soak, a run that
// resumed after this one's lock expired). The run must stop and write
// nothing more.
type FencedError struct {
	Stage        int
	Owner, Phase string
	// Want are what the writer believed: its own identity and the phase.
	WantOwner, WantPhase string
}

func (e *FencedError) Error() string {
	owner := e.Owner
	if owner == "" {
		owner = "no run"
	}
	return fmt.Sprintf("stage %d is now %s, held by %s (this run, %s, left it %s): someone else took it over, so this run stops and writes nothing more; see `mtls-migrate status`",
		e.Stage, e.Phase, owner, e.WantOwner, e.WantPhase)
}

// Fence checks that owner still holds the stage in the phase it believes
// (compare-and-set on the state; an empty want skips the phase check, an
// empty owner on either side is a record from before fencing).
func (st *StageState) Fence(owner string, want Phase) error {
	if (st.Owner != "" && owner != "" && st.Owner != owner) || (want != "" && st.Phase != want) {
		return &FencedError{Stage: st.Number, Owner: st.Owner, Phase: string(st.Phase), WantOwner: owner, WantPhase: string(want)}
	}
	return nil
}

// CanMove reports whether the phase machine has an edge from -> to.
func CanMove(from, to Phase) bool {
	if from == "" {
		from = Pending
	}
	for _, p := range transitions[from] {
		if p == to {
			return true
		}
	}
	return false
}

// Move moves the stage to phase along the phase machine and records the
// transition; an illegal one is an *IllegalTransitionError and changes
// nothing. It is the only way product code changes a stage's phase.
func (st *StageState) Move(phase Phase, at time.Time, reason string) error {
	if !CanMove(st.Phase, phase) {
		return &IllegalTransitionError{Stage: st.Number, From: st.Phase, To: phase}
	}
	if phase == Applying && st.Phase != Applying {
		st.Attempts++
	}
	st.Phase = phase
	st.AddTransition(Transition{Phase: phase, At: at.UTC(), Reason: reason})
	switch phase {
	case Applying:
		st.StartedAt = at.UTC()
		st.FinishedAt = time.Time{}
	case Done, RolledBack, Failed:
		st.FinishedAt = at.UTC()
	}
	if reason != "" {
		st.Reason = reason
	}
	return nil
}

// Store reads and updates the state. Update re-reads the state, calls fn and
// writes the result with optimistic concurrency, retrying fn on a conflict,
// so fn must be safe to call more than once and decide from what it is given.
type Store interface {
	Load(ctx context.Context) (*State, error)
	Update(ctx context.Context, fn func(*State) error) error
}

// Float returns a pointer to v, or nil when v is NaN or infinite (no JSON
// form).
func Float(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

func decode(data []byte) (*State, error) {
	s := &State{}
	if len(data) == 0 {
		return s, nil
	}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("decode migration state: %w", err)
	}
	return s, nil
}

func encode(s *State) ([]byte, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode migration state: %w", err)
	}
	return b, nil
}

// DeepCopy returns a copy of the stage record sharing nothing with st.
func (st *StageState) DeepCopy() *StageState {
	b, err := json.Marshal(st)
	if err != nil {
		// Only strings, times, numbers and raw JSON: cannot fail.
		panic(err)
	}
	out := &StageState{}
	if err := json.Unmarshal(b, out); err != nil {
		panic(err)
	}
	return out
}
