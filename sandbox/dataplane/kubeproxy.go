package dataplane

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// serveKubeProxy gives a Service its own address for clients outside the
// process (probes, curl): each connection is forwarded to a random endpoint,
// like kube-proxy's DNAT. Unlike DNAT, the proxy has already accepted the
// connection, so a refused or reset upstream shows up as a reset here.
func (d *DataPlane) serveKubeProxy(s *Service, sp scenario.ServicePort, ln net.Listener) {
	d.acceptLoop(ln, func(c net.Conn) { d.proxy(s, sp, c) })
}

func (d *DataPlane) proxy(s *Service, sp scenario.ServicePort, c net.Conn) {
	ep := pickEndpoint(s)
	if ep == nil {
		reset(c)
		return
	}
	up, err := net.DialTimeout("tcp", net.JoinHostPort(ep.IP, fmt.Sprint(sp.Target())), RequestTimeout)
	if err != nil {
		reset(c)
		return
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	_ = up.SetDeadline(time.Now().Add(30 * time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, err = io.Copy(c, up)
	if errors.Is(err, syscall.ECONNRESET) {
		reset(c)
		_ = up.Close()
		<-done
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	<-done
	_ = up.Close()
	_ = c.Close()
}
