package cluster

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// startEtcd runs a single-member etcd inside this process, data in dataDir,
// logs (level error) in logFile. It retries once with new ports if a port
// was taken between choosing and binding it.
func startEtcd(ctx context.Context, dataDir, logFile string) (*embed.Etcd, string, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		e, clientURL, err := startEtcdOnce(ctx, dataDir, logFile)
		if err == nil {
			return e, clientURL, nil
		}
		lastErr = err
		if !isAddrInUse(err.Error()) {
			break
		}
	}
	return nil, "", lastErr
}

func startEtcdOnce(ctx context.Context, dataDir, logFile string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}

	cfg := embed.NewConfig()
	cfg.Name = "sandbox"
	cfg.Dir = dataDir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{logFile}
	// A throwaway single member: elect fast, and skip fsync (data dies with
	// the sandbox anyway).
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.UnsafeNoFsync = true
	cfg.EnableGRPCGateway = false

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("start embedded etcd (data %s, log %s): %w", dataDir, logFile, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, clientURL.String(), nil
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("embedded etcd failed while starting (see %s): %w", logFile, err)
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("embedded etcd not ready after 30s: see %s", filepath.Clean(logFile))
	case <-ctx.Done():
		e.Close()
		return nil, "", fmt.Errorf("start embedded etcd: %w", ctx.Err())
	}
}
