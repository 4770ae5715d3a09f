// Package meshconfig reads the mesh config istiod runs with: the `mesh` key
// (YAML) of ConfigMap istio in istio-system. The planner records what it
// says in the plan (the root namespace, auto mTLS) and apply checks the
// live one against the plan, both through Read, so the two can never read
// it differently.
package meshconfig

import (
	"context"
	"fmt"

	"gopkg.in/yaml.v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DefaultRootNamespace is Istio's default meshConfig.rootNamespace.
const DefaultRootNamespace = "istio-system"

// Where istiod reads meshConfig from: the `mesh` key of the `istio`
// ConfigMap in its namespace
// (https://istio.io/latest/docs/reference/config/istio.mesh.v1alpha1/).
const (
	ConfigMapName      = "istio"
	ConfigMapNamespace = "istio-system"
	Key                = "mesh"
)

// Config is what the tool reads of the mesh config.
type Config struct {
	// RootNamespace is meshConfig.rootNamespace, DefaultRootNamespace when
	// unset or when the ConfigMap is absent.
	RootNamespace string
	// AutoMTLS is meshConfig.enableAutoMtls (Istio's default true when
	// unset); nil when the ConfigMap is absent.
	AutoMTLS *bool
	// Found is false when the ConfigMap is absent and the defaults were
	// assumed.
	Found bool
}

// Source names the ConfigMap and key, for messages.
func Source() string {
	return fmt.Sprintf("ConfigMap %s/%s (key %q)", ConfigMapNamespace, ConfigMapName, Key)
}

// Read reads the mesh config. An absent ConfigMap is Istio's defaults
// (Found false); any other error, or a `mesh` key that is not YAML, is an
// error: a config that cannot be read is never taken for the default.
func Read(ctx context.Context, k kubernetes.Interface) (Config, error) {
	c := Config{RootNamespace: DefaultRootNamespace}
	cm, err := k.CoreV1().ConfigMaps(ConfigMapNamespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read mesh config %s/%s: %w", ConfigMapNamespace, ConfigMapName, err)
	}
	c.Found = true
	var mc struct {
		RootNamespace  string `yaml:"rootNamespace"`
		EnableAutoMtls *bool  `yaml:"enableAutoMtls"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data[Key]), &mc); err != nil {
		return c, fmt.Errorf("parse key %q of ConfigMap %s/%s: %w", Key, ConfigMapNamespace, ConfigMapName, err)
	}
	if mc.RootNamespace != "" {
		c.RootNamespace = mc.RootNamespace
	}
	auto := true // meshConfig's default for enableAutoMtls
	if mc.EnableAutoMtls != nil {
		auto = *mc.EnableAutoMtls
	}
	c.AutoMTLS = &auto
	return c, nil
}
