package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// startTimeout bounds Start when the caller's context has no earlier deadline.
	startTimeout = 2 * time.Minute
	// stopGrace is how long kube-apiserver gets after SIGTERM before SIGKILL.
	stopGrace = 5 * time.Second
)

// Options configures Start.
type Options struct {
	// Dir is the working directory for etcd data, certificates, the token
	// file, logs and the kubeconfig; created if missing. If empty, a
	// temporary directory is used and removed by Stop.
	Dir string
	// APIServerBinary is the path to kube-apiserver. If empty, the binary is
	// looked up via $MTLS_MIGRATE_KUBE_APISERVER, then in the cache that
	// scripts/build-kube-apiserver.sh fills (see FindAPIServerBinary).
	APIServerBinary string
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
}

// Cluster is a running etcd + kube-apiserver pair. Its lifetime is not tied
// to the context passed to Start: call Stop.
type Cluster struct {
	log        *slog.Logger
	dir        string
	removeDir  bool   // Dir was a temporary directory we created
	runDir     string // etcd data and PKI; removed by Stop
	kubeconfig string
	server     string
	caPEM      []byte
	token      string

	etcd      *embed.Etcd
	apiserver *apiserverProc

	stopOnce sync.Once
	stopErr  error
}

// Start starts etcd and kube-apiserver, waits for /readyz and creates the
// bootstrap objects (Istio CRDs, istio-system with the mesh ConfigMap, and
// the default namespace). ctx bounds the start only. On error everything
// already started is stopped again.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	began := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	binary, err := FindAPIServerBinary(opts.APIServerBinary)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	c := &Cluster{log: log, dir: opts.Dir}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "mtls-migrate-cluster-"); err != nil {
			return nil, fmt.Errorf("create a temporary cluster dir: %w", err)
		}
		c.removeDir = true
	} else if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cluster dir %s: %w", c.dir, err)
	}
	if c.dir, err = filepath.Abs(c.dir); err != nil {
		return nil, fmt.Errorf("resolve cluster dir: %w", err)
	}
	defer func() {
		if err != nil {
			if stopErr := c.Stop(); stopErr != nil {
				log.Warn("clean up after failed start", "err", stopErr)
			}
		}
	}()
	if c.runDir, err = os.MkdirTemp(c.dir, "run-"); err != nil {
		return nil, fmt.Errorf("create run dir in %s: %w", c.dir, err)
	}

	// Certificates and etcd do not depend on each other: overlap them.
	type etcdResult struct {
		e   *embed.Etcd
		url string
		err error
	}
	etcdCh := make(chan etcdResult, 1)
	go func() {
		e, u, err := startEtcd(ctx, filepath.Join(c.runDir, "etcd"), filepath.Join(c.dir, "etcd.log"))
		etcdCh <- etcdResult{e, u, err}
	}()
	p, pkiErr := newPKI(filepath.Join(c.runDir, "pki"))
	er := <-etcdCh
	c.etcd = er.e
	if er.err != nil {
		return nil, er.err
	}
	if pkiErr != nil {
		return nil, fmt.Errorf("generate cluster certificates: %w", pkiErr)
	}
	c.caPEM, c.token = p.caCert, p.adminToken
	log.Debug("etcd ready", "url", er.url, "elapsed", time.Since(began))

	logPath := filepath.Join(c.dir, "kube-apiserver.log")
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		c.server = "https://127.0.0.1:" + strconv.Itoa(port)
		c.apiserver, err = startAPIServer(binary, logPath, apiserverArgs(port, er.url, p, filepath.Join(c.runDir, "certs")), port)
		if err != nil {
			return nil, err
		}
		err = c.waitReady(ctx)
		if err == nil {
			break
		}
		if attempt == 0 && c.apiserver.exitedWithAddrInUse() {
			log.Debug("kube-apiserver port taken, retrying on another", "port", port)
			_ = c.apiserver.stop(stopGrace)
			continue
		}
		return nil, err
	}
	log.Debug("kube-apiserver ready", "server", c.server, "elapsed", time.Since(began))

	if c.kubeconfig, err = c.writeKubeconfig(); err != nil {
		return nil, err
	}
	if err := bootstrap(ctx, c.RESTConfig(), log); err != nil {
		return nil, fmt.Errorf("bootstrap the sandbox cluster (kube-apiserver log: %s): %w", logPath, err)
	}
	log.Info("sandbox cluster ready", "server", c.server, "kubeconfig", c.kubeconfig, "elapsed", time.Since(began).Round(time.Millisecond))
	return c, nil
}

