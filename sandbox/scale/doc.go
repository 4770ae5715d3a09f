// Package scale measures what a user of mtls-migrate waits for on a large
// mesh: the built binary's `plan` and `status` against the sandbox's real
// kube-apiserver holding a synthetic mesh, and a Prometheus-compatible HTTP
// endpoint answering from the same synthetic world.
//
// A World (world.go) is N namespaces of W workloads (one injected, Running
// pod and one Service each) and F inbound flows per namespace, a few of them
// plaintext in a fixed pattern (see Class), each flow a set of Istio
// standard-metric counters rising at a constant rate. Load (load.go) writes
// the pods and Services into the API server; PromServer (promserver.go)
// evaluates the PromQL it is sent over those counters (promql.go, eval.go:
// the subset of PromQL the product uses, everything else refused) and
// answers in Prometheus' JSON; WriteOpenMetrics (openmetrics.go) writes the
// same counters as OpenMetrics for promtool, so a real Prometheus can be
// backfilled with the same world and both answers compared. Run (run.go)
// puts it together and checks the plan's decisions against the world's
// ground truth (Expect).
package scale
