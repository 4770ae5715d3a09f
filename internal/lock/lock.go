// Package lock makes sure one runner at a time executes a migration: a
// coordination.k8s.io/v1 Lease in the tool's namespace, read and written
// through client-go's resourcelock.LeaseLock (optimistic concurrency on the
// Lease's resourceVersion), held for the whole run and renewed every third
// of its duration. A Lease whose holder stopped renewing (the runner was
// killed) expires after its duration and is taken over by the next runner.
package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	mmclock "github.com/mtls-migrate/mtls-migrate/internal/clock"

	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
)

// DefaultName is the Lease's name.
const DefaultName = "mtls-migrate-lock"

// HeldError says another runner holds the lock.
type HeldError struct {
	Lease     string
	Holder    string
	Since     time.Time
	RenewedAt time.Time
	ExpiresAt time.Time
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("another run holds the lock (Lease %s): %s since %s, last renewed %s; it expires at %s unless renewed. Wait for it to finish; if that runner is dead the lock is taken over after it expires",
		e.Lease, e.Holder, e.Since.UTC().Format(time.RFC3339), e.RenewedAt.UTC().Format(time.RFC3339), e.ExpiresAt.UTC().Format(time.RFC3339))
}

// Options configure a lock.
type Options struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string // DefaultName when empty
	// Identity names this runner (pod name and a random suffix).
	Identity string
	// TTL is how long the Lease stays valid without renewal.
	TTL time.Duration
	Now func() time.Time
	// Sleep waits d or until ctx is done (nil: real time).
	Sleep func(ctx context.Context, d time.Duration) error
}

// Lock is a held Lease.
type Lock struct {
	o        Options
	ll       *resourcelock.LeaseLock
	mu       sync.Mutex
	acquired time.Time
	// TookOver names the previous holder whose expired Lease was taken.
	TookOver string
	stop     chan struct{}
	done     chan struct{}
}

// Acquire takes the Lease or returns a *HeldError naming its holder.
func Acquire(ctx context.Context, o Options) (*Lock, error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = mmclock.Real{}.Sleep
	}
	if o.TTL < 3*time.Second {
		return nil, fmt.Errorf("lock TTL %s is too short (at least 3s)", o.TTL)
	}
	l := &Lock{o: o, ll: &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: o.Namespace, Name: o.Name},
		Client:     o.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: o.Identity},
		Labels:     map[string]string{peerauth.ManagedByLabel: peerauth.ManagedByValue},
	}}
	// Two attempts: a create or update that loses a race re-reads once, and
	// then the winner is named.
	var err error
	for range 2 {
		if err = l.tryAcquire(ctx); err == nil || !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) {
			break
		}
	}
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		if rec, _, gerr := l.ll.Get(ctx); gerr == nil {
			return nil, l.held(rec)
		}
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Lock) where() string { return l.o.Namespace + "/" + l.o.Name }

func (l *Lock) held(rec *resourcelock.LeaderElectionRecord) *HeldError {
	return &HeldError{Lease: l.where(), Holder: rec.HolderIdentity, Since: rec.AcquireTime.Time, RenewedAt: rec.RenewTime.Time,
		ExpiresAt: rec.RenewTime.Add(time.Duration(rec.LeaseDurationSeconds) * time.Second)}
}

func (l *Lock) record(now time.Time, transitions int) resourcelock.LeaderElectionRecord {
	return resourcelock.LeaderElectionRecord{
		HolderIdentity: l.o.Identity, LeaseDurationSeconds: int((l.o.TTL + time.Second - 1) / time.Second),
		AcquireTime: metav1.NewTime(l.acquired), RenewTime: metav1.NewTime(now), LeaderTransitions: transitions,
	}
}

