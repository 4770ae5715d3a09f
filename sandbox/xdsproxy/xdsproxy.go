// Package xdsproxy connects the sandbox's simulated sidecars to the real
// istiod as Envoy would: one ADS stream per pod, with the node identity and
// metadata pilot-agent sends, subscribing to clusters and listeners and
// acknowledging every response. istiod's sync status (/debug/syncz) then
// lists each as a connected proxy with the nonces it sent and the proxy
// acknowledged, which is what `mtls-migrate apply` waits on.
//
// Each proxy also subscribes to the endpoints (EDS) of the EDS clusters
// it is sent, and decodes every push into a Table (table.go) that the data
// plane enforces: which inbound filter chain a connection matches, and
// which transport socket the proxy uses to an endpoint. The Table is
// replaced before the push is acknowledged, so an ACK means "enforcing".
// Hold lets a test delay the acknowledgements, so a wait that ends before
// the proxies ack is seen.
package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
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
	// Router: a gateway (pilot-agent's "router" proxy type), which has no
	// virtualInbound listener.
	Router bool
}

// NodeID is pilot-agent's node ID: TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local
// with TYPE sidecar or router (pkg/istio-agent/agent.go ServiceNode and
// the NodeType values in pkg/model/proxy.go, in istio).
func (p Pod) NodeID() string {
	typ := "sidecar"
	if p.Router {
		typ = "router"
	}
	return fmt.Sprintf("%s~%s~%s.%s~%s.svc.cluster.local", typ, p.IP, p.Name, p.Namespace, p.Namespace)
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

	table atomic.Pointer[Table]
	// ready is closed once listeners, clusters and their endpoints have
	// all been applied once.
	ready     chan struct{}
	readyOnce sync.Once
}

// Table is what the proxy enforces now (nil before its first push).
func (p *Proxy) Table() *Table { return p.table.Load() }

// Ready is closed when the proxy has its first listeners, clusters and
// endpoints.
func (p *Proxy) Ready() <-chan struct{} { return p.ready }

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
		p := &Proxy{Pod: pod, acked: map[string]int{}, received: map[string]int{}, ready: make(chan struct{})}
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

// state is one stream's view of the last response of each type.
type state struct {
	res      map[string][]*anypb.Any
	versions map[string]string
	// eds is the EDS subscription sent; edsVersion/edsNonce its last response.
	eds                []string
	edsSent            bool
	edsVersion, edsNon string
	// endpoints merges every EDS response: in the state-of-the-world
	// protocol only Listener and Cluster responses hold every resource; an
	// EDS response holds those that changed, and the others stand
	// (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#grouping-resources-into-responses;
	// istiod sends partial EDS pushes, pilot/pkg/xds/eds.go).
	endpoints map[string]map[string]*structpb.Struct
	edsErr    error
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
	st := &state{res: map[string][]*anypb.Any{}, versions: map[string]string{}}
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
		st.versions[resp.TypeUrl] = resp.VersionInfo
		if resp.TypeUrl == EndpointType {
			st.edsVersion, st.edsNon = resp.VersionInfo, resp.Nonce
			eps, err := decodeEndpoints(resp.Resources)
			st.edsErr = err
			if st.endpoints == nil {
				st.endpoints = map[string]map[string]*structpb.Struct{}
			}
			for k, v := range eps {
				st.endpoints[k] = v
			}
		} else {
			st.res[resp.TypeUrl] = resp.Resources
		}
		t := st.build()
		p.table.Store(t)
		// Subscribe to the endpoints of the EDS clusters, as Envoy does
		// while it warms them (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#resource-warming).
		if resp.TypeUrl == ClusterType && t.clusters != nil {
			if names := edsNames(t.clusters); !st.edsSent || !slices.Equal(names, st.eds) {
				st.eds, st.edsSent = names, true
				for k := range st.endpoints {
					if !slices.Contains(names, k) {
						delete(st.endpoints, k) // unsubscribed
					}
				}
				req := &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: EndpointType, ResourceNames: names, VersionInfo: st.edsVersion, ResponseNonce: st.edsNon}
				if err := s.Send(req); err != nil {
					return err
				}
			}
		}
		_, haveListeners := st.res[ListenerType]
		if t.Err == nil && haveListeners && (t.inbound != nil || p.Pod.Router) && t.clusters != nil && (len(st.eds) == 0 || t.endpoints != nil) {
			p.readyOnce.Do(func() { close(p.ready) })
		}
		// An ACK: the version and nonce of what was received
		// (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack).
		// A push that did not decode is still acknowledged: the sandbox
		// fails closed on it instead of NACKing, and the Table says why.
		ack := &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}
		if resp.TypeUrl == EndpointType {
			ack.ResourceNames = st.eds
		}
		if err := s.Send(ack); err != nil {
			return err
		}
		p.mu.Lock()
		p.acked[resp.TypeUrl]++
		p.mu.Unlock()
	}
}

// build decodes the last response of each type into a new Table.
func (st *state) build() *Table {
	t := &Table{Versions: map[string]string{}, At: time.Now()}
	for k, v := range st.versions {
		t.Versions[k] = v
	}
	var errs []error
	if res, ok := st.res[ListenerType]; ok {
		in, err := decodeListeners(res)
		errs = append(errs, err)
		t.inbound = in
	}
	if res, ok := st.res[ClusterType]; ok {
		cs, err := decodeClusters(res)
		errs = append(errs, err)
		t.clusters = cs
	}
	if st.endpoints != nil {
		t.endpoints = make(map[string]map[string]*structpb.Struct, len(st.endpoints))
		for k, v := range st.endpoints {
			t.endpoints[k] = v
		}
		errs = append(errs, st.edsErr)
	}
	t.Err = errors.Join(errs...)
	return t
}

// WaitReady waits until every proxy has had its first listeners, clusters
// and endpoints, or ctx ends.
func (f *Fleet) WaitReady(ctx context.Context) error {
	for _, p := range f.Proxies {
		select {
		case <-p.ready:
		case <-ctx.Done():
			if _, _, err := p.Stats(); err != nil {
				return fmt.Errorf("proxy %s/%s has no configuration from istiod yet (last stream error: %w): %w", p.Pod.Namespace, p.Pod.Name, err, ctx.Err())
			}
			return fmt.Errorf("proxy %s/%s has no configuration from istiod yet: %w", p.Pod.Namespace, p.Pod.Name, ctx.Err())
		}
	}
	return nil
}

// Proxy returns the proxy of pod ns/name (nil if not connected).
func (f *Fleet) Proxy(ns, name string) *Proxy {
	for _, p := range f.Proxies {
		if p.Pod.Namespace == ns && p.Pod.Name == name {
			return p
		}
	}
	return nil
}

// Close ends every stream.
func (f *Fleet) Close() {
	f.cancel()
	f.wg.Wait()
	_ = f.conn.Close()
}
