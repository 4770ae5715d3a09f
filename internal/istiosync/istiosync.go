// Package istiosync tells when a configuration change has reached the
// proxies: it reads istiod's sync status, the /debug/syncz endpoint that
// `istioctl proxy-status` also reads (pilot/pkg/xds/debug.go, Syncz), and
// waits until every proxy of a namespace has acknowledged a listener
// configuration sent after the change. Istio removed `istioctl x wait` in
// 1.23; this is what remains.
//
// Access: on istiod's monitoring port (15014) the debug endpoints need a
// Kubernetes token with the istio-ca audience, and callers outside the
// mesh's root namespace see only config_dump, ndsz and edsz unless their
// namespace is in istiod's DEBUG_ENDPOINT_AUTH_ALLOWED_NAMESPACES
// (pilot/pkg/xds/debug.go, AuthorizeDebugRequest). deploy/ projects such a
// token for the Job; istiod must list the Job's namespace.
package istiosync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/mtls-migrate/mtls-migrate/internal/clock"
)

// ListenerType is the xDS type whose acknowledgement proves a proxy has the
// new PeerAuthentication: the inbound listener's filter chains are where
// STRICT and PERMISSIVE differ.
const ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

// Proxy is one proxy's entry in /debug/syncz (the fields used here of
// istiod's SyncStatus).
type Proxy struct {
	ID        string                    `json:"proxy"`
	Type      string                    `json:"proxy_type"`
	Resources map[string]ResourceStatus `json:"resources"`
}

// ResourceStatus is what istiod last sent a proxy of one type, and what the
// proxy acknowledged.
type ResourceStatus struct {
	Sent      string    `json:"sent"`
	Acked     string    `json:"acked"`
	SentTime  time.Time `json:"sentTime"`
	LastError string    `json:"lastError"`
}

// Namespace is the proxy's namespace: IDs are "name.namespace".
func (p Proxy) Namespace() string {
	_, ns, _ := strings.Cut(p.ID, ".")
	return ns
}

// Client reads the sync status from one or more istiod replicas (each
// knows only the proxies connected to it).
type Client struct {
	// URLs are istiod base URLs, e.g. http://istiod.istio-system:15014.
	URLs []string
	// TokenFile holds a token for istiod (audience istio-ca); re-read on
	// every request, as projected tokens rotate.
	TokenFile string
	HTTP      *http.Client
}

// Status returns the proxies of namespace ("" for all) as the replicas see
// them.
func (c *Client) Status(ctx context.Context, namespace string) ([]Proxy, error) {
	var out []Proxy
	for _, base := range c.URLs {
		ps, err := c.status(ctx, base, namespace)
		if err != nil {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}

func (c *Client) status(ctx context.Context, base, namespace string) ([]Proxy, error) {
	u := strings.TrimRight(base, "/") + "/debug/syncz"
	if namespace != "" {
		u += "?namespace=" + url.QueryEscape(namespace)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if c.TokenFile != "" {
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("read the istiod token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("istiod sync status at %s: %w", base, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("istiod sync status at %s: %w", base, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized:
		return nil, fmt.Errorf("istiod at %s refused the sync status request (401): give a token with the istio-ca audience (--istiod-token-file)", base)
	case http.StatusForbidden:
		return nil, fmt.Errorf("istiod at %s forbids /debug/syncz to this identity (403): run in the mesh's root namespace or add this namespace to istiod's DEBUG_ENDPOINT_AUTH_ALLOWED_NAMESPACES", base)
	default:
		return nil, fmt.Errorf("istiod sync status at %s: %s", base, resp.Status)
	}
	var ps []Proxy
	if err := json.Unmarshal(body, &ps); err != nil {
		return nil, fmt.Errorf("istiod sync status at %s is not the list of proxies it should be: %w", base, err)
	}
	return ps, nil
}

// Propagation is how a change reached the proxies.
type Propagation struct {
	// Proxies of the namespace istiod knows, and Expected, the meshed pods
	// the cluster runs there.
	Proxies, Expected int
	// Took is from the mark (taken right before the change) to the poll
	// that saw the last acknowledgement (at most one poll interval late).
	Took time.Duration
}

// NotPropagatedError says the wait ended before every proxy acknowledged.
type NotPropagatedError struct {
	Waiting []string
	Seen    int
	Want    int
	After   time.Duration
}

func (e *NotPropagatedError) Error() string {
	msg := fmt.Sprintf("after %s, %d of %d proxies have not acknowledged configuration sent after the change", e.After.Round(100*time.Millisecond), len(e.Waiting), e.Seen)
	if len(e.Waiting) > 0 {
		msg += " (" + strings.Join(first(e.Waiting, 5), ", ") + ")"
	}
	if e.Seen < e.Want {
		msg += fmt.Sprintf("; istiod sees %d proxies where %d meshed pods run (another istiod replica? pass each with --istiod-url)", e.Seen, e.Want)
	}
	return msg
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("%d more", len(s)-n))
	}
	return s
}

// Mark is what istiod had sent each proxy of a namespace right before a
// change: the change has reached a proxy once it has acknowledged a
// listener configuration with another nonce. Nonces, not times: istiod's
// clock and ours differ, and a push a moment before the write would pass
// any time-based test with a tolerance.
type Mark struct {
	Namespace string
	At        time.Time
	Sent      map[string]string
}

// Mark records, before a change to namespace ("" for all), the listener
// nonce istiod last sent each proxy.
func (c *Client) Mark(ctx context.Context, clk clock.Clock, namespace string) (Mark, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	m := Mark{Namespace: namespace, At: clk.Now(), Sent: map[string]string{}}
	ps, err := c.Status(ctx, namespace)
	if err != nil {
		return m, err
	}
	for _, p := range ps {
		if lds, ok := p.Resources[ListenerType]; ok {
			m.Sent[p.ID] = lds.Sent
		}
	}
	return m, nil
}

// Wait polls until every proxy of the mark's namespace has acknowledged,
// with no error, a listener configuration istiod sent after the mark (a
// nonce other than the one marked; for a proxy that connected since, one
// sent after the mark's time), and istiod knows at least expected proxies
// there; or until within has passed.
func (c *Client) Wait(ctx context.Context, clk clock.Clock, m Mark, expected int, within, interval time.Duration) (Propagation, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	start := clk.Now()
	deadline := start.Add(within)
	for {
		ps, err := c.Status(ctx, m.Namespace)
		if err != nil {
			return Propagation{}, err
		}
		var waiting []string
		seen := 0
		for _, p := range ps {
			lds, ok := p.Resources[ListenerType]
			if !ok {
				continue // not a proxy that takes listeners (no inbound to secure)
			}
			seen++
			fresh := lds.SentTime.After(m.At)
			if old, marked := m.Sent[p.ID]; marked {
				fresh = lds.Sent != old
			}
			if !fresh || lds.Sent == "" || lds.Acked != lds.Sent || lds.LastError != "" {
				waiting = append(waiting, p.ID)
			}
		}
		now := clk.Now()
		if len(waiting) == 0 && seen >= expected {
			return Propagation{Proxies: seen, Expected: expected, Took: now.Sub(m.At)}, nil
		}
		if !now.Before(deadline) {
			return Propagation{Proxies: seen, Expected: expected}, &NotPropagatedError{Waiting: waiting, Seen: seen, Want: expected, After: now.Sub(start)}
		}
		if err := clk.Sleep(ctx, interval); err != nil {
			return Propagation{Proxies: seen, Expected: expected}, errors.Join(err, &NotPropagatedError{Waiting: waiting, Seen: seen, Want: expected, After: now.Sub(start)})
		}
	}
}
