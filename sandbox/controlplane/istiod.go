// Package controlplane runs the real istiod (pilot-discovery, built from
// istio.io/istio by scripts/build-istiod.sh) against the sandbox's
// kube-apiserver, as a local process in place of the istiod Deployment that
// `istioctl install` would create. It reads the mesh config from the
// istio-system/istio ConfigMap (pilot/pkg/bootstrap/mesh.go: without a
// mounted file, istiod reads the ConfigMap) and runs its own CA.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
)

// IstioVersion is the istio.io/istio version sandbox/istiod/go.mod pins.
const IstioVersion = "v0.0.0-20260827124520-eed52ebb66ad"

// Binary is the cached pilot-discovery build.
var Binary = cluster.Binary{Name: "pilot-discovery", Version: IstioVersion, Env: "MTLS_MIGRATE_ISTIOD", Script: "scripts/build-istiod.sh"}

// Options configure Start.
type Options struct {
	// Binary overrides the pilot-discovery binary (else Binary.Find).
	Binary string
	// Kubeconfig reaches the sandbox's API server with admin rights.
	Kubeconfig string
	// Dir is istiod's working directory: its log, and the DNS certificates
	// it writes under ./var/run/secrets.
	Dir string
	// Namespace is istiod's own (default istio-system).
	Namespace string
	// Injection installs the istio-sidecar-injector ConfigMap before
	// istiod starts and, once it is ready, the MutatingWebhookConfiguration
	// pointing at it; Start returns when the API server injects pods.
	Injection bool
}

// Istiod is a running pilot-discovery.
type Istiod struct {
	// Addresses on loopback: the HTTP debug and readiness server, plaintext
	// xDS (what sidecars connect to in the sandbox), the monitoring port
	// (/metrics, and /debug on recent releases), the webhook server.
	HTTPAddr, GRPCAddr, MonitoringAddr, WebhookAddr string
	// StartedIn is the time from exec to ready.
	StartedIn time.Duration
	// WebhookReadyIn is the time from ready until the API server injected
	// a dry-run pod (Options.Injection).
	WebhookReadyIn time.Duration
	// CABundle is the mesh root (PEM) istiod signs with; its serving
	// certificate chains to it.
	CABundle []byte
	cmd      *exec.Cmd
	exited   chan error
	logPath  string
	stopOnce sync.Once
	stopErr  error
}

