// Package xdsproxy connects the sandbox's simulated sidecars to the real
// istiod as Envoy would: one ADS stream per pod, with the node identity and
// metadata pilot-agent sends, subscribing to clusters and listeners and
// acknowledging every response. istiod's sync status (/debug/syncz) then
// lists each as a connected proxy with the nonces it sent and the proxy
// acknowledged, which is what `mtls-migrate apply` waits on.
//
// What it does not do yet: enforce the listeners it receives (the data
// plane still decides inbound and outbound modes with its own reading of
// Istio's rules; see sandbox/README.md). Hold lets a test delay the
// acknowledgements, so a wait that ends before the proxies ack is seen.
package xdsproxy

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

// Type URLs subscribed to (Envoy's ADS order: clusters, then listeners).
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// Pod is what the node identity is made of.
type Pod struct {
	Name, Namespace, IP, ServiceAccount string
	Labels                              map[string]string
}

// NodeID is pilot-agent's node ID for a sidecar:
// sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local
// (pkg/model/proxy.go in istio, ServiceNode).
func (p Pod) NodeID() string {
	return fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", p.IP, p.Name, p.Namespace, p.Namespace)
}

// metadata is the subset of pilot-agent's node metadata istiod needs to
// place the proxy (pkg/model/context.go, NodeMetadata: JSON field names).
func (p Pod) metadata(istioVersion string) (*structpb.Struct, error) {
	labels := map[string]any{}
	for k, v := range p.Labels {
		labels[k] = v
	}
	return structpb.NewStruct(map[string]any{
		"NAMESPACE": p.Namespace, "NAME": p.Name, "INSTANCE_IPS": p.IP, "CLUSTER_ID": "Kubernetes",
		"ISTIO_VERSION": istioVersion, "SERVICE_ACCOUNT": p.ServiceAccount, "LABELS": labels,
		"INTERCEPTION_MODE": "REDIRECT", "MESH_ID": "cluster.local", "WORKLOAD_NAME": p.Labels["app"],
	})
}

// Proxy is one pod's ADS stream.
type Proxy struct {
	Pod Pod
	mu  sync.Mutex
	// acked counts the responses acknowledged, per type.
	acked    map[string]int
	received map[string]int
	lastErr  error
}

// Stats returns the responses received and acknowledged per type.
func (p *Proxy) Stats() (received, acked map[string]int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, a := map[string]int{}, map[string]int{}
	for k, v := range p.received {
		r[k] = v
	}
	for k, v := range p.acked {
		a[k] = v
	}
	return r, a, p.lastErr
}

// Fleet is every simulated proxy connected to one istiod.
type Fleet struct {
	conn    *grpc.ClientConn
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	Proxies []*Proxy
	// hold, while set, makes every proxy wait this long before it acks.
	holdMu sync.Mutex
	hold   time.Duration
}

// Hold delays every acknowledgement by d from now on (0: ack at once).
func (f *Fleet) Hold(d time.Duration) {
	f.holdMu.Lock()
	f.hold = d
	f.holdMu.Unlock()
}

func (f *Fleet) holdFor() time.Duration {
	f.holdMu.Lock()
	defer f.holdMu.Unlock()
	return f.hold
}

// Connect opens one ADS stream per pod to istiod's plaintext xDS address
// (15010 in a real mesh; the sandbox's proxies are on the same host).
func Connect(ctx context.Context, grpcAddr, istioVersion string, pods []Pod) (*Fleet, error) {
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial istiod at %s: %w", grpcAddr, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &Fleet{conn: conn, cancel: cancel}
	for _, pod := range pods {
		md, err := pod.metadata(istioVersion)
		if err != nil {
			f.Close()
			return nil, err
		}
		p := &Proxy{Pod: pod, acked: map[string]int{}, received: map[string]int{}}
		f.Proxies = append(f.Proxies, p)
		node := &corev3.Node{Id: pod.NodeID(), Cluster: pod.Labels["app"] + "." + pod.Namespace, Metadata: md}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.run(ctx, p, node)
		}()
	}
	return f, nil
}

// run keeps the proxy's stream up, reconnecting as Envoy does, until ctx ends.
func (f *Fleet) run(ctx context.Context, p *Proxy, node *corev3.Node) {
	for ctx.Err() == nil {
		err := f.stream(ctx, p, node)
		p.mu.Lock()
		p.lastErr = err
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (f *Fleet) stream(ctx context.Context, p *Proxy, node *corev3.Node) error {
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(f.conn)
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	for _, t := range []string{ClusterType, ListenerType} {
		if err := s.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			return err
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.received[resp.TypeUrl]++
		p.mu.Unlock()
		if d := f.holdFor(); d > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
		}
		// An ACK: the version and nonce of what was received
		// (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack).
		if err := s.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
		p.mu.Lock()
		p.acked[resp.TypeUrl]++
		p.mu.Unlock()
	}
}

// Close ends every stream.
func (f *Fleet) Close() {
	f.cancel()
	f.wg.Wait()
	_ = f.conn.Close()
}
