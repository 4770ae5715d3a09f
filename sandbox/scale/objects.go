package scale

import (
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// NodeName is the node every pod of the world runs on (no Node object is
// needed: nothing schedules).
const NodeName = "scale-node-0"

const proxyImage = "docker.io/istio/proxyv2:" + ProxyVersion

// Namespace is namespace i, labelled for sidecar injection.
func (w *World) Namespace(i int) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: w.Names[i], Labels: map[string]string{
		"istio-injection": "enabled", "kubernetes.io/metadata.name": w.Names[i], "team": "team-" + strconv.Itoa(i%37),
	}}}
}

// Service is workload j's ClusterIP Service in namespace i.
func (w *World) Service(i, j int) *corev1.Service {
	name := w.wlNames[j]
	port := corev1.ServicePort{Name: "http-web", Port: HTTPPort, TargetPort: intstr.FromInt32(HTTPPort), Protocol: corev1.ProtocolTCP}
	if w.isTCP(j) {
		port = corev1.ServicePort{Name: "tcp-stream", Port: TCPPort, TargetPort: intstr.FromInt32(TCPPort), Protocol: corev1.ProtocolTCP}
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.Names[i], Labels: map[string]string{"app": name, "service": name}},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{port},
		},
	}
}

// Pod is workload j's pod in namespace i as a Deployment's ReplicaSet
// creates it and Istio's injector (1.28, sidecar.istio.io/status, init
// container, probe rewrite) leaves it: what `kubectl get pod -o json`
// shows on a real cluster, about 6 KB.
func (w *World) Pod(i, j int) *corev1.Pod {
	ns, name := w.Names[i], w.wlNames[j]
	hash := w.TemplateHash(i, j)
	port, portName := int32(HTTPPort), "http-web"
	if w.isTCP(j) {
		port, portName = TCPPort, "tcp-stream"
	}
	ctrl := true
	res := func(cpu, mem string) corev1.ResourceRequirements {
		return corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
			Limits: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("1Gi")}}
	}
	uid, gid, nonRoot, root := int64(1337), int64(1337), true, int64(0)
	falseV := false
	field := func(path string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}
	}
	proxyMounts := []corev1.VolumeMount{
		{Name: "workload-socket", MountPath: "/var/run/secrets/workload-spiffe-uds"},
		{Name: "credential-socket", MountPath: "/var/run/secrets/credential-uds"},
		{Name: "workload-certs", MountPath: "/var/run/secrets/workload-spiffe-credentials"},
		{Name: "istiod-ca-cert", MountPath: "/var/run/secrets/istio"},
		{Name: "istio-data", MountPath: "/var/lib/istio/data"},
		{Name: "istio-envoy", MountPath: "/etc/istio/proxy"},
		{Name: "istio-token", MountPath: "/var/run/secrets/tokens"},
		{Name: "istio-podinfo", MountPath: "/etc/istio/pod"},
	}
	expiry := int64(43200)
	readiness := &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/app-health/app/readyz", Port: intstr.FromInt32(15020), Scheme: corev1.URISchemeHTTP}},
		PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3,
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: w.PodName(i, j), Namespace: ns,
			Labels: map[string]string{
				"app": name, "version": "v1", "pod-template-hash": hash,
				"security.istio.io/tlsMode": "istio", "service.istio.io/canonical-name": name, "service.istio.io/canonical-revision": "v1",
			},
			Annotations: map[string]string{
				"istio.io/rev": "default",
				"kubectl.kubernetes.io/default-container":      "app",
				"kubectl.kubernetes.io/default-logs-container": "app",
				"prometheus.io/path":                           "/stats/prometheus",
				"prometheus.io/port":                           "15020",
				"prometheus.io/scrape":                         "true",
				"sidecar.istio.io/status":                      `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["workload-socket","credential-socket","workload-certs","istio-envoy","istio-data","istio-podinfo","istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}`,
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name + "-" + hash, UID: types.UID(fmt.Sprintf("%08x-0000-4000-8000-%012x", hash32(ns), i*100+j)), Controller: &ctrl, BlockOwnerDeletion: &ctrl}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: name, NodeName: NodeName, RestartPolicy: corev1.RestartPolicyAlways, DNSPolicy: corev1.DNSClusterFirst,
			SchedulerName: "default-scheduler", TerminationGracePeriodSeconds: ptr(int64(30)),
			InitContainers: []corev1.Container{{
				Name: "istio-init", Image: proxyImage, ImagePullPolicy: corev1.PullIfNotPresent,
				Args:      []string{"istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"},
				Resources: res("100m", "128Mi"),
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &falseV, Privileged: &falseV, ReadOnlyRootFilesystem: &falseV, RunAsGroup: &root, RunAsNonRoot: &falseV, RunAsUser: &root,
					Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}}},
				TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			}},
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.example.com/" + ns + "/" + name + ":v1", ImagePullPolicy: corev1.PullIfNotPresent,
				Ports:                  []corev1.ContainerPort{{Name: portName, ContainerPort: port, Protocol: corev1.ProtocolTCP}},
				ReadinessProbe:         readiness,
				Resources:              res("250m", "256Mi"),
				Env:                    []corev1.EnvVar{{Name: "SERVICE_NAME", Value: name}, {Name: "LOG_LEVEL", Value: "info"}},
				TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			}, {
				Name: "istio-proxy", Image: proxyImage, ImagePullPolicy: corev1.PullIfNotPresent,
				Args:  []string{"proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local", "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"},
				Ports: []corev1.ContainerPort{{Name: "http-envoy-prom", ContainerPort: 15090, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{
					{Name: "PILOT_CERT_PROVIDER", Value: "istiod"}, {Name: "CA_ADDR", Value: "istiod.istio-system.svc:15012"},
					{Name: "POD_NAME", ValueFrom: field("metadata.name")}, {Name: "POD_NAMESPACE", ValueFrom: field("metadata.namespace")},
					{Name: "INSTANCE_IP", ValueFrom: field("status.podIP")}, {Name: "SERVICE_ACCOUNT", ValueFrom: field("spec.serviceAccountName")},
					{Name: "HOST_IP", ValueFrom: field("status.hostIP")}, {Name: "ISTIO_CPU_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("0")}}},
					{Name: "PROXY_CONFIG", Value: "{}\n"},
					{Name: "ISTIO_META_POD_PORTS", Value: fmt.Sprintf("[\n    {\"name\":%q,\"containerPort\":%d,\"protocol\":\"TCP\"}\n]", portName, port)},
					{Name: "ISTIO_META_APP_CONTAINERS", Value: "app"}, {Name: "GOMEMLIMIT", Value: "1073741824"}, {Name: "GOMAXPROCS", Value: "2"},
					{Name: "ISTIO_META_CLUSTER_ID", Value: clusterName}, {Name: "ISTIO_META_NODE_NAME", ValueFrom: field("spec.nodeName")},
					{Name: "ISTIO_META_INTERCEPTION_MODE", Value: "REDIRECT"}, {Name: "ISTIO_META_WORKLOAD_NAME", Value: name},
					{Name: "ISTIO_META_OWNER", Value: "kubernetes://apis/apps/v1/namespaces/" + ns + "/deployments/" + name},
					{Name: "ISTIO_META_MESH_ID", Value: "cluster.local"}, {Name: "TRUST_DOMAIN", Value: "cluster.local"},
					{Name: "ISTIO_KUBE_APP_PROBERS", Value: fmt.Sprintf(`{"/app-health/app/readyz":{"httpGet":{"path":"/healthz","port":%d,"scheme":"HTTP"},"timeoutSeconds":1}}`, port)},
				},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(15021), Scheme: corev1.URISchemeHTTP}},
					PeriodSeconds: 15, TimeoutSeconds: 3, SuccessThreshold: 1, FailureThreshold: 4,
				},
				Resources: res("100m", "128Mi"),
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &falseV, Privileged: &falseV, ReadOnlyRootFilesystem: &nonRoot, RunAsGroup: &gid, RunAsNonRoot: &nonRoot, RunAsUser: &uid,
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
				VolumeMounts:           proxyMounts,
				TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			}},
			Volumes: []corev1.Volume{
				{Name: "workload-socket", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "credential-socket", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "workload-certs", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "istio-envoy", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
				{Name: "istio-data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "istio-podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
					{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.labels"}},
					{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.annotations"}},
				}}}},
				{Name: "istio-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "istio-ca", ExpirationSeconds: &expiry, Path: "istio-token"}},
				}}}},
				{Name: "istiod-ca-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "istio-ca-root-cert"}}}},
			},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(300))},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(300))},
			},
		},
	}
	return pod
}

