package probe

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// tcpServer accepts connections and hands each to serve.
func tcpServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return l.Addr().String()
}

// TestTCPProbe: what each server behaviour reads as. STRICT is the server
// that closes or resets after the probe's line; PERMISSIVE passes the line
// to the application, which answers or keeps the connection open.
func TestTCPProbe(t *testing.T) {
	pong := tcpServer(t, func(c net.Conn) {
		defer func() { _ = c.Close() }()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && line == "PING\r\n" {
			_, _ = c.Write([]byte("+PONG\r\n"))
		}
		time.Sleep(time.Second)
	})
	silent := tcpServer(t, func(c net.Conn) {
		defer func() { _ = c.Close() }()
		time.Sleep(5 * time.Second)
	})
	reset := tcpServer(t, func(c net.Conn) {
		_, _ = bufio.NewReader(c).ReadString('\n')
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	})
	tests := []struct {
		name          string
		addr          string
		refused, open bool
	}{
		{"answers the line", pong, false, true},
		{"stays open without a word", silent, false, true},
		{"closed after the line", hangUp(t), true, false},
		{"reset after the line", reset, true, false},
		{"connection refused", closedPort(t), true, false},
	}
	p := &Prober{Timeout: 3 * time.Second}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := p.Once(context.Background(), plans.Probe{Name: tt.name, Kind: plans.ProbeTCP, URL: "tcp://" + tt.addr})
			if o.Refused != tt.refused || o.Open != tt.open {
				t.Fatalf("got %+v (%s), want refused=%v open=%v", o, o, tt.refused, tt.open)
			}
			for _, e := range []plans.Expect{{Refused: true}, {Open: true}} {
				if got, want := Satisfied(e, o), (e.Refused && tt.refused) || (e.Open && tt.open); got != want {
					t.Errorf("Satisfied(%v) = %v, want %v", e, got, want)
				}
			}
			if Answered(o) != tt.open {
				t.Errorf("Answered = %v: only an open connection proves the port took plaintext before the change", Answered(o))
			}
		})
	}
}
