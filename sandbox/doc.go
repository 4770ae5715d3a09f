// Package sandbox runs a small Istio-like world for end-to-end tests and
// demos of mtls-migrate: a real kube-apiserver with embedded etcd and Istio's
// CRDs (package cluster), a real Prometheus (package prometheus), and a
// simulated sidecar data plane (package dataplane) that enforces the
// PeerAuthentications and DestinationRules it watches through the API server,
// reports Istio's standard metrics and keeps the ground truth of every
// request the scenario's flows make. A scenario file (package scenario)
// declares the namespaces, workloads, Services, gateway routes, flows and
// extra objects; Start creates them all and returns once traffic flows and
// Prometheus scrapes it.
package sandbox
