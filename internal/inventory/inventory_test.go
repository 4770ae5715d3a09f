package inventory

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodFromReadsSidecarShapes(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	native := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api-7d9f-x", Namespace: "ns", Labels: map[string]string{"pod-template-hash": "7d9f"},
			Annotations:     map[string]string{"traffic.sidecar.istio.io/excludeInboundPorts": "9000, 9100", "sidecar.istio.io/rewriteAppHTTPProbers": "false"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "api-7d9f", Controller: ptr(true)}}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "istio-proxy", RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"},
	}
	native.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{}}}
	native.Spec.Containers[0].LivenessProbe.HTTPGet.Port.Type = 1
	native.Spec.Containers[0].LivenessProbe.HTTPGet.Port.StrVal = "http"
	p := PodFrom(native)
	if !p.Sidecar || p.Gateway || p.Workload != "api" || p.WorkloadKind != "Deployment" || !p.Running {
		t.Errorf("pod = %+v", p)
	}
	if len(p.ExcludedInboundPorts) != 2 || !p.Excluded(9100) || !p.RewriteProbesDisabled || len(p.HTTPProbePorts) != 1 || p.HTTPProbePorts[0] != 8080 {
		t.Errorf("capture/probes = %+v", p)
	}
	plain := &corev1.Pod{Spec: corev1.PodSpec{InitContainers: []corev1.Container{{Name: "istio-proxy"}}, Containers: []corev1.Container{{Name: "app"}}}}
	if PodFrom(plain).Sidecar {
		t.Errorf("an init container without restartPolicy Always is not a sidecar")
	}
}

func ptr[T any](v T) *T { return &v }
