package istiosync

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// syncz serves /debug/syncz answers in turn (the last one repeats), as
// istiod's Syncz handler writes them.
func syncz(t *testing.T, token string, answers ...[]Proxy) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/syncz" {
			http.NotFound(w, r)
			return
		}
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		n := int(calls.Add(1)) - 1
		if n >= len(answers) {
			n = len(answers) - 1
		}
		var out []Proxy
		for _, p := range answers[n] {
			if ns := r.URL.Query().Get("namespace"); ns == "" || p.Namespace() == ns {
				out = append(out, p)
			}
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func proxy(id, sent, acked string, at time.Time) Proxy {
	return Proxy{ID: id, Type: "sidecar", Resources: map[string]ResourceStatus{ListenerType: {Sent: sent, Acked: acked, SentTime: at}}}
}

func TestWait(t *testing.T) {
	change := time.Now().Add(-time.Minute)
	before, after := change.Add(-time.Hour), change.Add(300*time.Millisecond)
	other := proxy("web-1.web", "n1", "n0", before) // another namespace, never acked: not ours
	// What istiod had sent before the change: cart-1 n1, cart-2 n6.
	mark := Mark{Namespace: "cart", At: change, Sent: map[string]string{"cart-1.cart": "n1", "cart-2.cart": "n6"}}
	tests := []struct {
		name     string
		answers  [][]Proxy
		expected int
		wantErr  string
		minCalls int32
	}{
		{"every proxy acked a push after the change", [][]Proxy{{proxy("cart-1.cart", "n2", "n2", after), proxy("cart-2.cart", "n7", "n7", after), other}}, 2, "", 1},
		// The wait ends when the proxies have acked, not before.
		{"one proxy acks on the third poll", [][]Proxy{
			{proxy("cart-1.cart", "n2", "n2", after), proxy("cart-2.cart", "n7", "n6", after)},
			{proxy("cart-1.cart", "n2", "n2", after), proxy("cart-2.cart", "n7", "n6", after)},
			{proxy("cart-1.cart", "n2", "n2", after), proxy("cart-2.cart", "n7", "n7", after)},
		}, 2, "", 3},
		// Acked, but what it acked was sent before the change.
		{"acked config older than the change", [][]Proxy{{proxy("cart-1.cart", "n1", "n1", before)}}, 1, "1 of 1 proxies have not acknowledged configuration sent after the change (cart-1.cart)", 2},
		// Found in the sandbox with the real istiod: its first push came a
		// moment before the write, inside any clock tolerance. The nonce
		// is what tells.
		{"acked a push sent just before the change", [][]Proxy{{proxy("cart-1.cart", "n1", "n1", change.Add(-300*time.Millisecond))}}, 1, "have not acknowledged", 2},
		{"a proxy that connected since the mark", [][]Proxy{{proxy("cart-1.cart", "n2", "n2", after), proxy("cart-9.cart", "n1", "n1", after)}}, 2, "", 1},
		{"a NACK (lastError) is not an ack", [][]Proxy{{{ID: "cart-1.cart", Resources: map[string]ResourceStatus{ListenerType: {Sent: "n2", Acked: "n2", SentTime: after, LastError: "bad listener"}}}}}, 1, "have not acknowledged", 2},
		// Nobody to wait for is not "propagated": the proxies may be on
		// another istiod replica.
		{"fewer proxies than meshed pods", [][]Proxy{{proxy("cart-1.cart", "n2", "n2", after)}}, 3, "istiod sees 1 proxies where 3 meshed pods run (another istiod replica? pass each with --istiod-url)", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, calls := syncz(t, "", tt.answers...)
			c := &Client{URLs: []string{srv.URL}}
			p, err := c.Wait(context.Background(), nil, mark, tt.expected, 300*time.Millisecond, 50*time.Millisecond)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if p.Proxies != tt.expected || p.Took < time.Minute {
					t.Errorf("propagation %+v", p)
				}
			} else {
				var np *NotPropagatedError
				if !errors.As(err, &np) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want a NotPropagatedError containing %q", err, tt.wantErr)
				}
			}
			if calls.Load() < tt.minCalls {
				t.Errorf("%d polls, want at least %d", calls.Load(), tt.minCalls)
			}
		})
	}
}

// TestMark records the nonces istiod had sent each proxy.
func TestMark(t *testing.T) {
	srv, _ := syncz(t, "", []Proxy{proxy("cart-1.cart", "n4", "n4", time.Now()), {ID: "gw.istio-system"}})
	m, err := (&Client{URLs: []string{srv.URL}}).Mark(context.Background(), nil, "")
	if err != nil || len(m.Sent) != 1 || m.Sent["cart-1.cart"] != "n4" || m.At.IsZero() {
		t.Fatalf("mark %+v, %v", m, err)
	}
}

func TestStatusAuth(t *testing.T) {
	srv, _ := syncz(t, "s3cret", []Proxy{proxy("cart-1.cart", "n", "n", time.Now())})
	c := &Client{URLs: []string{srv.URL}}
	if _, err := c.Status(context.Background(), "cart"); err == nil || !strings.Contains(err.Error(), "istio-ca audience") {
		t.Fatalf("without a token: %v, want the 401 explained", err)
	}
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.TokenFile = tok
	ps, err := c.Status(context.Background(), "cart")
	if err != nil || len(ps) != 1 {
		t.Fatalf("with the token: %v %v", ps, err)
	}
	forbid := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusForbidden) }))
	defer forbid.Close()
	c.URLs = []string{forbid.URL}
	if _, err := c.Status(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "DEBUG_ENDPOINT_AUTH_ALLOWED_NAMESPACES") {
		t.Fatalf("403: %v", err)
	}
}
