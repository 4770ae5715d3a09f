// Package kube builds the Kubernetes and Istio clients the commands use from
// kubectl-style flags (cli-runtime's ConfigFlags), so --kubeconfig,
// --context, in-cluster config and the rest behave exactly as in kubectl.
package kube

import (
	"fmt"

	istio "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
)

// Clients are the API clients for one cluster.
type Clients struct {
	Config *rest.Config
	Kube   kubernetes.Interface
	Istio  istio.Interface
	// Metadata lists objects as their metadata only (protobuf, as
	// metadata.ConfigFor sets it up).
	Metadata metadata.Interface
}

// New builds clients from the cluster flags.
func New(getter genericclioptions.RESTClientGetter) (*Clients, error) {
	cfg, err := getter.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("load cluster configuration (check --kubeconfig and --context): %w", err)
	}
	// The planner lists every pod of the mesh; client-go's default of 5 QPS
	// would make a large mesh slow for no benefit.
	if cfg.QPS == 0 {
		cfg.QPS = 50
		cfg.Burst = 100
	}
	// Built-in kinds as protobuf: the API server encodes and the client
	// decodes a pod list about 3.5 times faster than as JSON (sandbox/scale:
	// 20,000 pods in 4.9 s instead of 17.3 s). Istio's kinds are CRDs,
	// served as JSON only, so its client keeps cfg as it is; JSON stays
	// accepted for servers (or proxies) that do not speak protobuf.
	kcfg := rest.CopyConfig(cfg)
	kcfg.ContentType = runtime.ContentTypeProtobuf
	kcfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	k, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	i, err := istio.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("istio client for %s: %w", cfg.Host, err)
	}
	m, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata client for %s: %w", cfg.Host, err)
	}
	return &Clients{Config: cfg, Kube: k, Istio: i, Metadata: m}, nil
}
