// Package promclient builds a Prometheus HTTP API client from the command
// line's Prometheus flags. The same client works against Prometheus, Thanos,
// Mimir, Cortex and VictoriaMetrics: they all serve the Prometheus HTTP API.
// Transport concerns (bearer token file, CA, custom headers such as Mimir's
// X-Scope-OrgID) are delegated to prometheus/common's HTTP client config,
// which also keeps the token out of logs and error messages.
package promclient

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/config"
)

// Options are the Prometheus connection settings.
type Options struct {
	URL                string
	BearerTokenFile    string
	CAFile             string
	InsecureSkipVerify bool
	Timeout            time.Duration
	// Headers are extra request headers, e.g. X-Scope-OrgID for Mimir/Cortex.
	Headers map[string]string
}

// ParseHeaders turns repeated KEY=VALUE flags into a header map.
func ParseHeaders(kvs []string) (map[string]string, error) {
	h := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("--prometheus-header %q must be KEY=VALUE, e.g. X-Scope-OrgID=tenant-1", kv)
		}
		if strings.EqualFold(k, "Authorization") {
			return nil, fmt.Errorf("--prometheus-header must not set Authorization: use --prometheus-bearer-token-file so the token is never printed")
		}
		h[http.CanonicalHeaderKey(k)] = v
	}
	return h, nil
}

// Validate rejects settings that cannot work, before any request is made.
func (o Options) Validate() error {
	if o.URL == "" {
		return errors.New("no Prometheus URL: pass --prometheus-url or set PROMETHEUS_URL")
	}
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--prometheus-url %q must be an http:// or https:// URL such as http://prometheus.istio-system:9090", Redact(o.URL))
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("--prometheus-timeout must be positive, got %s", o.Timeout)
	}
	return nil
}

// New returns a client for the Prometheus HTTP API.
func New(o Options) (v1.API, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	cfg := config.HTTPClientConfig{
		TLSConfig: config.TLSConfig{
			CAFile:             o.CAFile,
			InsecureSkipVerify: o.InsecureSkipVerify,
		},
		EnableHTTP2: true,
	}
	if o.BearerTokenFile != "" {
		cfg.Authorization = &config.Authorization{Type: "Bearer", CredentialsFile: o.BearerTokenFile}
	}
	if len(o.Headers) > 0 {
		cfg.HTTPHeaders = &config.Headers{Headers: map[string]config.Header{}}
		for k, v := range o.Headers {
			cfg.HTTPHeaders.Headers[k] = config.Header{Values: []string{v}}
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("prometheus client settings: %w", err)
	}
	rt, err := config.NewRoundTripperFromConfig(cfg, "mtls-migrate")
	if err != nil {
		return nil, fmt.Errorf("prometheus client settings (check --prometheus-ca-file and --prometheus-bearer-token-file): %w", err)
	}
	// The token and headers are added by rt to every request, redirected
	// ones included, so net/http's own stripping of Authorization on a
	// cross-host redirect never applies: redirects are followed only to the
	// same host, and never from https to http.
	hc := &http.Client{Transport: gzipTransport{rt}, CheckRedirect: sameHostRedirect}
	c, err := api.NewClient(api.Config{Address: o.URL, Client: hc})
	if err != nil {
		return nil, fmt.Errorf("prometheus client for %s: %w", Redact(o.URL), err)
	}
	return v1.NewAPI(c), nil
}

// gzipTransport asks for a gzip-compressed answer and decodes it.
// prometheus/common's transport sets DisableCompression (it was made for
// scrapes, which decode gzip themselves), so without this every answer
// crosses the network as plain JSON: Prometheus, Thanos, Mimir and
// VictoriaMetrics all compress their API answers when asked, about 10 to 1
// for the planner's. A request that already says what it accepts is sent
// as it is, and its answer returned undecoded.
type gzipTransport struct{ next http.RoundTripper }

func (t gzipTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Accept-Encoding") != "" || req.Method == http.MethodHead {
		return t.next.RoundTrip(req)
	}
	// A RoundTripper must not modify the request it is given.
	req = req.Clone(req.Context())
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := t.next.RoundTrip(req)
	if err != nil || !strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip") {
		return resp, err
	}
	resp.Body = &gzipBody{body: resp.Body}
	resp.Header.Del("Content-Encoding")
	resp.Header.Del("Content-Length")
	resp.ContentLength = -1
	resp.Uncompressed = true
	return resp, nil
}

// gzipBody decodes a gzip body, opening the reader on the first Read (as
// net/http's own gzipReader does) so that an empty or failed body reports
// its error there.
type gzipBody struct {
	body io.ReadCloser
	zr   *gzip.Reader
	err  error
}

func (b *gzipBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.zr == nil {
		if b.zr, b.err = gzip.NewReader(b.body); b.err != nil {
			b.err = fmt.Errorf("decode Prometheus' gzip answer: %w", b.err)
			return 0, b.err
		}
	}
	return b.zr.Read(p)
}

func (b *gzipBody) Close() error { return b.body.Close() }

// sameHostRedirect allows a redirect only to the host of the first request
// and without a downgrade from https, at most 10 times (net/http's default).
func sameHostRedirect(req *http.Request, via []*http.Request) error {
	first := via[0].URL
	switch {
	case len(via) >= 10:
		return errors.New("stopped after 10 redirects")
	case req.URL.Host != first.Host:
		return fmt.Errorf("redirected by Prometheus to another host (%s): not followed, so the bearer token and headers are not sent there; point --prometheus-url at the final address", req.URL.Host)
	case first.Scheme == "https" && req.URL.Scheme != "https":
		return errors.New("redirected by Prometheus from https to http: not followed; point --prometheus-url at the https address")
	}
	return nil
}

// Redact returns a URL without its userinfo (user:password@), for the plan,
// logs and errors; an unparsable URL is replaced whole.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User == nil {
		return raw
	}
	u.User = nil
	return u.String()
}
