// Package kube builds the Kubernetes and Istio clients the commands use from
// kubectl-style flags (cli-runtime's ConfigFlags), so --kubeconfig,
// --context, in-cluster config and the rest behave exactly as in kubectl.
package kube

import (
	"fmt"

	istio "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Clients are the API clients for one cluster.
type Clients struct {
	Config *rest.Config
	Kube   kubernetes.Interface
	Istio  istio.Interface
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
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	i, err := istio.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("istio client for %s: %w", cfg.Host, err)
	}
	return &Clients{Config: cfg, Kube: k, Istio: i}, nil
}
