package probe

import (
	"context"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

func (p *Prober) httpOnce(ctx context.Context, pr plans.Probe) Observation {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	dialer := &net.Dialer{Timeout: timeout}
	override := ""
	target := ""
	if pr.Resolve != "" {
		host, port, addr, err := plans.ParseResolve(pr.Resolve)
		if err != nil {
			return Observation{Err: err}
		}
		// curl --resolve semantics: connections to host:port go to address;
		// the URL (Host header, TLS server name) is unchanged.
		target = net.JoinHostPort(host, port)
		override = net.JoinHostPort(addr, port)
	}
	tr := &http.Transport{
		// No proxy from the environment: the probe is about this process's
		// own plaintext path to the target.
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if override != "" && addr == target {
				addr = override
			}
			return dialer.DialContext(ctx, network, addr)
		},
		// A fresh connection per attempt: a connection opened before the
		// change would say nothing about the new listener configuration.
		DisableKeepAlives:     true,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, pr.URL, nil)
	if err != nil {
		return Observation{Err: err}
	}
	req.Header.Set("User-Agent", "mtls-migrate-probe")
	resp, err := client.Do(req) // #nosec G107 G704 -- the URL comes from the reviewed plan.
	if err != nil {
		if isRefusal(err) {
			return Observation{Refused: true, Err: err}
		}
		return Observation{Err: err}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return Observation{Status: resp.StatusCode}
}
