package planner

import (
	"strings"
	"testing"
	"time"

	apisecurity "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// orders is a meshed namespace called by a meshed web client over mTLS:
// ready unless a case adds a trap.
func orders() *world {
	return newWorld().
		ns("orders", true).workload("orders", "orders", true, []int32{8080}).service("orders", "orders", "", 8080, 8080, "http").
		ns("web", true).workload("web", "web", true, []int32{8080}).service("web", "web", "", 80, 8080, "http").
		flow("web", "web", "orders", "orders", "mutual_tls", 4)
}

func TestPlanRisks(t *testing.T) {
	old := testNow.Add(-48 * time.Hour)
	tests := []struct {
		name     string
		world    func() *world
		code     string
		severity plans.Severity
		status   plans.Status
	}{
		{"TestPlanReadyWithoutTraps", orders, "", "", plans.StatusReady},
		{"TestPlanBlocksNamespaceWithPlaintextFromOutsideMesh", func() *world {
			return orders().ns("legacy", false).workload("legacy", "reporting", false, nil).flow("unknown", "unknown", "orders", "orders", "none", 2)
		}, CodePlaintextObserved, plans.SeverityBlock, plans.StatusBlocked},
		{"TestPlanBlocksNamespaceWithPlaintextFromMeshedClient", func() *world {
			return orders().flow("web", "web", "orders", "orders", "none", 1)
		}, CodeMeshedClientPlaintext, plans.SeverityBlock, plans.StatusBlocked},
		{"TestPlanBlocksNamespaceBehindLoadBalancer", func() *world {
			return orders().selectorService("orders", "orders-external", "orders", "NodePort", 80, 8080)
		}, CodeExternalService, plans.SeverityBlock, plans.StatusBlocked},
		{"TestPlanBlocksNamespaceWithDestinationRuleDisable", func() *world {
			return orders().destinationRule("web", "orders-plaintext", "orders.orders.svc.cluster.local")
		}, CodeDestinationRuleDisable, plans.SeverityBlock, plans.StatusBlocked},
		{"TestPlanBlocksNamespaceWithShortHostDestinationRule", func() *world {
			return orders().destinationRule("orders", "local", "orders")
		}, CodeDestinationRuleDisable, plans.SeverityBlock, plans.StatusBlocked},
		{"TestPlanBlocksNamespaceServingWebhook", func() *world {
			w := orders()
			path := "/validate"
			w.kube = append(w.kube, &admissionv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "orders-validator"},
				Webhooks: []admissionv1.ValidatingWebhook{{Name: "v.orders.io", ClientConfig: admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{Namespace: "orders", Name: "orders", Path: &path}}}}})
			return w
		}, CodeWebhookBackend, plans.SeverityBlock, plans.StatusBlocked},
		{"TestPlanReviewsNamespaceWithSidecarlessPods", func() *world {
			return orders().workload("orders", "batch", false, nil)
		}, CodeSidecarMissing, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsWorkloadPolicyKeepingPermissive", func() *world {
			return orders().peerAuth("orders", "orders-open", old, map[string]string{"app": "orders"}, apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, nil)
		}, CodeWorkloadPolicyOverride, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsExcludedInboundPorts", func() *world {
			w := newWorld().ns("orders", true).
				workload("orders", "orders", true, []int32{8080, 9000}, withAnnotation("traffic.sidecar.istio.io/excludeInboundPorts", "9000")).
				service("orders", "orders", "", 8080, 8080, "http").flow("web", "web", "orders", "orders", "mutual_tls", 1)
			return w
		}, CodeExcludedInboundPorts, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsServerFirstProtocol", func() *world {
			return orders().workload("orders", "db", true, []int32{3306}).service("orders", "db", "", 3306, 3306, "mysql")
		}, CodeServerFirstProtocol, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsProbeRewriteDisabled", func() *world {
			w := newWorld().ns("orders", true).
				workload("orders", "orders", true, []int32{8080}, withAnnotation("sidecar.istio.io/rewriteAppHTTPProbers", "false"), withHTTPProbe(8080)).
				service("orders", "orders", "", 8080, 8080, "http").flow("web", "web", "orders", "orders", "mutual_tls", 1)
			return w
		}, CodeProbeRewriteDisabled, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsMeshedNamespaceWithoutTelemetry", func() *world {
			return newWorld().ns("orders", true).workload("orders", "orders", true, []int32{8080}).service("orders", "orders", "", 8080, 8080, "http")
		}, CodeNoTelemetry, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsHeadlessService", func() *world {
			w := orders()
			w.kube = append(w.kube, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "orders-peers", Namespace: "orders"},
				Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "orders"}, Ports: []corev1.ServicePort{{Name: "tcp", Port: 7000, TargetPort: intstr.FromInt32(7000)}}}})
			return w
		}, CodeHeadlessService, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsStatefulSet", func() *world {
			w := orders()
			w.kube = append(w.kube, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "orders"},
				Spec: appsv1.StatefulSetSpec{ServiceName: "orders", Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "orders"}}}})
			return w
		}, CodeHeadlessService, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsSidecarlessCronJobCallingNamespace", func() *world {
			w := orders().ns("batch", false)
			w.kube = append(w.kube, &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "nightly-invoices", Namespace: "batch"},
				Spec: batchv1.CronJobSpec{Schedule: "0 2 * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "invoicer", Args: []string{"--target", "http://orders.orders:8080/"}}}}}}}}})
			return w
		}, CodeSidecarlessClient, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsExistingNamespacePolicy", func() *world {
			return orders().peerAuth("orders", "legacy-permissive", old, nil, apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, nil)
		}, CodeExistingNamespacePolicy, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsWorkloadThatIsDisable", func() *world {
			return orders().peerAuth("orders", "orders-off", old, map[string]string{"app": "orders"}, apisecurity.PeerAuthentication_MutualTLS_DISABLE, nil)
		}, CodeCurrentModeDisable, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsNamespaceThatIsDisable", func() *world {
			return orders().peerAuth("orders", "off", old, nil, apisecurity.PeerAuthentication_MutualTLS_DISABLE, nil)
		}, CodeCurrentModeDisable, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsAmbientNamespace", func() *world {
			return orders().nsLabel("orders", "istio.io/dataplane-mode", "ambient")
		}, CodeAmbientNamespace, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsPolicyManagedByArgoCD", func() *world {
			w := orders().peerAuth("orders", "default", old, nil, apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, nil)
			pa := w.istio[len(w.istio)-1].(*securityv1.PeerAuthentication)
			pa.Annotations = map[string]string{"argocd.argoproj.io/tracking-id": "shop:security.istio.io/PeerAuthentication:orders/default"}
			pa.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "argocd-controller", Operation: metav1.ManagedFieldsOperationApply}}
			return w
		}, CodeGitOpsManaged, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanReviewsNamespaceManagedByFlux", func() *world {
			return orders().nsLabel("orders", "kustomize.toolkit.fluxcd.io/name", "apps")
		}, CodeGitOpsManaged, plans.SeverityReview, plans.StatusNeedsReview},
		{"TestPlanIgnoresOwnNamespacePolicy", func() *world {
			return orders().peerAuth("orders", "default", old, nil, apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, map[string]string{peerauth.ManagedByLabel: peerauth.ManagedByValue})
		}, "", "", plans.StatusReady},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.world().mustBuild(t)
			st := stageOf(p, "orders")
			if st == nil {
				t.Fatalf("no STRICT stage for orders in %+v", p.Stages)
			}
			if st.Status != tt.status {
				t.Errorf("status = %s, want %s; risks %+v", st.Status, tt.status, st.Risks)
			}
			if tt.code == "" {
				for _, r := range st.Risks {
					if r.Severity != plans.SeverityInfo {
						t.Errorf("unexpected risk %+v", r)
					}
				}
				return
			}
			r := hasRisk(st, tt.code)
			if r == nil {
				t.Fatalf("no %s risk in %+v", tt.code, st.Risks)
			}
			if r.Severity != tt.severity || r.Message == "" || r.Fix == "" || r.Object.Name == "" {
				t.Errorf("risk = %+v, want severity %s with message, fix and object", r, tt.severity)
			}
		})
	}
}