func (l *Lock) tryAcquire(ctx context.Context) error {
	now := l.o.Now()
	rec, _, err := l.ll.Get(ctx)
	if apierrors.IsNotFound(err) {
		l.acquired = now
		if err := l.ll.Create(ctx, l.record(now, 0)); err != nil {
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("create lock Lease %s: namespace %q does not exist (create it, or pass --state-namespace): %w", l.where(), l.o.Namespace, err)
			}
			if apierrors.IsAlreadyExists(err) {
				return err
			}
			return fmt.Errorf("create lock Lease %s: %w", l.where(), err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("read lock Lease %s: %w", l.where(), err)
	}
	if rec.HolderIdentity != "" && rec.HolderIdentity != l.o.Identity {
		// By the holder's own clock it is alive: it is.
		if now.Before(rec.RenewTime.Add(time.Duration(rec.LeaseDurationSeconds) * time.Second)) {
			return l.held(rec)
		}
		// By the holder's clock it expired, but its clock is not ours (61s
		// of skew would take over a live holder). As client-go's leader
		// election does, trust only what this runner observes: the record
		// must stay unchanged for a whole lease duration of our own clock.
		if rec, err = l.observeUnchanged(ctx, rec); err != nil {
			return err
		}
		now = l.o.Now()
	}
	transitions := rec.LeaderTransitions
	if rec.HolderIdentity != l.o.Identity {
		transitions++
		l.TookOver = rec.HolderIdentity
	}
	l.acquired = now
	// Update sends the resourceVersion read by Get: if another runner took
	// the Lease in between, this is a conflict, never an overwrite.
	if err := l.ll.Update(ctx, l.record(now, transitions)); err != nil {
		if apierrors.IsConflict(err) {
			return err
		}
		return fmt.Errorf("take lock Lease %s: %w", l.where(), err)
	}
	return nil
}

// observeUnchanged watches a Lease that looks expired until it has stayed
// unchanged for its duration by the local clock (observed-time semantics,
// k8s.io/client-go/tools/leaderelection: observedTime + leaseDuration). A
// renewal or a new holder in the meantime means someone is alive: the lock
// is held. It returns the record to take over.
func (l *Lock) observeUnchanged(ctx context.Context, seen *resourcelock.LeaderElectionRecord) (*resourcelock.LeaderElectionRecord, error) {
	observed := l.o.Now()
	wait := time.Duration(seen.LeaseDurationSeconds) * time.Second
	poll := max(wait/10, 200*time.Millisecond)
	for l.o.Now().Sub(observed) < wait {
		if err := l.o.Sleep(ctx, poll); err != nil {
			return nil, fmt.Errorf("wait for the expired lock Lease %s to stay unrenewed: %w", l.where(), err)
		}
		rec, _, err := l.ll.Get(ctx)
		if err != nil {
			return nil, fmt.Errorf("read lock Lease %s: %w", l.where(), err)
		}
		if rec.HolderIdentity != seen.HolderIdentity || !rec.RenewTime.Equal(&seen.RenewTime) || rec.LeaderTransitions != seen.LeaderTransitions {
			if rec.HolderIdentity == "" || rec.HolderIdentity == l.o.Identity {
				return rec, nil // released meanwhile
			}
			return nil, l.held(rec)
		}
	}
	return seen, nil
}

// Renew extends the Lease once. A conflict means someone else wrote it:
// the lock is lost.
func (l *Lock) Renew(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	rec, _, err := l.ll.Get(ctx)
	if err != nil {
		return fmt.Errorf("renew lock Lease %s: %w", l.where(), err)
	}
	if rec.HolderIdentity != l.o.Identity {
		return &LostError{Lease: l.where(), Holder: rec.HolderIdentity}
	}
	if err := l.ll.Update(ctx, l.record(l.o.Now(), rec.LeaderTransitions)); err != nil {
		if apierrors.IsConflict(err) {
			return &LostError{Lease: l.where(), Holder: "another runner (conflicting write)"}
		}
		return fmt.Errorf("renew lock Lease %s: %w", l.where(), err)
	}
	return nil
}

// LostError says the Lease was taken by someone else while held.
type LostError struct{ Lease, Holder string }

func (e *LostError) Error() string {
	return fmt.Sprintf("lost the lock (Lease %s): now held by %s", e.Lease, e.Holder)
}

// KeepRenewed renews the Lease every TTL/3 until Release, whatever happens
// to ctx: a run interrupted by SIGTERM still rolls back, and must hold the
// lock until it is done. When it cannot renew before the Lease would expire
// (or someone else took it), it calls onLost once: the caller must stop
// changing things.
func (l *Lock) KeepRenewed(ctx context.Context, onLost func(error)) {
	ctx = context.WithoutCancel(ctx)
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(l.done)
		every := l.o.TTL / 3
		lastOK := l.o.Now()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(ctx, every)
			err := l.Renew(rctx)
			cancel()
			if err == nil {
				lastOK = l.o.Now()
				continue
			}
			var lost *LostError
			// A transient failure is retried at the next tick while the
			// Lease is still ours; one tick before it expires, give up.
			if errors.As(err, &lost) || l.o.Now().Add(every).After(lastOK.Add(l.o.TTL)) {
				onLost(err)
				return
			}
		}
	}()
}

// Release stops renewing and gives the Lease up (holder cleared), so the
// next run need not wait for it to expire.
func (l *Lock) Release(ctx context.Context) error {
	if l.stop != nil {
		close(l.stop)
		<-l.done
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	rec, _, err := l.ll.Get(ctx)
	if err != nil {
		return fmt.Errorf("release lock Lease %s: %w", l.where(), err)
	}
	if rec.HolderIdentity != l.o.Identity {
		return nil
	}
	rel := resourcelock.LeaderElectionRecord{LeaseDurationSeconds: 1, RenewTime: metav1.NewTime(l.o.Now()), AcquireTime: metav1.NewTime(l.o.Now()), LeaderTransitions: rec.LeaderTransitions}
	if err := l.ll.Update(ctx, rel); err != nil {
		return fmt.Errorf("release lock Lease %s: %w", l.where(), err)
	}
	return nil
}

// Since is when this runner acquired the lock.
func (l *Lock) Since() time.Time { return l.acquired }
