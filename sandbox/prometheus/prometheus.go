// Package prometheus runs a real Prometheus server for the sandbox, scraping
// targets that can change while it runs (file-based service discovery), so
// the product's health gates query a genuine PromQL engine. Tests can Kill
// and Restart it to simulate an outage.
package prometheus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"
)

const (
	defaultScrapeInterval = 15 * time.Second
	readyTimeout          = 60 * time.Second
	stopGrace             = 5 * time.Second
	// sdJobName is the single scrape job; each target's Job becomes its job
	// label instead, because labels from service discovery take precedence
	// over job_name (Prometheus sets job only when the target lacks it).
	sdJobName = "sandbox"
)

// Target is one scrape endpoint.
type Target struct {
	Job     string            // becomes the job label
	Address string            // host:port; metrics are read from /metrics
	Labels  map[string]string // extra target labels
}

// Options configures Start.
type Options struct {
	// Dir holds prometheus.yml, the targets file, the TSDB (removed by Stop)
	// and prometheus.log; created if missing. If empty, a temporary
	// directory is used and removed by Stop.
	Dir string
	// Binary is the prometheus executable; default "prometheus" on PATH.
	Binary string
	// ScrapeInterval is the global scrape and evaluation interval; default 15s.
	ScrapeInterval time.Duration
	// Targets are scraped from the start; change them with SetTargets.
	Targets []Target
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
	// TSDBDir, when set, is an existing TSDB to serve (e.g. blocks
	// backfilled with promtool); Stop leaves it in place. Empty: a fresh
	// TSDB in Dir, removed by Stop.
	TSDBDir string
	// Retention is --storage.tsdb.retention.time (default 1d).
	Retention time.Duration
	// Args are extra command-line flags.
	Args []string
}

// Server is a running Prometheus child process.
type Server struct {
	log         *slog.Logger
	binary      string
	dir         string
	configPath  string
	targetsPath string
	tsdbDir     string
	keepTSDB    bool // tsdbDir is the caller's (Options.TSDBDir)
	retention   time.Duration
	args        []string
	removeDir   bool // dir is a temporary directory we created
	logPath     string
	port        int
	url         string

	mu      sync.Mutex
	proc    *process // nil when killed
	stopped bool
}

type process struct {
	cmd     *exec.Cmd
	logFile *os.File
	done    chan struct{}
	exitErr error
}

// Start writes the config, starts Prometheus on a free loopback port and
// returns once its API answers (which Prometheus allows only when ready).
// The first scrape of opts.Targets follows within about 5s (see SetTargets).
// ctx bounds the start only; call Stop.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	s := &Server{log: opts.Logger, binary: opts.Binary, retention: opts.Retention, args: opts.Args}
	if s.retention <= 0 {
		s.retention = 24 * time.Hour
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.binary == "" {
		s.binary = "prometheus"
	}
	if s.binary, err = exec.LookPath(s.binary); err != nil {
		return nil, fmt.Errorf("prometheus binary %q not found: run scripts/install-prometheus.sh or set Options.Binary: %w", opts.Binary, err)
	}
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "mtls-migrate-prometheus-"); err != nil {
			return nil, fmt.Errorf("create a temporary prometheus dir: %w", err)
		}
		s.removeDir = true
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create prometheus dir %s: %w", dir, err)
	}
	if s.dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("resolve prometheus dir: %w", err)
	}
	interval := opts.ScrapeInterval
	if interval <= 0 {
		interval = defaultScrapeInterval
	}
	s.configPath = filepath.Join(s.dir, "prometheus.yml")
	s.targetsPath = filepath.Join(s.dir, "targets.json")
	s.logPath = filepath.Join(s.dir, "prometheus.log")
	if opts.TSDBDir != "" {
		if s.tsdbDir, err = filepath.Abs(opts.TSDBDir); err != nil {
			return nil, fmt.Errorf("resolve TSDB dir: %w", err)
		}
		s.keepTSDB = true
	} else if s.tsdbDir, err = os.MkdirTemp(s.dir, "tsdb-"); err != nil {
		return nil, fmt.Errorf("create TSDB dir in %s: %w", s.dir, err)
	}
	defer func() {
		if err != nil {
			if stopErr := s.Stop(); stopErr != nil {
				s.log.Warn("clean up after failed prometheus start", "err", stopErr)
			}
		}
	}()
	if err := s.SetTargets(opts.Targets); err != nil {
		return nil, err
	}
	cfg, err := renderConfig(interval, s.targetsPath)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(s.configPath, cfg); err != nil {
		return nil, err
	}

	for attempt := 0; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		s.url = "http://127.0.0.1:" + strconv.Itoa(s.port)
		err = s.startProcess(ctx)
		if err == nil {
			break
		}
		if attempt == 0 && strings.Contains(string(tail(s.logPath, 4096)), "address already in use") {
			continue
		}
		return nil, err
	}
	s.log.Info("prometheus ready", "url", s.url, "dir", s.dir)
	return s, nil
}

