package prometheus

import (
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"
)

// needPrometheus skips (or fails on CI) when no prometheus binary is installed.
func needPrometheus(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("prometheus"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("prometheus not on PATH: run scripts/install-prometheus.sh")
		}
		t.Skip("prometheus not on PATH: run scripts/install-prometheus.sh")
	}
}

// metricsServer serves one counter, like a workload's metrics endpoint.
func metricsServer(t *testing.T, name string) (addr string, c prometheus.Counter) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c = prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: "test counter"})
	reg.MustRegister(c)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), c
}

// waitForSeries polls an instant query until it returns at least one sample.
func waitForSeries(t *testing.T, promAPI promv1.API, query string, within time.Duration) model.Vector {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, _, _, err := promAPI.Query(ctx, query, time.Now())
		cancel()
		if err == nil {
			if vec, ok := v.(model.Vector); ok && len(vec) > 0 {
				return vec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("query %q returned no data within %s (last: %v, err %v)", query, within, v, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestScrapesTargetsAndPicksUpNewOnesWithoutRestart(t *testing.T) {
	needPrometheus(t)
	addr, counter := metricsServer(t, "sandbox_test_requests_total")
	counter.Add(42)

	ctx := context.Background()
	s, err := Start(ctx, Options{
		Dir:            t.TempDir(),
		ScrapeInterval: time.Second,
		Targets:        []Target{{Job: "app", Address: addr, Labels: map[string]string{"namespace": "demo"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })

	client, err := api.NewClient(api.Config{Address: s.URL()})
	if err != nil {
		t.Fatal(err)
	}
	promAPI := promv1.NewAPI(client)

	t0 := time.Now()
	vec := waitForSeries(t, promAPI, `sandbox_test_requests_total{job="app",namespace="demo"}`, 10*time.Second)
	if got := float64(vec[0].Value); got != 42 {
		t.Errorf("counter = %v, want 42", got)
	}

	addr2, counter2 := metricsServer(t, "sandbox_test_other_total")
	counter2.Inc()
	if err := s.SetTargets([]Target{
		{Job: "app", Address: addr, Labels: map[string]string{"namespace": "demo"}},
		{Job: "other", Address: addr2},
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("first series after %s", time.Since(t0))
	t1 := time.Now()
	waitForSeries(t, promAPI, `sandbox_test_other_total{job="other"}`, 10*time.Second)
	t.Logf("new target after %s", time.Since(t1))
}

func TestStopLeavesNoProcessAndIsIdempotent(t *testing.T) {
	needPrometheus(t)
	// No Dir: Start makes a temporary one, and Stop must remove it.
	s, err := Start(context.Background(), Options{ScrapeInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pid := s.proc.cmd.Process.Pid
	dir := s.dir
	hostPort := strings.TrimPrefix(s.URL(), "http://")

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("prometheus pid %d still exists after Stop (kill -0: %v)", pid, err)
	}
	if conn, err := net.DialTimeout("tcp", hostPort, time.Second); err == nil {
		conn.Close()
		t.Errorf("something still listens on %s after Stop", hostPort)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary dir %s not removed by Stop: %v", dir, err)
	}
}

func TestKillThenRestartKeepsURL(t *testing.T) {
	needPrometheus(t)
	ctx := context.Background()
	s, err := Start(ctx, Options{Dir: t.TempDir(), ScrapeInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	client, err := api.NewClient(api.Config{Address: s.URL()})
	if err != nil {
		t.Fatal(err)
	}
	promAPI := promv1.NewAPI(client)

	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = promAPI.Buildinfo(qctx)
	cancel()
	if err == nil {
		t.Fatal("API answered after Kill")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := promAPI.Buildinfo(ctx); err != nil {
		t.Fatalf("API after Restart: %v", err)
	}
}

func TestRenderConfigKeepsTimeoutWithinInterval(t *testing.T) {
	for _, tc := range []struct {
		interval    time.Duration
		wantTimeout string
	}{
		{time.Second, "scrape_timeout: 1s"},
		{15 * time.Second, "scrape_timeout: 10s"},
	} {
		cfg, err := renderConfig(tc.interval, "/x/targets.json")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(cfg), tc.wantTimeout) {
			t.Errorf("interval %s: config lacks %q:\n%s", tc.interval, tc.wantTimeout, cfg)
		}
	}
}