// waitReady polls /readyz through client-go until it answers "ok", the
// process exits, or ctx ends.
func (c *Cluster) waitReady(ctx context.Context) error {
	cfg := c.RESTConfig()
	cfg.Timeout = 2 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("build client for %s: %w", c.server, err)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if c.apiserver.exited() {
			return fmt.Errorf("kube-apiserver exited before becoming ready (%w); last lines of %s:\n%s",
				c.apiserver.exitErr, c.apiserver.logPath, tailFile(c.apiserver.logPath, 2048))
		}
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Raw()
		if err == nil && string(body) == "ok" {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver at %s not ready (last error: %v); see %s: %w", c.server, lastErr, c.apiserver.logPath, ctx.Err()) //nolint:errorlint // lastErr may be nil; ctx.Err() is the cause
		case <-tick.C:
		}
	}
}

func (c *Cluster) writeKubeconfig() (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["sandbox"] = &clientcmdapi.Cluster{Server: c.server, CertificateAuthorityData: c.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: c.token}
	cfg.Contexts["sandbox"] = &clientcmdapi.Context{Cluster: "sandbox", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "sandbox"
	path := filepath.Join(c.dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return path, nil
}

// RESTConfig returns an admin (system:masters) client config; a fresh copy
// each call, so callers may change it.
func (c *Cluster) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:        c.server,
		BearerToken: c.token,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: append([]byte(nil), c.caPEM...),
		},
		// client-go's default (5 QPS) would make tests crawl; this is a
		// private apiserver.
		QPS:   200,
		Burst: 400,
	}
}

// KubeconfigPath returns Dir/kubeconfig: admin credentials (a token user in
// system:masters) and the cluster CA, context "sandbox".
func (c *Cluster) KubeconfigPath() string { return c.kubeconfig }

// Server returns the API server URL, https://127.0.0.1:PORT.
func (c *Cluster) Server() string { return c.server }

// Dir returns the cluster's working directory (logs, kubeconfig).
func (c *Cluster) Dir() string { return c.dir }

// APIServerPID is the kube-apiserver child's process id (benchmarks read
// its CPU time and memory from /proc).
func (c *Cluster) APIServerPID() int { return c.apiserver.cmd.Process.Pid }

// EtcdClient is an in-process client of the cluster's etcd, for fixtures
// that write objects as another API server would (the keys are under
// EtcdPrefix, in the API server's storage encoding). Valid until Stop.
func (c *Cluster) EtcdClient() *clientv3.Client { return v3client.New(c.etcd.Server) }

// EtcdPrefix is the key prefix kube-apiserver stores objects under (its
// --etcd-prefix default).
const EtcdPrefix = "/registry"

// Stop stops kube-apiserver (SIGTERM, then SIGKILL after a few seconds),
// closes etcd and removes the etcd data and certificates. Logs and the
// kubeconfig stay in Dir unless Dir was a temporary directory. Idempotent.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		if c.apiserver != nil {
			if err := c.apiserver.stop(stopGrace); err != nil {
				errs = append(errs, err)
			}
		}
		if c.etcd != nil {
			c.etcd.Close()
		}
		if c.runDir != "" {
			if err := os.RemoveAll(c.runDir); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", c.runDir, err))
			}
		}
		if c.removeDir {
			if err := os.RemoveAll(c.dir); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", c.dir, err))
			}
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}
