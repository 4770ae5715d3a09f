package lock

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }
func (c *clock) Sleep(_ context.Context, d time.Duration) error {
	c.now = c.now.Add(d)
	return nil
}

func opts(c *fake.Clientset, id string, clk *clock) Options {
	return Options{Client: c, Namespace: "mtls-migrate", Identity: id, TTL: 60 * time.Second, Now: clk.Now, Sleep: clk.Sleep}
}

func TestSecondRunnerIsToldWhoHoldsTheLockAndSinceWhen(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	clk := &clock{now: time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)}
	a, err := Acquire(ctx, opts(c, "job-a", clk))
	if err != nil {
		t.Fatal(err)
	}
	clk.now = clk.now.Add(20 * time.Second)
	_, err = Acquire(ctx, opts(c, "job-b", clk))
	var held *HeldError
	if !errors.As(err, &held) {
		t.Fatalf("want HeldError, got %v", err)
	}
	if held.Holder != "job-a" || !held.Since.Equal(a.Since()) || !strings.Contains(err.Error(), "job-a since 2026-03-04T10:00:00Z") {
		t.Fatalf("message does not name holder and time: %v", err)
	}
}

func TestExpiredLeaseOfDeadRunnerIsTakenOver(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	clk := &clock{now: time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)}
	if _, err := Acquire(ctx, opts(c, "dead", clk)); err != nil {
		t.Fatal(err)
	}
	clk.now = clk.now.Add(61 * time.Second) // never renewed
	b, err := Acquire(ctx, opts(c, "job-b", clk))
	if err != nil {
		t.Fatalf("expired lease not taken over: %v", err)
	}
	if b.TookOver != "dead" {
		t.Fatalf("TookOver = %q", b.TookOver)
	}
	lease, _ := c.CoordinationV1().Leases("mtls-migrate").Get(ctx, DefaultName, metav1.GetOptions{})
	if *lease.Spec.HolderIdentity != "job-b" || *lease.Spec.LeaseTransitions != 1 {
		t.Fatalf("lease %+v", lease.Spec)
	}
	// The dead runner, if it woke up, has lost it.
	var lost *LostError
	dead := &Lock{o: opts(c, "dead", clk)}
	dead.ll = b.ll // same lease object
	dead.o.Identity = "dead"
	if err := dead.Renew(ctx); !errors.As(err, &lost) {
		t.Fatalf("renew by the old holder: %v", err)
	}
}

func TestReleasedLeaseIsFreeAtOnce(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	clk := &clock{now: time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)}
	a, err := Acquire(ctx, opts(c, "job-a", clk))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(ctx, opts(c, "job-b", clk)); err != nil {
		t.Fatalf("released lease not free: %v", err)
	}
}

func TestRaceOnTakeOverIsAConflictNotAnOverwrite(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	clk := &clock{now: time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)}
	if _, err := Acquire(ctx, opts(c, "dead", clk)); err != nil {
		t.Fatal(err)
	}
	clk.now = clk.now.Add(2 * time.Minute)
	// Between our read and our write, job-c takes the lease.
	var raced atomic.Bool
	c.PrependReactor("update", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if raced.CompareAndSwap(false, true) {
			l := a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
			id := "job-c"
			l.Spec.HolderIdentity = &id
			if err := c.Tracker().Update(coordinationv1.SchemeGroupVersion.WithResource("leases"), l, l.Namespace); err != nil {
				t.Fatal(err)
			}
			return true, nil, apierrors.NewConflict(coordinationv1.Resource("leases"), DefaultName, errors.New("changed"))
		}
		return false, nil, nil
	})
	_, err := Acquire(ctx, opts(c, "job-b", clk))
	var held *HeldError
	if !errors.As(err, &held) || held.Holder != "job-c" {
		t.Fatalf("want HeldError naming job-c, got %v", err)
	}
}

func TestKeepRenewedReportsLossWhenRenewalsFail(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	l, err := Acquire(ctx, Options{Client: c, Namespace: "mtls-migrate", Identity: "a", TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.PrependReactor("get", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("down")
	})
	lost := make(chan error, 1)
	l.KeepRenewed(ctx, func(err error) { lost <- err })
	select {
	case err := <-lost:
		if !strings.Contains(err.Error(), "renew") {
			t.Fatalf("loss reason %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("loss not reported")
	}
}

// TestLiveHolderWithASkewedClockIsNotTakenOver: the holder's clock runs 61s
// behind ours, so its renewals look expired by our clock; it renews all the
// same, and observed-time semantics see the record change: held, not taken.
func TestLiveHolderWithASkewedClockIsNotTakenOver(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	ours := &clock{now: time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)}
	theirs := &clock{now: ours.now.Add(-61 * time.Second)}
	holder, err := Acquire(ctx, opts(c, "skewed", theirs))
	if err != nil {
		t.Fatal(err)
	}
	// The holder renews every 20s of (its) time; our Sleep advances both.
	last := ours.now
	o := opts(c, "job-b", ours)
	o.Sleep = func(ctx context.Context, d time.Duration) error {
		ours.now, theirs.now = ours.now.Add(d), theirs.now.Add(d)
		if ours.now.Sub(last) >= 20*time.Second {
			last = ours.now
			if err := holder.Renew(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	}
	_, err = Acquire(ctx, o)
	var held *HeldError
	if !errors.As(err, &held) || held.Holder != "skewed" {
		t.Fatalf("a live holder with a skewed clock was taken over: %v", err)
	}
}

// TestRenewalGoesOnAfterTheRunsContextIsCancelled: a SIGTERM cancels the
// run's context; the rollback that follows still holds the lock.
func TestRenewalGoesOnAfterTheRunsContextIsCancelled(t *testing.T) {
	c := fake.NewClientset()
	l, err := Acquire(context.Background(), Options{Client: c, Namespace: "mtls-migrate", Identity: "a", TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var renewals atomic.Int32
	c.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		renewals.Add(1)
		return false, nil, nil
	})
	l.KeepRenewed(ctx, func(err error) { t.Errorf("lost: %v", err) })
	cancel()
	time.Sleep(2500 * time.Millisecond) // TTL/3 = 1s: two renewals due
	if n := renewals.Load(); n < 2 {
		t.Fatalf("%d renewals after the cancel, want at least 2", n)
	}
	if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
}
