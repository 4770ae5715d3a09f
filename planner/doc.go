// Package planner builds a staged migration plan (plans.Plan) from the
// cluster's inventory and Istio telemetry: one stage per namespace, each
// ready, needs-review or blocked with its evidence, risks and fixes, ordered
// so that the namespaces whose failure would hurt least go first, and the
// mesh-wide STRICT policy last.
//
// Build gathers (API calls and Prometheus queries); Decide is the pure part
// that turns an inventory.Inventory and a telemetry.Result into a plan, so
// tests and the benchmark run it on in-memory data.
//
// # Risks
//
// Every risk has a code and a severity. A stage with a "block" risk is
// blocked; with a "review" risk and no block it needs review; "info" risks
// do not change the status.
//
//	Code                          Severity  Meaning
//	PLAINTEXT_OBSERVED            block     plaintext into the namespace in the window from unidentified (sidecar-less or outside) clients
//	MESHED_CLIENT_PLAINTEXT       block     plaintext from a known meshed workload (DestinationRule, pod-IP passthrough, outbound exclusion)
//	EXTERNAL_SERVICE              block     a LoadBalancer/NodePort/externalIPs Service selects meshed pods (plaintext from outside the cluster)
//	DESTINATION_RULE_TLS_DISABLE  block     a DestinationRule anywhere in the mesh sends plaintext to a host of the namespace
//	WEBHOOK_BACKEND               block     an admission webhook, APIService or CRD conversion webhook is served by meshed pods here
//	UNVERIFIABLE                  block     a kind of traffic the plan saw (HTTP requests, TCP connections) that no probe of the stage exercises and no gate would have the samples to judge (gates.Unjudged, which pre-flight applies too)
//	SIDECAR_MISSING               review    running pods without a sidecar (STRICT does not cover them)
//	WORKLOAD_POLICY_OVERRIDE      review    a workload or port policy keeps PERMISSIVE or DISABLE after the stage
//	EXCLUDED_INBOUND_PORTS        review    ports excluded from inbound capture stay plaintext and unaffected
//	SERVER_FIRST_PROTOCOL         review    server-first protocol ports (mysql, mongo, smtp...) to check after STRICT
//	PROBE_REWRITE_DISABLED        review    HTTP kubelet probes not rewritten by the sidecar fail under STRICT
//	NO_TELEMETRY                  review    running meshed pods and no Istio metrics in the window (no data is not "no plaintext")
//	PARTIAL_TELEMETRY             review    Prometheus answered with warnings: the evidence may be incomplete
//	HEADLESS_SERVICE              review    headless Services or StatefulSets whose peers talk pod to pod
//	SIDECARLESS_CLIENT            review    a sidecar-less Pod or CronJob elsewhere names a Service of the namespace (a job the window may not have seen)
//	CURRENT_MODE_DISABLE          review    the namespace is DISABLE today: PERMISSIVE first (info on that stage), STRICT in a later stage of the same plan once that one is done (policyDigest after-stage:N)
//	EXISTING_NAMESPACE_POLICY     review    a namespace-wide PeerAuthentication not made by mtls-migrate will be changed in place; or several namespace-wide ones, all of which the stage sets (policy.alsoUpdates; info on a PERMISSIVE stage)
//	AMBIENT_NAMESPACE             review    the namespace is in ambient mode (ztunnel, no sidecars): the plan's evidence does not apply
//	GITOPS_MANAGED                review    the policy changed in place, or the namespace, is managed by Argo CD, Flux or Helm (self-heal reverts the stage)
//	NAMESPACES_NOT_READY          block/review  (mesh stage) namespaces whose stages are blocked or need review
//	NAMESPACE_EXCLUDED            review    (mesh stage) namespaces with sidecars left out of the plan
package planner