// PodStatus is what a kubelet reports for a pod that started at start:
// Running and Ready, its init container done.
func (w *World) PodStatus(i, j int, pod *corev1.Pod, start time.Time) corev1.PodStatus {
	now := metav1.NewTime(start.Truncate(time.Second))
	ip := w.PodIP(i, j)
	st := corev1.PodStatus{
		Phase: corev1.PodRunning, HostIP: "172.18.0.2", HostIPs: []corev1.HostIP{{IP: "172.18.0.2"}},
		PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now, QOSClass: corev1.PodQOSBurstable,
	}
	for _, c := range []corev1.PodConditionType{"PodReadyToStartContainers", corev1.PodInitialized, corev1.PodReady, corev1.ContainersReady, corev1.PodScheduled} {
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	id := func(c string) string {
		return fmt.Sprintf("containerd://%016x%016x%016x%016x", hash32(pod.Name+c), hash32(c+pod.Name), hash32(pod.Namespace+c), hash32(c))
	}
	imageID := func(image string) string {
		return image + "@sha256:" + fmt.Sprintf("%016x%016x%016x%016x", hash32(image), hash32(image+"1"), hash32(image+"2"), hash32(image+"3"))
	}
	for _, c := range pod.Spec.InitContainers {
		st.InitContainerStatuses = append(st.InitContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: imageID(c.Image), ContainerID: id(c.Name), Ready: true, Started: ptr(false),
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now, ContainerID: id(c.Name)}},
		})
	}
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: imageID(c.Image), ContainerID: id(c.Name), Ready: true, Started: ptr(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	return st
}

func hash32(s string) uint32 {
	var h uint32 = 2166136261
	for k := 0; k < len(s); k++ {
		h ^= uint32(s[k])
		h *= 16777619
	}
	return h
}

func ptr[T any](v T) *T { return &v }