func TestPlanUpdatesExistingNamespacePolicy(t *testing.T) {
	p := orders().peerAuth("orders", "legacy-permissive", testNow.Add(-time.Hour), nil, apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, nil).mustBuild(t)
	st := stageOf(p, "orders")
	if st.Policy.Metadata.Name != "legacy-permissive" || !st.Policy.UpdatesExisting || st.PolicyDigest == "" {
		t.Errorf("policy = %+v digest %q, want the existing one updated in place", st.Policy, st.PolicyDigest)
	}
	if web := stageOf(p, "web"); web.Policy.Metadata.Name != "default" || web.Policy.UpdatesExisting || web.Policy.Metadata.Labels[peerauth.ManagedByLabel] != peerauth.ManagedByValue {
		t.Errorf("web policy = %+v, want a new labelled default", web.Policy)
	}
}

func TestPlanRecordsWorkloadModesBeforeAndAfter(t *testing.T) {
	w := orders().peerAuth("orders", "orders-port", testNow.Add(-time.Hour), map[string]string{"app": "orders"}, apisecurity.PeerAuthentication_MutualTLS_UNSET, nil)
	pa := w.istio[len(w.istio)-1].(*securityv1.PeerAuthentication)
	pa.Spec.PortLevelMtls = map[uint32]*apisecurity.PeerAuthentication_MutualTLS{8080: {Mode: apisecurity.PeerAuthentication_MutualTLS_DISABLE}}
	st := stageOf(w.mustBuild(t), "orders")
	want := plans.ModeChange{Workload: "orders", Port: 8080, Before: plans.ModeDisable, After: plans.ModeDisable}
	if len(st.Modes) != 1 || st.Modes[0] != want {
		t.Errorf("modes = %+v, want [%+v]", st.Modes, want)
	}
	if hasRisk(st, CodeWorkloadPolicyOverride) == nil {
		t.Errorf("port 8080 stays DISABLE: want WORKLOAD_POLICY_OVERRIDE, got %+v", st.Risks)
	}
}

