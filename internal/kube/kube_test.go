package kube

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// TestKubeClientAsksForProtobufAndIstioForJSON: built-in kinds are listed
// as protobuf (with JSON still accepted), Istio's CRDs as JSON, which is
// all the API server serves for them.
func TestKubeClientAsksForProtobufAndIstioForJSON(t *testing.T) {
	var mu sync.Mutex
	accepts := map[string]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		accepts[r.URL.Path] = r.Header.Get("Accept")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		kind, version := "PodList", "v1"
		if strings.Contains(r.URL.Path, "istio.io") {
			kind, version = "PeerAuthenticationList", "security.istio.io/v1"
		}
		_, _ = w.Write([]byte(`{"kind":"` + kind + `","apiVersion":"` + version + `","metadata":{},"items":[]}`))
	}))
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "config")
	cfg := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: " + srv.URL + "}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\ncurrent-context: c\n"
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	c, err := New(flags)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Istio.SecurityV1().PeerAuthentications("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := accepts["/api/v1/pods"]; !strings.HasPrefix(got, "application/vnd.kubernetes.protobuf") || !strings.Contains(got, "application/json") {
		t.Errorf("pods: Accept %q, want protobuf first, then JSON", got)
	}
	if got := accepts["/apis/security.istio.io/v1/peerauthentications"]; strings.Contains(got, "protobuf") {
		t.Errorf("PeerAuthentications: Accept %q, want JSON only", got)
	}
	if c.Config.ContentType == "application/vnd.kubernetes.protobuf" {
		t.Error("the shared config (dynamic and Istio clients) was switched to protobuf")
	}
}
