package dataplane

import (
	"context"
	"fmt"
	"time"

	"gopkg.in/yaml.v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// GVRs the data plane watches.
var (
	PeerAuthenticationGVR = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
	DestinationRuleGVR    = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}
	configMapGVR          = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
)

// policySnapshot is what the sidecars enforce; replaced atomically on every
// change, so a new policy reaches every sidecar as soon as the watch event
// arrives (Envoy gets it by xDS push within about a second).
type policySnapshot struct {
	pas  []PeerAuthn
	drs  []DestRule
	root string
}

func (d *DataPlane) snapshot() *policySnapshot {
	s := d.snap.Load()
	if d.blind.Load() {
		return &policySnapshot{root: s.root}
	}
	return s
}

// BlindOwnRules makes, for tests, the data plane's own rules see no
// PeerAuthentications or DestinationRules (everything PERMISSIVE, auto
// mTLS), so what is still enforced comes from the Enforcer alone.
func (d *DataPlane) BlindOwnRules(blind bool) { d.blind.Store(blind) }

// Watch starts informers on PeerAuthentications, DestinationRules and the
// mesh ConfigMap (istio-system/istio, for rootNamespace) and returns once
// their caches are synced and the first snapshot is in place.
func (d *DataPlane) Watch(ctx context.Context) error {
	if d.dyn == nil {
		return nil
	}
	f := dynamicinformer.NewDynamicSharedInformerFactory(d.dyn, 0)
	pa := f.ForResource(PeerAuthenticationGVR).Informer()
	dr := f.ForResource(DestinationRuleGVR).Informer()
	mf := dynamicinformer.NewFilteredDynamicSharedInformerFactory(d.dyn, 0, "istio-system", func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=istio"
	})
	cm := mf.ForResource(configMapGVR).Informer()

	rebuild := func() {
		s := &policySnapshot{root: "istio-system"}
		for _, o := range pa.GetStore().List() {
			if u, ok := o.(*unstructured.Unstructured); ok {
				s.pas = append(s.pas, PeerAuthnFromUnstructured(u))
			}
		}
		sortPolicies(s.pas)
		for _, o := range dr.GetStore().List() {
			if u, ok := o.(*unstructured.Unstructured); ok {
				s.drs = append(s.drs, DestRuleFromUnstructured(u))
			}
		}
		for _, o := range cm.GetStore().List() {
			if u, ok := o.(*unstructured.Unstructured); ok {
				if root := rootNamespaceFrom(u); root != "" {
					s.root = root
				}
			}
		}
		d.snap.Store(s)
		d.policyAt.Store(time.Now().UnixNano())
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { rebuild() },
		UpdateFunc: func(any, any) { rebuild() },
		DeleteFunc: func(any) { rebuild() },
	}
	for _, inf := range []cache.SharedIndexInformer{pa, dr, cm} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
	}
	f.Start(d.ctx.Done())
	mf.Start(d.ctx.Done())
	d.wg.Add(1)
	go func() { defer d.wg.Done(); <-d.ctx.Done(); f.Shutdown(); mf.Shutdown() }()

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), pa.HasSynced, dr.HasSynced, cm.HasSynced) {
		return fmt.Errorf("watch PeerAuthentications/DestinationRules: caches not synced within 30s (are the Istio CRDs installed?)")
	}
	rebuild()
	return nil
}

// rootNamespaceFrom reads meshConfig.rootNamespace from the `mesh` key of
// the istio ConfigMap (https://istio.io/latest/docs/reference/config/istio.mesh.v1alpha1/#MeshConfig).
func rootNamespaceFrom(u *unstructured.Unstructured) string {
	mesh, _, _ := unstructured.NestedString(u.Object, "data", "mesh")
	var mc struct {
		RootNamespace string `yaml:"rootNamespace"`
	}
	if yaml.Unmarshal([]byte(mesh), &mc) != nil {
		return ""
	}
	return mc.RootNamespace
}