// URL returns http://127.0.0.1:PORT. It stays the same across Restart.
func (s *Server) URL() string { return s.url }

// SetTargets replaces the scrape targets. The file is swapped atomically and
// Prometheus reads it within a second (file watch plus a 1s refresh), but its
// scrape manager applies discovered changes at most every 5s (fixed in
// Prometheus 2.42), so new targets show up in queries after about 5s plus
// one scrape interval.
func (s *Server) SetTargets(targets []Target) error {
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	groups := make([]group, 0, len(targets))
	for _, t := range targets {
		if t.Address == "" {
			return fmt.Errorf("prometheus target of job %q has no address", t.Job)
		}
		labels := maps.Clone(t.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		if t.Job != "" {
			labels[model.JobLabel] = t.Job
		}
		groups = append(groups, group{Targets: []string{t.Address}, Labels: labels})
	}
	data, err := json.MarshalIndent(groups, "", "  ")
	if err != nil {
		return fmt.Errorf("encode prometheus targets: %w", err)
	}
	return writeFileAtomic(s.targetsPath, data)
}

// Kill stops Prometheus abruptly (SIGKILL), as in an outage. Restart brings
// it back on the same URL with the same data.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	s.proc = nil
	if p == nil {
		return nil
	}
	return p.stop(0)
}

// Restart starts Prometheus again after Kill, on the same port and TSDB.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	running, stopped := s.proc != nil, s.stopped
	s.mu.Unlock()
	if stopped {
		return errors.New("prometheus: Restart after Stop")
	}
	if running {
		return errors.New("prometheus: Restart while running; call Kill first")
	}
	return s.startProcess(ctx)
}

// Stop sends SIGTERM, waits, and SIGKILLs after a timeout; then removes the
// TSDB. The config, targets file and log stay in Dir (unless Dir was a
// temporary directory). Idempotent.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	var errs []error
	if s.proc != nil {
		errs = append(errs, s.proc.stop(stopGrace))
		s.proc = nil
	}
	if s.tsdbDir != "" && !s.keepTSDB {
		if err := os.RemoveAll(s.tsdbDir); err != nil {
			errs = append(errs, fmt.Errorf("remove prometheus TSDB %s: %w", s.tsdbDir, err))
		}
	}
	if s.removeDir {
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove prometheus dir %s: %w", s.dir, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Server) startProcess(ctx context.Context) error {
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open prometheus log: %w", err)
	}
	args := append([]string{
		"--config.file=" + s.configPath,
		"--storage.tsdb.path=" + s.tsdbDir,
		"--storage.tsdb.retention.time=" + model.Duration(s.retention).String(),
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(s.port),
	}, s.args...)
	cmd := exec.Command(s.binary, args...)
	cmd.Dir = s.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start prometheus %s: %w", s.binary, err)
	}
	p := &process{cmd: cmd, logFile: logFile, done: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		close(p.done)
	}()
	if err := s.waitReady(ctx, p); err != nil {
		_ = p.stop(0)
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		// Stop ran while we waited: do not leave a process behind.
		_ = p.stop(0)
		return errors.New("prometheus: stopped while starting")
	}
	s.proc = p
	return nil
}

