package controlplane

import (
	"bytes"
	"context"
	_ "embed" // the rendered injector objects
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
)

// injectorYAML is what `istioctl install` (default profile) creates for
// sidecar injection, rendered from the pinned Istio charts by
// scripts/gen-injector.sh: the istio-sidecar-injector ConfigMap (template
// and values) and MutatingWebhookConfiguration.
//
//go:embed injector.gen.yaml
var injectorYAML []byte

// InjectorConfigMapName is the ConfigMap istiod reads its injection
// template from (pilot/pkg/bootstrap/sidecarinjector.go: revision
// "default" reads istio-sidecar-injector in its own namespace).
const InjectorConfigMapName = "istio-sidecar-injector"

// InjectorWebhookName is the MutatingWebhookConfiguration the charts name
// for the default revision.
const InjectorWebhookName = "istio-sidecar-injector"

// Injector is the rendered injector objects.
type Injector struct {
	ConfigMap *corev1.ConfigMap
	Webhook   *admissionregistrationv1.MutatingWebhookConfiguration
}

// RenderedInjector parses the embedded objects (fresh copies each call).
func RenderedInjector() (*Injector, error) {
	in := &Injector{}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(injectorYAML), 64<<10)
	for {
		var raw map[string]any
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("injector.gen.yaml: %w", err)
		}
		if raw == nil {
			continue
		}
		doc, err := json.Marshal(raw)
		if err != nil {
			return nil, err
		}
		switch raw["kind"] {
		case "ConfigMap":
			in.ConfigMap = &corev1.ConfigMap{}
			err = json.Unmarshal(doc, in.ConfigMap)
		case "MutatingWebhookConfiguration":
			in.Webhook = &admissionregistrationv1.MutatingWebhookConfiguration{}
			err = json.Unmarshal(doc, in.Webhook)
		default:
			err = fmt.Errorf("unexpected kind %v", raw["kind"])
		}
		if err != nil {
			return nil, fmt.Errorf("injector.gen.yaml: %w", err)
		}
	}
	if in.ConfigMap == nil || in.Webhook == nil {
		return nil, errors.New("injector.gen.yaml lacks the ConfigMap or the MutatingWebhookConfiguration: run scripts/gen-injector.sh")
	}
	return in, nil
}

// installInjectorConfig creates the istio-sidecar-injector ConfigMap. It
// must exist before istiod starts: istiod looks for it once, at start, and
// serves no injector without it (sidecarinjector.go, initSidecarInjector).
func installInjectorConfig(ctx context.Context, kube kubernetes.Interface, namespace string) error {
	in, err := RenderedInjector()
	if err != nil {
		return err
	}
	cm := in.ConfigMap
	cm.Namespace = namespace
	if _, err := kube.CoreV1().ConfigMaps(namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ConfigMap %s/%s: %w", namespace, cm.Name, err)
	}
	return nil
}

// registerWebhook creates the charts' MutatingWebhookConfiguration with each
// webhook's clientConfig pointing at the local istiod (url instead of the
// istiod Service, which has no endpoints here) and trusting its root, then
// waits until the API server calls it: a server-side dry-run create of a pod
// that asks for injection must come back with istio-proxy. The API server
// picks up webhook configurations from an informer, so pods created right
// after the create could otherwise skip injection.
func registerWebhook(ctx context.Context, kube kubernetes.Interface, url string, caBundle []byte) error {
	in, err := RenderedInjector()
	if err != nil {
		return err
	}
	wh := in.Webhook
	for i := range wh.Webhooks {
		wh.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caBundle}
	}
	if _, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, wh, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create MutatingWebhookConfiguration %s: %w", wh.Name, err)
	}
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sandbox-injection-probe", Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{"app": "sandbox-injection-probe", "sidecar.istio.io/inject": "true"}},
		// Without the ServiceAccount admission plugin nothing defaults
		// the name, and the template projects a token for it.
		Spec: corev1.PodSpec{ServiceAccountName: "sandbox-injection-probe", Containers: []corev1.Container{{Name: "app", Image: "registry.sandbox.local/probe:v1"}}},
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		got, err := kube.CoreV1().Pods(probe.Namespace).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case err != nil && ctx.Err() != nil:
		case err != nil:
			last = err
		case HasContainer(got, "istio-proxy"):
			return nil
		default:
			last = errors.New("the pod came back without istio-proxy")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the API server does not call istiod's injection webhook at %s (last: %v): %w", url, last, ctx.Err()) //nolint:errorlint // last is context
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// HasContainer reports whether the pod has a container (or init container)
// of that name.
func HasContainer(p *corev1.Pod, name string) bool {
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for _, c := range cs {
			if c.Name == name {
				return true
			}
		}
	}
	return false
}
