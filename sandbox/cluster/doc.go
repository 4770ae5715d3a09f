// Package cluster runs a real, minimal Kubernetes control plane for the
// sandbox: an embedded etcd (go.etcd.io/etcd/server/v3/embed) and a
// kube-apiserver child process built from source by
// scripts/build-kube-apiserver.sh. There is no kubelet, scheduler or
// controller-manager: objects are stored, validated (including Istio's CRDs,
// applied at start) and authorised with RBAC exactly as on a real cluster,
// but nothing reconciles them.
//
// Start returns once /readyz is ok and the bootstrap objects exist: Istio's
// CRDs (Established), namespace istio-system with Istio's mesh ConfigMap, and
// the default namespace. Callers use RESTConfig or KubeconfigPath, and must
// call Stop.
package cluster
