package executor

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// NextKind is what `apply --next` should do.
type NextKind string

// Next kinds.
const (
	// NextRun: run Next.Stage.
	NextRun NextKind = "run"
	// NextAllDone: every stage is done.
	NextAllDone NextKind = "all-done"
	// NextBlocked: the next stage is blocked by the plan; a person must
	// change something (fix and re-plan, or force it by hand).
	NextBlocked NextKind = "blocked"
	// NextRolledBack: the next stage was rolled back by an earlier run; it is
	// not retried on a schedule.
	NextRolledBack NextKind = "rolled-back"
	// NextFailed: the next stage's rollback failed; a person must look.
	NextFailed NextKind = "failed"
)

// Next is the decision for `apply --next`.
type Next struct {
	Kind    NextKind
	Stage   *plans.Stage
	Message string
}

// PickNext decides, from the state and the plan (digest), which stage
// `apply --next` runs: the first, in stage order, that is not done. It does
// not skip: later stages may depend on earlier ones (a client namespace
// before its servers), so a stage that cannot run stops the sequence.
func PickNext(s *state.State, p *plans.Plan, digest string) Next {
	rec := s.Plan(digest)
	done := 0
	for i := range p.Stages {
		st := &p.Stages[i]
		var ss *state.StageState
		if rec != nil {
			ss = rec.Stage(st.Number)
		}
		phase := state.Pending
		if ss != nil {
			phase = ss.Phase
		}
		switch phase {
		case state.Done:
			done++
			continue
		case state.RolledBack:
			return Next{Kind: NextRolledBack, Stage: st, Message: fmt.Sprintf("next stage %d (%s) was rolled back at %s: %s; it is not retried on a schedule: fix the cause, re-run plan and review it, or apply it by hand with `apply --stage %d`",
				st.Number, st.Namespace, ss.FinishedAt.UTC().Format(time.RFC3339), ss.Reason, st.Number)}
		case state.Failed:
			return Next{Kind: NextFailed, Stage: st, Message: fmt.Sprintf("next stage %d (%s) failed and its rollback failed too: %s; a person must look (`mtls-migrate rollback --stage %d` retries from the snapshot)",
				st.Number, st.Namespace, ss.Reason, st.Number)}
		}
		if st.Status == plans.StatusBlocked {
			var why []string
			for _, rk := range st.Risks {
				if rk.Severity == plans.SeverityBlock {
					why = append(why, rk.Code+": "+rk.Message)
				}
			}
			return Next{Kind: NextBlocked, Stage: st, Message: fmt.Sprintf("next stage %d (%s) is blocked: %s; fix that, re-run plan and ship the reviewed plan, or apply it by hand with `apply --stage %d --force --reason \"...\"`",
				st.Number, st.Namespace, strings.Join(why, "; "), st.Number)}
		}
		return Next{Kind: NextRun, Stage: st, Message: fmt.Sprintf("next stage %d (%s) → %s", st.Number, st.Namespace, st.TargetMode)}
	}
	return Next{Kind: NextAllDone, Message: fmt.Sprintf("all %d stages of plan %q are done", done, p.Metadata.Name)}
}

// Outline summarises the plan's stages for the state.
func Outline(p *plans.Plan) []state.StageOutline {
	out := make([]state.StageOutline, 0, len(p.Stages))
	for _, st := range p.Stages {
		b, _ := json.Marshal(struct {
			Policy plans.Policy
			Probes []plans.Probe
			Gates  []plans.Gate
			Soak   plans.Duration
			Digest string
		}{st.Policy, st.Probes, st.Gates, st.Soak, st.PolicyDigest})
		sum := sha256.Sum256(b)
		out = append(out, state.StageOutline{Number: st.Number, Namespace: st.Namespace, Status: string(st.Status),
			TargetMode: string(st.TargetMode), Digest: hex.EncodeToString(sum[:8])})
	}
	return out
}

// DiffOutlines says, stage by stage, how the new plan differs from the old.
// An old record without an outline (made by `apply --stage`) is compared by
// its stages' namespaces and target modes.
func DiffOutlines(old *state.PlanRecord, newOutline []state.StageOutline) []string {
	before := map[int]state.StageOutline{}
	for _, o := range old.Outline {
		before[o.Number] = o
	}
	if len(old.Outline) == 0 {
		for _, st := range old.Stages {
			before[st.Number] = state.StageOutline{Number: st.Number, Namespace: st.Namespace, TargetMode: st.TargetMode}
		}
	}
	var out []string
	seen := map[int]bool{}
	for _, n := range newOutline {
		seen[n.Number] = true
		o, ok := before[n.Number]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("stage %d (%s): added", n.Number, n.Namespace))
		case o.Namespace != n.Namespace:
			out = append(out, fmt.Sprintf("stage %d: namespace %s → %s", n.Number, o.Namespace, n.Namespace))
		default:
			var what []string
			if o.TargetMode != "" && o.TargetMode != n.TargetMode {
				what = append(what, fmt.Sprintf("target %s → %s", o.TargetMode, n.TargetMode))
			}
			if o.Status != "" && o.Status != n.Status {
				what = append(what, fmt.Sprintf("status %s → %s", o.Status, n.Status))
			}
			if o.Digest != "" && o.Digest != n.Digest {
				what = append(what, "policy, probes, gates or soak changed")
			}
			if len(what) > 0 {
				out = append(out, fmt.Sprintf("stage %d (%s): %s", n.Number, n.Namespace, strings.Join(what, ", ")))
			}
		}
	}
	for _, o := range old.Outline {
		if !seen[o.Number] {
			out = append(out, fmt.Sprintf("stage %d (%s): removed", o.Number, o.Namespace))
		}
	}
	if len(out) == 0 {
		out = append(out, "no stage changed what it does (metadata or evidence only)")
	}
	return out
}

// CarryOver records, in the new plan's record, the stages of the old one
// that are done and that the new plan has in the same namespace with the
// same target mode: they are not applied again, and their snapshots stay
// with them for a rollback under the new plan. Each copy names its
// original (CarriedFrom), so the ConfigMap store does not keep it twice.
func CarryOver(old, rec *state.PlanRecord, p *plans.Plan, now time.Time) []string {
	var notes []string
	for _, ost := range old.Stages {
		if ost.Phase != state.Done {
			continue
		}
		for _, st := range p.Stages {
			if st.Namespace != ost.Namespace || string(st.TargetMode) != ost.TargetMode {
				continue
			}
			if cur := rec.Stage(st.Number); cur != nil && cur.Phase != state.Pending {
				continue
			}
			ns := rec.EnsureStage(st.Number, st.Namespace)
			hist := ns.History
			*ns = ost
			ns.Number = st.Number
			// The record names the stage it copies: the state store keeps
			// the snapshot and the rest once, not once per plan.
			ns.CarriedFrom = &state.StageRef{Digest: old.Digest, Number: ost.Number}
			ns.History, ns.EarlierTransitions = hist, 0
			ns.AddTransition(state.Transition{Phase: state.Done, At: now.UTC(), Reason: fmt.Sprintf("done as stage %d of plan %s (%s)", ost.Number, old.Name, old.Digest)})
			notes = append(notes, fmt.Sprintf("stage %d (%s): already done under the previous plan", st.Number, st.Namespace))
		}
	}
	return notes
}
