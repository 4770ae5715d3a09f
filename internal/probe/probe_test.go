package probe

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// closedPort returns an address nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// hangUp accepts connections and closes them at once, as Envoy does to a
// plaintext connection on a STRICT listener.
func hangUp(t *testing.T) string {
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
			_ = c.Close()
		}
	}()
	return l.Addr().String()
}

func TestHTTPProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Host, "boutique.example.com:") {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	_, srvPort, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	p := &Prober{Timeout: 2 * time.Second}
	tests := []struct {
		name    string
		probe   plans.Probe
		refused bool
		status  int
	}{
		{"answer", plans.Probe{URL: srv.URL}, false, 404},
		// curl --resolve: the name goes to the given address, the Host header keeps the name.
		{"resolve override", plans.Probe{URL: "http://boutique.example.com:" + srvPort + "/", Resolve: "boutique.example.com:" + srvPort + ":127.0.0.1"}, false, 200},
		{"connection refused", plans.Probe{URL: "http://" + closedPort(t) + "/"}, true, 0},
		{"closed before a response", plans.Probe{URL: "http://" + hangUp(t) + "/"}, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.probe.Kind, tt.probe.Name = plans.ProbeHTTP, tt.name
			o := p.Once(context.Background(), tt.probe)
			if o.Refused != tt.refused || o.Status != tt.status {
				t.Fatalf("got %+v", o)
			}
		})
	}
}

func TestSatisfied(t *testing.T) {
	tests := []struct {
		e    plans.Expect
		o    Observation
		want bool
	}{
		{plans.Expect{Refused: true}, Observation{Refused: true}, true},
		{plans.Expect{Refused: true}, Observation{Status: 200}, false},
		// A timeout is not a refusal: it could be anything on the path.
		{plans.Expect{Refused: true}, Observation{Err: errors.New("timeout")}, false},
		{plans.Expect{Status: 200}, Observation{Status: 200}, true},
		{plans.Expect{Status: 200}, Observation{Status: 503}, false},
		{plans.Expect{Status: 200}, Observation{Refused: true}, false},
	}
	for _, tt := range tests {
		if got := Satisfied(tt.e, tt.o); got != tt.want {
			t.Errorf("Satisfied(%+v, %v) = %v", tt.e, tt.o, got)
		}
	}
}

type fakeExec struct {
	out  string
	code int
	err  error
	got  []string
	ns   string
}

func (f *fakeExec) Exec(_ context.Context, ns, _, _ string, cmd []string) (string, int, error) {
	f.got, f.ns = cmd, ns
	return f.out, f.code, f.err
}

func TestExecProbe(t *testing.T) {
	pr := plans.Probe{Name: "testcurl", Kind: plans.ProbeExec, URL: "http://cartservice.cart:7070/", Pod: "default/testcurl", Resolve: "a:80:10.0.0.1"}
	tests := []struct {
		name string
		fe   fakeExec
		want Observation
	}{
		{"status", fakeExec{out: "200"}, Observation{Status: 200}},
		{"refused (curl 7)", fakeExec{out: "000", code: 7}, Observation{Refused: true}},
		{"reset (curl 56)", fakeExec{out: "000", code: 56}, Observation{Refused: true}},
		{"timeout (curl 28) is not a refusal", fakeExec{out: "000", code: 28}, Observation{}},
		{"exec error", fakeExec{err: errors.New("pod not found")}, Observation{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fe := tt.fe
			p := &Prober{Timeout: 3 * time.Second, Exec: &fe, Namespace: "cart"}
			o := p.Once(context.Background(), pr)
			if o.Refused != tt.want.Refused || o.Status != tt.want.Status {
				t.Fatalf("got %+v", o)
			}
			if fe.ns != "default" || strings.Join(fe.got, " ") != "curl -sS -o /dev/null -w %{http_code} --max-time 3 --resolve a:80:10.0.0.1 http://cartservice.cart:7070/" {
				t.Fatalf("ran %v in %s", fe.got, fe.ns)
			}
		})
	}
}

// fakeClock advances only when slept on; onSleep sees the new time.
type fakeClock struct {
	now     time.Time
	onSleep func(now time.Time)
}

func (c *fakeClock) Now() time.Time { return c.now }
func (c *fakeClock) Sleep(_ context.Context, d time.Duration) error {
	c.now = c.now.Add(d)
	if c.onSleep != nil {
		c.onSleep(c.now)
	}
	return nil
}

func TestUntilRetriesUntilExpectationOrDeadline(t *testing.T) {
	pr := plans.Probe{Name: "x", Kind: plans.ProbeExec, URL: "http://x/", Pod: "p", Expect: plans.Expect{Refused: true}}
	tests := []struct {
		name string
		// refusedAfter is when the change reaches the proxy (0: never).
		refusedAfter time.Duration
		within       time.Duration
		wantOK       bool
		wantAttempts int
	}{
		{"refused once the change reaches the proxy", 3 * time.Second, 10 * time.Second, true, 4},
		{"never refused: gives up at the deadline", 0, 5 * time.Second, false, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Unix(100, 0)
			fe := &fakeExec{out: "200"}
			clk := &fakeClock{now: start, onSleep: func(now time.Time) {
				if tt.refusedAfter > 0 && now.Sub(start) >= tt.refusedAfter {
					fe.out, fe.code = "000", 56
				}
			}}
			p := &Prober{Exec: fe, Interval: time.Second, Clock: clk}
			if r := p.Expect(context.Background(), pr, tt.within); r.OK != tt.wantOK || r.Attempts != tt.wantAttempts {
				t.Fatalf("got %+v, want ok=%v after %d attempts", r, tt.wantOK, tt.wantAttempts)
			}
		})
	}
}

// TestExecOutputIsCapped: a pod that prints without end cannot fill memory,
// logs or the state: the writer keeps maxExecOutput bytes and drains the
// rest without an error.
func TestExecOutputIsCapped(t *testing.T) {
	c := &capped{max: maxExecOutput}
	chunk := strings.Repeat("x", 1000)
	for range 100 {
		if n, err := c.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if c.Len() != maxExecOutput {
		t.Fatalf("kept %d bytes, want %d", c.Len(), maxExecOutput)
	}
	if got := clip(strings.Repeat("y", 500), 80); len(got) != 83 {
		t.Fatalf("clip kept %d bytes", len(got))
	}
}
