package executor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	apisecurity "istio.io/api/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/state"
)

// answeringExec answers every plaintext probe once the clock passes after:
// plaintext accepted again although the policy is unchanged.
type answeringExec struct {
	fakeExec
	after time.Time
}

func (a *answeringExec) Exec(ctx context.Context, ns, pod, c string, cmd []string) (string, int, error) {
	if a.e.clock.now.After(a.after) {
		return "200", 0, nil
	}
	return a.fakeExec.Exec(ctx, ns, pod, c, cmd)
}

// TestDoneIsWrittenOnlyWhenThePolicyIsStillAsApplied: a change to the
// stage's policy during the soak (a GitOps self-heal, a colleague) means
// the stage is not done; the tool names who changed it and leaves their
// change alone. Plaintext accepted again at the end rolls back.
func TestDoneIsWrittenOnlyWhenThePolicyIsStillAsApplied(t *testing.T) {
	tests := []struct {
		name       string
		duringSoak func(*env)
		exec       func(*env) *answeringExec
		wantErr    any
		wantPhase  state.Phase
		wantReason []string
		wantMode   apisecurity.PeerAuthentication_MutualTLS_Mode
		gone       bool
	}{
		{
			name: "set back to PERMISSIVE by a GitOps controller",
			duringSoak: func(e *env) {
				pa := e.policy()
				pa.Spec.Mtls.Mode = apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE
				pa.ResourceVersion = "99"
				at := metav1.NewTime(e.clock.now)
				pa.ManagedFields = append(pa.ManagedFields, metav1.ManagedFieldsEntry{Manager: "argocd-controller", Operation: metav1.ManagedFieldsOperationUpdate, Time: &at})
				if _, err := e.istio.SecurityV1().PeerAuthentications("cart").Update(context.Background(), pa, metav1.UpdateOptions{}); err != nil {
					e.t.Fatal(err)
				}
			},
			wantErr: new(*NotVerifiedError), wantPhase: state.Failed,
			wantReason: []string{"changed during the soak", "mode PERMISSIVE", "argocd-controller", "left alone"},
			wantMode:   apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE,
		},
		{
			name: "deleted during the soak",
			duringSoak: func(e *env) {
				if err := e.istio.SecurityV1().PeerAuthentications("cart").Delete(context.Background(), "default", metav1.DeleteOptions{}); err != nil {
					e.t.Fatal(err)
				}
			},
			wantErr: new(*NotVerifiedError), wantPhase: state.Failed, wantReason: []string{"was deleted during the soak"}, gone: true,
		},
		{
			name: "policy intact, plaintext answered again after the soak",
			exec: func(e *env) *answeringExec {
				return &answeringExec{fakeExec: fakeExec{e: e}, after: t0.Add(50 * time.Second)}
			},
			wantErr: new(*RolledBackError), wantPhase: state.RolledBack, wantReason: []string{"after the soak", "plaintext is accepted again"},
			wantMode: apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE,
		},
		{
			name: "untouched: done", wantPhase: state.Done, wantMode: apisecurity.PeerAuthentication_MutualTLS_STRICT,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			ticks := 0
			e.prom = func(q string, ts time.Time) (model.Value, error) {
				if q == "success" && e.phase() == state.Soaking {
					if ticks++; ticks == 2 && tt.duringSoak != nil {
						tt.duringSoak(e)
					}
				}
				return healthyProm(q, ts)
			}
			res, err, _ := e.run(testPlan(true, policyDigest(existingPolicy())), func(d *Deps, _ *Options) {
				if tt.exec != nil {
					d.Prober.Exec = tt.exec(e)
				}
			})
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
			} else if !errors.As(err, tt.wantErr) {
				t.Fatalf("err = %v, want %T", err, tt.wantErr)
			}
			if got := e.phase(); got != tt.wantPhase {
				t.Errorf("phase %s, want %s", got, tt.wantPhase)
			}
			for _, w := range tt.wantReason {
				if !strings.Contains(res.Reason, w) {
					t.Errorf("reason %q lacks %q", res.Reason, w)
				}
			}
			pa := e.policy()
			if tt.gone {
				if pa != nil {
					t.Errorf("the tool recreated the policy someone deleted: %+v", pa)
				}
				return
			}
			if pa == nil || pa.Spec.GetMtls().GetMode() != tt.wantMode {
				t.Errorf("policy %+v, want mode %s", pa, tt.wantMode)
			}
		})
	}
}
