package probe

import (
	"context"
	"errors"
	"net"
	"os"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// tcpLine is what a tcp probe writes once connected. A plaintext client has
// to send something: Envoy's inbound listener picks a filter chain only
// after its listener filters have seen the first bytes (tls_inspector
// decides the transport protocol, http_inspector the application protocol;
// Istio's inbound listener runs both, pilot/pkg/networking/core/listener.go),
// and under STRICT no chain matches raw_buffer, so Envoy closes the
// connection (https://istio.io/latest/docs/reference/config/security/peer_authentication/).
// "PING\r\n" is neither a TLS record nor an HTTP request line, so both
// inspectors decide at once; a Redis-style server answers it, most others
// ignore it or answer with an error, and the connection stays up.
var tcpLine = []byte("PING\r\n")

// tcpQuiet bounds how long a tcp probe waits for a close after its line:
// STRICT closes as soon as the line arrives, so a connection still open
// after this is one a plaintext chain accepted.
const tcpQuiet = 2 * time.Second

// tcpOnce connects to the probe's address, writes tcpLine and reads:
//   - connection refused, reset, or closed before any byte: Refused;
//   - a byte back, or the connection still open after tcpQuiet: Open;
//   - anything else (a dial timeout, no route): Err, which satisfies no
//     expectation.
func (p *Prober) tcpOnce(ctx context.Context, pr plans.Probe) Observation {
	addr, err := plans.TCPAddress(pr.URL)
	if err != nil {
		return Observation{Err: err}
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	dialer := &net.Dialer{Timeout: timeout}
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		if isRefusal(err) {
			return Observation{Refused: true, Err: err}
		}
		return Observation{Err: err}
	}
	defer func() { _ = c.Close() }()
	quiet := min(timeout, tcpQuiet)
	if err := c.SetDeadline(time.Now().Add(quiet)); err != nil {
		return Observation{Err: err}
	}
	if _, err := c.Write(tcpLine); err != nil {
		if isRefusal(err) {
			return Observation{Refused: true, Err: err}
		}
		return Observation{Err: err}
	}
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return Observation{Open: true}
	case errors.Is(err, os.ErrDeadlineExceeded):
		if ctx.Err() != nil {
			return Observation{Err: ctx.Err()}
		}
		return Observation{Open: true}
	case err != nil && isRefusal(err):
		return Observation{Refused: true, Err: err}
	case err != nil:
		return Observation{Err: err}
	}
	return Observation{Err: errors.New("read nothing and no error")}
}
