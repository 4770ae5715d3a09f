package executor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/clock"
	"github.com/mtls-migrate/mtls-migrate/internal/istiosync"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
)

type fakeSync struct {
	err   error
	took  time.Duration
	calls int
	marks int
	ns    string
	since time.Time
}

func (f *fakeSync) Mark(_ context.Context, clk clock.Clock, ns string) (istiosync.Mark, error) {
	f.marks++
	return istiosync.Mark{Namespace: ns, At: clk.Now(), Sent: map[string]string{}}, nil
}

func (f *fakeSync) Wait(_ context.Context, _ clock.Clock, m istiosync.Mark, expected int, _, _ time.Duration) (istiosync.Propagation, error) {
	f.calls++
	f.ns, f.since = m.Namespace, m.At
	return istiosync.Propagation{Proxies: expected, Expected: expected, Took: f.took}, f.err
}

// TestProbesWaitForThePropagation: with istiod's sync status the probes
// start when every proxy has the change, and the measured time goes to
// the output and the state; without it, or when it cannot confirm, the
// settle time is waited and the result says so.
func TestProbesWaitForThePropagation(t *testing.T) {
	tests := []struct {
		name     string
		sync     *fakeSync
		want     string
		measured time.Duration
	}{
		{"no istiod", nil, "not measured (istiod's sync status is not read: no --istiod-url)", 0},
		{"every proxy acked", &fakeSync{took: 1200 * time.Millisecond}, "proxies acknowledged the change 1.2s after the write", 1200 * time.Millisecond},
		{"istiod cannot confirm", &fakeSync{err: &istiosync.NotPropagatedError{Waiting: []string{"cart-1.cart"}, Seen: 1, Want: 1, After: time.Minute}}, "not measured (istiod's sync status could not confirm it: after 1m0s, 1 of 1 proxies", 0},
		{"istiod unreachable", &fakeSync{err: errors.New("istiod sync status at http://istiod:15014: connection refused")}, "connection refused): waited the settle time", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			p := testPlan(true, policyDigest(existingPolicy()))
			res, err, _ := e.run(p, func(d *Deps, o *Options) {
				if tt.sync != nil {
					d.Sync = tt.sync
				}
				o.Settle = 7 * time.Second
			})
			if err != nil || res.Outcome != OutcomeDone {
				t.Fatalf("want done, got %v", err)
			}
			if !strings.Contains(res.Propagation, tt.want) || res.PropagatedIn != tt.measured {
				t.Errorf("propagation %q (%s), want %q (%s)", res.Propagation, res.PropagatedIn, tt.want, tt.measured)
			}
			if tt.sync != nil && (tt.sync.calls != 1 || tt.sync.marks != 1 || tt.sync.ns != "cart" || tt.sync.since.IsZero()) {
				t.Errorf("sync asked %d times for %q since %s", tt.sync.calls, tt.sync.ns, tt.sync.since)
			}
			s, _ := e.store.Load(context.Background())
			ss := s.Plan("sha256:p").Stage(1)
			if ss == nil || ss.Phase != state.Done || ss.Propagation != res.Propagation {
				t.Errorf("state %+v: the propagation is not recorded", ss)
			}
		})
	}
}
