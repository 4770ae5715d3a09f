// Package probe makes the stage's probes: HTTP requests from the tool's own
// process (from a sidecar-less pod that is exactly a plaintext client) and
// commands such as curl run in an existing pod through the API server's exec
// subresource. Under STRICT, Envoy's inbound listener has no filter chain
// for plaintext and closes the connection: a plaintext client sees the
// connection refused, reset, or closed before any response. That is what
// `expect: {refused: true}` means. For ports that do not speak HTTP, a tcp
// probe opens a plaintext connection and writes a line: STRICT closes it,
// PERMISSIVE passes it to the application, which answers or keeps it open
// (`expect: {open: true}`).
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/clock"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// Observation is what one attempt saw.
type Observation struct {
	// Refused: the connection was refused, reset or closed before a response.
	Refused bool
	// Status is the HTTP status when a response came (0 otherwise).
	Status int
	// Open: a tcp probe's connection was accepted and answered, or stayed
	// open, after its line: a plaintext chain took it.
	Open bool
	// Err is any other failure (timeout, DNS, exec error): neither an answer
	// nor a refusal, so it satisfies no expectation.
	Err error
}

func (o Observation) String() string {
	switch {
	case o.Status != 0:
		return fmt.Sprintf("HTTP %d", o.Status)
	case o.Open:
		return "open"
	case o.Refused:
		return "refused"
	case o.Err != nil:
		return "error: " + o.Err.Error()
	}
	return "nothing"
}

// Satisfied reports whether o meets the expectation.
func Satisfied(e plans.Expect, o Observation) bool {
	switch {
	case e.Refused:
		return o.Refused
	case e.Open:
		return o.Open
	}
	return e.Status != 0 && o.Status == e.Status
}

// Answered reports whether the target took the plaintext connection: any
// HTTP response, or a tcp probe's connection that stayed open. That is
// what a refused-probe must see before the change (and after a rollback)
// to prove anything.
func Answered(o Observation) bool { return o.Status != 0 || o.Open }

// isRefusal classifies a transport error as the refusal a plaintext client
// gets from a STRICT listener.
func isRefusal(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		// net/http reports a connection closed before any response byte as
		// this unexported error (errServerClosedIdle in net/http/transport.go)
		// when the close races the request write.
		strings.Contains(err.Error(), "server closed idle connection")
}

// Execer runs a command in a pod's container and returns its standard
// output and exit code (a non-zero exit is not an error).
type Execer interface {
	Exec(ctx context.Context, namespace, pod, container string, command []string) (stdout string, exitCode int, err error)
}

// Prober makes probes.
type Prober struct {
	// Timeout bounds each attempt.
	Timeout time.Duration
	// Interval between attempts when retrying.
	Interval time.Duration
	// Exec runs exec probes; nil makes them an error.
	Exec Execer
	// Namespace is where exec probes' pods are when the probe names only a pod.
	Namespace string
	// Clock times the retries: their deadline and the waits between
	// attempts (nil: the wall clock).
	Clock clock.Clock
}

// Once makes one attempt.
func (p *Prober) Once(ctx context.Context, pr plans.Probe) Observation {
	switch pr.Kind {
	case plans.ProbeHTTP:
		return p.httpOnce(ctx, pr)
	case plans.ProbeExec:
		return p.execOnce(ctx, pr)
	case plans.ProbeTCP:
		return p.tcpOnce(ctx, pr)
	}
	return Observation{Err: fmt.Errorf("unknown probe kind %q", pr.Kind)}
}

// Result is a probe's outcome after retries.
type Result struct {
	Name     string
	OK       bool
	Observed Observation
	Attempts int
}

// Until repeats the probe until want(observation) holds or within has
// passed (the change takes a moment to reach every proxy), at least once.
func (p *Prober) Until(ctx context.Context, pr plans.Probe, want func(Observation) bool, within time.Duration) Result {
	clk := p.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	interval := p.Interval
	if interval <= 0 {
		interval = time.Second
	}
	deadline := clk.Now().Add(within)
	r := Result{Name: pr.Name}
	for {
		r.Attempts++
		r.Observed = p.Once(ctx, pr)
		if want(r.Observed) {
			r.OK = true
			return r
		}
		if !clk.Now().Before(deadline) || ctx.Err() != nil {
			return r
		}
		if err := clk.Sleep(ctx, interval); err != nil {
			return r
		}
	}
}

// Expect repeats the probe until its plan expectation holds.
func (p *Prober) Expect(ctx context.Context, pr plans.Probe, within time.Duration) Result {
	return p.Until(ctx, pr, func(o Observation) bool { return Satisfied(pr.Expect, o) }, within)
}