func TestPlanSetsEveryNamespaceWidePolicyAndSaysSo(t *testing.T) {
	p := orders().
		peerAuth("orders", "legacy-permissive", testNow.Add(-2*time.Hour), nil, apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, nil).
		peerAuth("orders", "team-permissive", testNow.Add(-time.Hour), nil, apisecurity.PeerAuthentication_MutualTLS_PERMISSIVE, nil).
		mustBuild(t)
	st := stageOf(p, "orders")
	if st.Policy.Metadata.Name != "legacy-permissive" || !st.Policy.UpdatesExisting || len(st.Policy.AlsoUpdates) != 1 || st.Policy.AlsoUpdates[0] != "team-permissive" {
		t.Fatalf("policy = %+v, want the oldest updated and the other too", st.Policy)
	}
	r := hasRisk(st, CodeExistingNamespacePolicy)
	if r == nil || !strings.Contains(r.Message, "namespace orders has 2 namespace-wide policies; all 2 are set to STRICT") {
		t.Fatalf("risk = %+v, want the reviewer told that both are set", r)
	}
}

func TestPlanNeverWritesIntoAWorkloadPolicyNamedDefault(t *testing.T) {
	p := orders().peerAuth("orders", "default", testNow.Add(-time.Hour), map[string]string{"app": "orders"}, apisecurity.PeerAuthentication_MutualTLS_STRICT, nil).mustBuild(t)
	if st := stageOf(p, "orders"); st.Policy.Metadata.Name != "mtls-migrate-default" || st.Policy.UpdatesExisting {
		t.Fatalf("policy = %+v, want a new mtls-migrate-default", st.Policy)
	}
}
