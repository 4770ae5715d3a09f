// Package kuberetry retries API calls that failed for a passing reason (429
// Too Many Requests, 5xx, server and client timeouts) with bounded
// exponential backoff and jitter. A 409 Conflict is never retried here: it
// means someone else wrote the object, and the caller must re-read and
// decide again rather than send the same write.
package kuberetry

import (
	"context"
	"errors"
	"net"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// Default is the backoff of Do: 5 attempts, 200ms doubling with up to 50%
// jitter, each wait at most 5s (about 3-5s in all before giving up).
// Tests set a zero Duration to make retries instant.
var Default = wait.Backoff{Steps: 5, Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.5, Cap: 5 * time.Second}

// Retriable reports whether err is worth sending the same call again.
func Retriable(err error) bool {
	if err == nil {
		return false
	}
	if apierrors.IsTooManyRequests(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsUnexpectedServerError(err) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Do calls fn until it succeeds, fails with an error that is not
// Retriable, ctx ends, or Default's steps are used up; it returns fn's last
// error.
func Do(ctx context.Context, fn func() error) error {
	return OnError(ctx, Default, fn)
}

// OnError is Do with an explicit backoff.
func OnError(ctx context.Context, b wait.Backoff, fn func() error) error {
	return retry.OnError(b, func(err error) bool {
		return ctx.Err() == nil && Retriable(err)
	}, fn)
}

// DoUntil is Do for work that must not give up early (a rollback): when ctx
// has a deadline, passing errors are retried until it, not for Default's few
// seconds; without a deadline it is Do.
func DoUntil(ctx context.Context, fn func() error) error {
	if _, ok := ctx.Deadline(); !ok || Default.Duration <= 0 {
		return Do(ctx, fn)
	}
	// Default's start and cap, with steps enough to reach any deadline a
	// rollback is given (at the 5s cap, 2 minutes are about 25 steps).
	b := Default
	b.Steps = 1 << 16
	return OnError(ctx, b, fn)
}