// Start runs pilot-discovery and waits until it reports ready.
func Start(ctx context.Context, o Options) (*Istiod, error) {
	bin, err := Binary.Find(o.Binary)
	if err != nil {
		return nil, err
	}
	if o.Namespace == "" {
		o.Namespace = "istio-system"
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	addr := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	i := &Istiod{HTTPAddr: addr(ports[0]), GRPCAddr: addr(ports[1]), MonitoringAddr: addr(ports[2]), WebhookAddr: addr(ports[3]),
		exited: make(chan error, 1), logPath: filepath.Join(o.Dir, "istiod.log")}
	certs, err := writeCerts(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("istiod certificates: %w", err)
	}
	i.CABundle = certs.rootPEM
	var kube kubernetes.Interface
	if o.Injection {
		cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
		if err != nil {
			return nil, err
		}
		cfg.QPS, cfg.Burst = 50, 100
		if kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return nil, err
		}
		if err := installInjectorConfig(ctx, kube, o.Namespace); err != nil {
			return nil, err
		}
	}
	logf, err := os.Create(i.logPath)
	if err != nil {
		return nil, err
	}
	// #nosec G204 -- the sandbox runs its own build of istiod.
	cmd := exec.Command(bin, "discovery",
		"--kubeconfig", o.Kubeconfig,
		"--httpAddr", i.HTTPAddr, "--grpcAddr", i.GRPCAddr, "--secureGRPCAddr", addr(ports[4]),
		"--monitoringAddr", i.MonitoringAddr, "--httpsAddr", i.WebhookAddr,
		"--tlsCertFile", certs.certFile, "--tlsKeyFile", certs.keyFile, "--caCertFile", certs.rootFile,
		// No mounted files: the mesh config comes from the ConfigMap.
		"--meshConfig", filepath.Join(o.Dir, "no-mesh-file"), "--networksConfig", filepath.Join(o.Dir, "no-networks-file"),
		"--domain", "cluster.local", "--log_output_level", "default:info")
	cmd.Dir = o.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(),
		"POD_NAMESPACE="+o.Namespace, "POD_NAME=istiod-sandbox", "REVISION=default", "CLUSTER_ID=Kubernetes",
		"PILOT_CERT_PROVIDER=istiod",
		// The sandbox registers no validation webhook for istiod to patch,
		// and writes the injection webhook's caBundle itself (istiod would
		// patch in the same root: sidecarinjector.go, NewWebhookCertPatcher).
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
		"INJECTION_WEBHOOK_CONFIG_NAME=",
		// Classic sidecars (istio-proxy in containers), as the sandbox's
		// hand-written pods have. On "auto" the injector picks native
		// sidecars from the nodes' kubelet versions (1.33+;
		// pkg/kube/inject/webhook.go, DetectNativeSidecar), and with the
		// pod's node not yet in its informer it checks every node, which
		// would make the choice racy here.
		"ENABLE_NATIVE_SIDECARS=false",
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start istiod: %w", err)
	}
	i.cmd = cmd
	go func() { i.exited <- cmd.Wait(); _ = logf.Close() }()
	if err := i.waitReady(ctx); err != nil {
		_ = i.Stop()
		return nil, fmt.Errorf("%w\n%s", err, i.LogTail(30))
	}
	i.StartedIn = time.Since(began)
	if o.Injection {
		if err := registerWebhook(ctx, kube, i.InjectURL(), i.CABundle); err != nil {
			_ = i.Stop()
			return nil, fmt.Errorf("%w\n%s", err, i.LogTail(30))
		}
		i.WebhookReadyIn = time.Since(began) - i.StartedIn
	}
	return i, nil
}

func (i *Istiod) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	url := "http://" + i.HTTPAddr + "/ready"
	for {
		select {
		case err := <-i.exited:
			i.exited <- err
			return fmt.Errorf("istiod exited before it was ready: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("istiod not ready at %s: %w", url, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
}

// InjectURL is the sidecar injection webhook, as the API server calls it.
func (i *Istiod) InjectURL() string { return "https://" + i.WebhookAddr + "/inject" }

// Get fetches path from istiod's HTTP debug server.
func (i *Istiod) Get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+i.HTTPAddr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// Usage is istiod's resident memory and CPU time so far, from /proc.
func (i *Istiod) Usage() (rssBytes int64, cpu time.Duration, err error) {
	pid := i.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			rssBytes = kb * 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return rssBytes, 0, err
	}
	// Fields after the command name (which may hold spaces) in ")".
	_, rest, ok := strings.Cut(string(stat), ") ")
	if !ok {
		return rssBytes, 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return rssBytes, 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return rssBytes, time.Duration(ut+st) * time.Second / clkTck, nil
}

// LogTail returns the last n lines of istiod's log.
func (i *Istiod) LogTail(n int) string {
	b, _ := os.ReadFile(i.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop terminates istiod (SIGTERM, then SIGKILL after 5 s); once.
func (i *Istiod) Stop() error {
	if i.cmd == nil || i.cmd.Process == nil {
		return nil
	}
	i.stopOnce.Do(func() { i.stopErr = i.stop() })
	return i.stopErr
}

func (i *Istiod) stop() error {
	_ = syscall.Kill(-i.cmd.Process.Pid, syscall.SIGTERM)
	var err error
	select {
	case err = <-i.exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-i.cmd.Process.Pid, syscall.SIGKILL)
		err = <-i.exited
	}
	// Exiting on the signal is the expected end.
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return nil
	}
	return err
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	out := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
