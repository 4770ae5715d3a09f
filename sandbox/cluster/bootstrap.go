package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mtls-migrate/mtls-migrate/sandbox/crds"
)

const (
	// IstioNamespace is Istio's root namespace; mesh-wide policies live here.
	IstioNamespace = "istio-system"
	// MeshConfigMapName is the ConfigMap istiod reads its mesh config from;
	// the config is YAML under the "mesh" key.
	MeshConfigMapName = "istio"
	// MeshConfigKey is the ConfigMap key holding the mesh config.
	MeshConfigKey = "mesh"
)

// meshConfig is the subset of Istio's MeshConfig the sandbox sets
// (istio.io/api mesh/v1alpha1, field names as in the istio ConfigMap).
type meshConfig struct {
	RootNamespace  string `yaml:"rootNamespace"`
	EnableAutoMtls bool   `yaml:"enableAutoMtls"`
}

// bootstrap creates what an Istio-enabled cluster has and the sandbox
// needs; the three parts are independent, so they run concurrently.
func bootstrap(ctx context.Context, cfg *rest.Config, log *slog.Logger) error {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("build kubernetes client: %w", err)
	}
	ext, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("build apiextensions client: %w", err)
	}
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"apply Istio CRDs", func(ctx context.Context) error { return applyIstioCRDs(ctx, ext) }},
		{"create istio-system and the mesh ConfigMap", func(ctx context.Context) error { return createMeshConfig(ctx, kube) }},
		{"wait for the default namespace", func(ctx context.Context) error { return waitNamespace(ctx, kube, metav1.NamespaceDefault) }},
	}
	var wg sync.WaitGroup
	errs := make([]error, len(steps))
	for i, s := range steps {
		wg.Go(func() {
			start := time.Now()
			if err := s.run(ctx); err != nil {
				errs[i] = fmt.Errorf("%s: %w", s.name, err)
				return
			}
			log.Debug("bootstrap step done", "step", s.name, "elapsed", time.Since(start))
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// applyIstioCRDs creates every embedded Istio CRD in parallel and waits
// until the server reports all of them Established (served).
func applyIstioCRDs(ctx context.Context, ext apiextensionsclient.Interface) error {
	list, err := crds.Istio()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, crd := range list {
		wg.Go(func() {
			_, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{FieldManager: "mtls-migrate-sandbox"})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				errs[i] = fmt.Errorf("create CRD %s: %w", crd.Name, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	want := make(map[string]bool, len(list))
	for _, crd := range list {
		want[crd.Name] = true
	}
	return poll(ctx, 50*time.Millisecond, func() (bool, error) {
		got, err := ext.ApiextensionsV1().CustomResourceDefinitions().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, fmt.Errorf("list CRDs: %w", err)
		}
		established := 0
		for _, crd := range got.Items {
			if want[crd.Name] && isEstablished(&crd) {
				established++
			}
		}
		return established == len(want), nil
	})
}

func isEstablished(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}

// createMeshConfig creates istio-system and the "istio" ConfigMap whose
// "mesh" key holds the mesh config, as an Istio installation keeps it.
func createMeshConfig(ctx context.Context, kube kubernetes.Interface) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IstioNamespace}}
	if _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", IstioNamespace, err)
	}
	mesh, err := yaml.Marshal(meshConfig{RootNamespace: IstioNamespace, EnableAutoMtls: true})
	if err != nil {
		return fmt.Errorf("marshal mesh config: %w", err)
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: MeshConfigMapName, Namespace: IstioNamespace},
		Data:       map[string]string{MeshConfigKey: string(mesh)},
	}
	if _, err := kube.CoreV1().ConfigMaps(IstioNamespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ConfigMap %s/%s: %w", IstioNamespace, MeshConfigMapName, err)
	}
	return nil
}

// waitNamespace waits for a namespace kube-apiserver creates itself
// (default is made by its system namespaces controller shortly after start).
func waitNamespace(ctx context.Context, kube kubernetes.Interface, name string) error {
	return poll(ctx, 50*time.Millisecond, func() (bool, error) {
		_, err := kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("get namespace %s: %w", name, err)
		}
		return true, nil
	})
}

// poll calls cond every interval until it reports done, fails, or ctx ends.
func poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := cond()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
