// Package testcluster is the set-up of the sandbox tests that need the
// real kube-apiserver (and, through also, other cached builds such as
// istiod): written once, so every such test skips, fails under CI and
// cleans up the same way.
package testcluster

import (
	"context"
	"testing"
	"time"

	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
	"github.com/mtls-migrate/mtls-migrate/sandbox/internal/needbin"
)

// Start skips t under -short, requires the kube-apiserver build and each
// build also finds (needbin: a skip, or a failure with CI=true), and starts
// a fresh cluster that is stopped when t ends. The context is bounded by
// timeout and cancelled when t ends.
func Start(t *testing.T, timeout time.Duration, also ...func(string) (string, error)) (context.Context, *cluster.Cluster) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	needbin.Require(t, cluster.FindAPIServerBinary)
	for _, find := range also {
		needbin.Require(t, find)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	c, err := cluster.Start(ctx, cluster.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return ctx, c
}