// waitReady asks the API for build info until it answers: Prometheus
// refuses API calls with 503 until the TSDB is open and it is ready.
func (s *Server) waitReady(ctx context.Context, p *process) error {
	client, err := api.NewClient(api.Config{Address: s.url})
	if err != nil {
		return fmt.Errorf("prometheus API client for %s: %w", s.url, err)
	}
	promAPI := promv1.NewAPI(client)
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		select {
		case <-p.done:
			return fmt.Errorf("prometheus exited before becoming ready (%w); last lines of %s:\n%s", p.exitErr, s.logPath, tail(s.logPath, 2048))
		default:
		}
		reqCtx, reqCancel := context.WithTimeout(ctx, time.Second)
		_, err := promAPI.Buildinfo(reqCtx)
		reqCancel()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("prometheus at %s did not answer (last error: %v); see %s: %w", s.url, lastErr, s.logPath, ctx.Err()) //nolint:errorlint // ctx.Err() is the cause; lastErr is context
		case <-tick.C:
		}
	}
}

// stop signals SIGTERM (or SIGKILL if grace is 0), waits, and escalates to
// SIGKILL after grace.
func (p *process) stop(grace time.Duration) error {
	defer p.logFile.Close()
	sig := syscall.SIGTERM
	if grace == 0 {
		sig = syscall.SIGKILL
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal prometheus (pid %d): %w", p.cmd.Process.Pid, err)
	}
	if grace > 0 {
		select {
		case <-p.done:
			return nil
		case <-time.After(grace):
		}
		if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("kill prometheus (pid %d): %w", p.cmd.Process.Pid, err)
		}
	}
	<-p.done
	return nil
}

type promConfig struct {
	Global struct {
		ScrapeInterval     string `yaml:"scrape_interval"`
		ScrapeTimeout      string `yaml:"scrape_timeout"`
		EvaluationInterval string `yaml:"evaluation_interval"`
	} `yaml:"global"`
	ScrapeConfigs []scrapeConfig `yaml:"scrape_configs"`
}

type scrapeConfig struct {
	JobName       string         `yaml:"job_name"`
	FileSDConfigs []fileSDConfig `yaml:"file_sd_configs"`
}

type fileSDConfig struct {
	Files           []string `yaml:"files"`
	RefreshInterval string   `yaml:"refresh_interval"`
}

func renderConfig(interval time.Duration, targetsPath string) ([]byte, error) {
	var c promConfig
	iv := model.Duration(interval).String()
	c.Global.ScrapeInterval = iv
	c.Global.EvaluationInterval = iv
	// scrape_timeout may not exceed the interval; 10s is Prometheus' default.
	c.Global.ScrapeTimeout = model.Duration(min(interval, 10*time.Second)).String()
	c.ScrapeConfigs = []scrapeConfig{{
		JobName: sdJobName,
		FileSDConfigs: []fileSDConfig{{
			Files:           []string{targetsPath},
			RefreshInterval: "1s",
		}},
	}}
	var buf bytes.Buffer
	buf.WriteString("# Generated by sandbox/prometheus; rewritten on every Start.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("render prometheus.yml: %w", err)
	}
	return buf.Bytes(), nil
}

// writeFileAtomic writes via a temp file in the same directory and a rename,
// so Prometheus never reads a half-written file. The temp name does not end
// in .json, so file_sd never picks it up.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail returns up to n bytes from the end of a file, for error messages.
func tail(path string, n int64) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	if int64(len(data)) > n {
		data = data[int64(len(data))-n:]
	}
	return data
}
