package scale

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"path"
	"reflect"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/mtls-migrate/mtls-migrate/sandbox/cluster"
)

// etcdTxnOps is etcd's default --max-txn-ops.
const etcdTxnOps = 128

// ipAllocator labels an IPAddress as kube-apiserver's allocator does.
const ipAllocator = "ipallocator.k8s.io"

// servicesInEtcd writes the world's Services into etcd (see
// LoadOptions.ServicesInEtcd): the first of each kind through the API, as
// a reference, the rest as the API server stores them, each with its
// IPAddress; then it checks that the API server serves them, with the same
// spec as the reference of their kind.
func servicesInEtcd(ctx context.Context, kube kubernetes.Interface, etcd *clientv3.Client, w *World) (PhaseStats, error) {
	began := time.Now()
	ps := PhaseStats{Kind: "Services (in etcd)"}
	if etcd == nil {
		return ps, fmt.Errorf("LoadOptions.ServicesInEtcd needs LoadOptions.Etcd")
	}
	// References: the first Service of each port kind, through the API.
	refs := map[bool]*corev1.Service{}
	used := map[netip.Addr]bool{netip.MustParseAddr("10.96.0.1"): true} // the kubernetes Service's
	for j := 0; j < w.Opts.Workloads && len(refs) < 2; j++ {
		if refs[w.isTCP(j)] != nil {
			continue
		}
		svc, err := kube.CoreV1().Services(w.Names[0]).Create(ctx, w.Service(0, j), metav1.CreateOptions{})
		if err != nil {
			return ps, fmt.Errorf("create the reference Service %s/%s: %w", w.Names[0], w.wlNames[j], err)
		}
		refs[w.isTCP(j)] = svc
		used[netip.MustParseAddr(svc.Spec.ClusterIP)] = true
		ps.Done++
		ps.Requests++
	}
	enc := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)
	encode := func(obj runtime.Object) ([]byte, error) {
		var b bytes.Buffer
		err := enc.Encode(obj, &b)
		return b.Bytes(), err
	}
	next := netip.MustParseAddr("10.96.1.0")
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := etcd.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		if err != nil {
			return fmt.Errorf("write Services into etcd: %w", err)
		}
		ps.Requests++
		return nil
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	for i := range w.Names {
		for j := 0; j < w.Opts.Workloads; j++ {
			if i == 0 && refs[w.isTCP(j)].Name == w.wlNames[j] {
				continue
			}
			for used[next] || next.As4()[3] == 0 || next.As4()[3] == 255 {
				next = next.Next()
			}
			ip := next
			used[ip] = true
			if !netip.MustParsePrefix("10.96.0.0/16").Contains(ip) {
				return ps, fmt.Errorf("more Services than the sandbox's service range 10.96.0.0/16 holds")
			}
			svc := w.Service(i, j)
			ref := refs[w.isTCP(j)]
			svc.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
			svc.UID, svc.CreationTimestamp = uuid.NewUUID(), now
			spec := ref.Spec.DeepCopy()
			spec.Selector, spec.Ports = svc.Spec.Selector, svc.Spec.Ports
			spec.ClusterIP, spec.ClusterIPs = ip.String(), []string{ip.String()}
			svc.Spec = *spec
			addr := &networkingv1.IPAddress{
				TypeMeta: metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "IPAddress"},
				ObjectMeta: metav1.ObjectMeta{Name: ip.String(), UID: uuid.NewUUID(), CreationTimestamp: now, Labels: map[string]string{
					networkingv1.LabelIPAddressFamily: string(corev1.IPv4Protocol), networkingv1.LabelManagedBy: ipAllocator,
				}},
				Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Resource: "services", Namespace: svc.Namespace, Name: svc.Name}},
			}
			sb, err := encode(svc)
			if err != nil {
				return ps, err
			}
			ab, err := encode(addr)
			if err != nil {
				return ps, err
			}
			ops = append(ops,
				clientv3.OpPut(path.Join(cluster.EtcdPrefix, "services/specs", svc.Namespace, svc.Name), string(sb)),
				clientv3.OpPut(path.Join(cluster.EtcdPrefix, "ipaddresses", addr.Name), string(ab)))
			if len(ops)+2 > etcdTxnOps {
				if err := flush(); err != nil {
					return ps, err
				}
			}
			ps.Done++
		}
	}
	if err := flush(); err != nil {
		return ps, err
	}
	// The API server serves them, with the reference's spec, once its
	// watch cache has caught up with etcd.
	var l *corev1.ServiceList
	for deadline := time.Now().Add(time.Minute); ; {
		var err error
		if l, err = kube.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err != nil {
			return ps, fmt.Errorf("list the Services written into etcd: %w", err)
		}
		ps.Requests++
		if len(l.Items) >= w.Pods() || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	seen := 0
	for k := range l.Items {
		svc := &l.Items[k]
		if svc.Namespace == metav1.NamespaceDefault || svc.Namespace == "kube-system" {
			continue
		}
		seen++
		j := -1
		for jj, n := range w.wlNames {
			if n == svc.Name {
				j = jj
			}
		}
		if j < 0 {
			continue
		}
		got, want := svc.Spec.DeepCopy(), refs[w.isTCP(j)].Spec.DeepCopy()
		got.ClusterIP, got.ClusterIPs, want.ClusterIP, want.ClusterIPs = "", nil, "", nil
		want.Selector, want.Ports = got.Selector, got.Ports
		if !reflect.DeepEqual(got, want) {
			return ps, fmt.Errorf("Service %s/%s as served differs from one created through the API: %+v, want %+v", svc.Namespace, svc.Name, got, want)
		}
	}
	if seen != w.Pods() {
		return ps, fmt.Errorf("the API server serves %d of the %d Services written", seen, w.Pods())
	}
	ps.Took = time.Since(began)
	return ps, nil
}
