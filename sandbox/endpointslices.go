package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"

	"github.com/mtls-migrate/mtls-migrate/sandbox/scenario"
)

// endpointSliceManager is the label kube-controller-manager's EndpointSlice
// controller sets; the sandbox runs no controller manager and writes the
// slices itself, so it names itself instead.
const endpointSliceManager = "sandbox.mtls-migrate.io"

// endpointSlices writes one discovery.k8s.io/v1 EndpointSlice per Service,
// as the EndpointSlice controller would from the Service's selector and the
// Ready pods it selects: the kubernetes.io/service-name label, one endpoint
// per pod (its IP, ready/serving conditions, nodeName and a targetRef to the
// pod) and one port per Service port, named as the Service port and
// numbered with its target port. istiod's EDS is built from these
// (pilot/pkg/serviceregistry/kube/controller/endpointslice.go in istio);
// without them its outbound clusters have no endpoints.
//
// kube-apiserver refuses them through the API: endpoint addresses "may not
// be in the loopback range" (validation of discovery/v1, ValidateNonSpecialIP
// in k8s.io/kubernetes pkg/apis/discovery/validation), and every sandbox pod
// IP is a loopback address. So the slices go into etcd as the API server
// stores them (protobuf under /registry/endpointslices/NS/NAME), as the
// scale benchmark does for Services (scale/bulk.go), and are then read back
// through the API: its watch cache serves them to istiod's informers like
// any other write. RBAC and admission are not involved on that path; istiod
// reads them with its cluster-admin kubeconfig.
func (c *creator) endpointSlices(ctx context.Context) error {
	if c.etcd == nil {
		return fmt.Errorf("no etcd client to store EndpointSlices with")
	}
	pods, err := c.kube.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	svcs, err := c.kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	want := map[string]int{}
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		if len(svc.Spec.Selector) == 0 || svc.Namespace == metav1.NamespaceDefault && svc.Name == "kubernetes" {
			continue
		}
		slice := endpointSliceFor(svc, pods.Items)
		if err := putEndpointSlice(ctx, c.etcd, slice); err != nil {
			return fmt.Errorf("endpoint slice of %s/%s: %w", svc.Namespace, svc.Name, err)
		}
		want[svc.Namespace+"/"+slice.Name] = len(slice.Endpoints)
	}
	// Served by the API server once its watch cache has caught up with etcd.
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := c.kube.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelManagedBy + "=" + endpointSliceManager})
		if err != nil {
			return fmt.Errorf("list the EndpointSlices written into etcd: %w", err)
		}
		served := 0
		for _, es := range l.Items {
			if n, ok := want[es.Namespace+"/"+es.Name]; ok && n == len(es.Endpoints) {
				served++
			}
		}
		if served == len(want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the API server serves %d of the %d EndpointSlices written into etcd", served, len(want))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// putEndpointSlice stores a new EndpointSlice in etcd as kube-apiserver
// would (protobuf, its key), failing if one of that name exists.
func putEndpointSlice(ctx context.Context, etcd *clientv3.Client, es *discoveryv1.EndpointSlice) error {
	es.TypeMeta = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
	es.UID = uuid.NewUUID()
	es.CreationTimestamp = metav1.NewTime(time.Now().Truncate(time.Second))
	var b bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(es, &b); err != nil {
		return err
	}
	key := path.Join(cluster.EtcdPrefix, "endpointslices", es.Namespace, es.Name)
	resp, err := etcd.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, b.String())).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s exists already", key)
	}
	return nil
}

func endpointSliceFor(svc *corev1.Service, pods []corev1.Pod) *discoveryv1.EndpointSlice {
	yes, no := true, false
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: svc.Name + "-sandbox", Namespace: svc.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   endpointSliceManager,
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID, Controller: &yes, BlockOwnerDeletion: &yes}},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, sp := range svc.Spec.Ports {
		name, port, proto := sp.Name, sp.TargetPort.IntVal, sp.Protocol
		// The sandbox always sets numeric target ports (objects.go services).
		if port == 0 {
			port = sp.Port
		}
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto, AppProtocol: sp.AppProtocol})
	}
	for i := range pods {
		p := &pods[i]
		if p.Namespace != svc.Namespace || p.Status.PodIP == "" || !scenario.Selects(svc.Spec.Selector, p.Labels) {
			continue
		}
		node := p.Spec.NodeName
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
			NodeName:   &node,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		})
	}
	return slice
}
