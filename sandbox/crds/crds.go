// Package crds embeds Istio's CustomResourceDefinitions (copied from
// istio.io/api, see the header of istio-crds.gen.yaml) so the sandbox's real
// kube-apiserver validates PeerAuthentication, DestinationRule and the other
// Istio resources exactly as a cluster with Istio installed would.
package crds

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

//go:embed istio-crds.gen.yaml
var istioYAML []byte

// IstioYAML returns the embedded multi-document YAML of Istio's CRDs.
func IstioYAML() []byte { return bytes.Clone(istioYAML) }

// Istio decodes the embedded Istio CRDs. Each call returns fresh objects.
func Istio() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	return Decode(istioYAML)
}

// Decode reads a multi-document YAML stream of CustomResourceDefinitions.
// Empty documents are skipped; any other kind is an error.
func Decode(data []byte) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*apiextensionsv1.CustomResourceDefinition
	for i := 0; ; i++ {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := dec.Decode(crd); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("decode CRD document %d: %w", i, err)
		}
		if crd.Kind == "" && crd.Name == "" {
			continue // empty document between "---" separators
		}
		if crd.Kind != "CustomResourceDefinition" {
			return nil, fmt.Errorf("document %d (%s %q) is not a CustomResourceDefinition", i, crd.Kind, crd.Name)
		}
		out = append(out, crd)
	}
}
