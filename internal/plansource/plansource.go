// Package plansource reads a plan from where a run is told it is: a file,
// a plan published in ConfigMaps by `mtls-migrate plan publish`
// (configmap:NAMESPACE/NAME, an index and shards; see shards.go), or a plan
// kept whole in one key of a ConfigMap (configmap:NAMESPACE/NAME/KEY, for
// small plans), so that the plan reviewed in git is exactly what a
// scheduled Job executes.
package plansource

import (
	"context"
	"fmt"
	"os"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

const configMapPrefix = "configmap:"

// Source is where a plan is.
type Source struct {
	// Path is set for a file.
	Path string
	// Namespace and Name are set for a ConfigMap; Key for a plan kept
	// whole in one key, empty for a published plan (an index and shards).
	Namespace, Name, Key string
}

// Parse reads a source: "configmap:NAMESPACE/NAME" (a published plan),
// "configmap:NAMESPACE/NAME/KEY" or a file path.
func Parse(s string) (Source, error) {
	if s == "" {
		return Source{}, fmt.Errorf("empty plan source")
	}
	rest, ok := strings.CutPrefix(s, configMapPrefix)
	if !ok {
		return Source{Path: s}, nil
	}
	parts := strings.Split(rest, "/")
	if len(parts) == 2 {
		parts = append(parts, "") // a published plan: index and shards
	}
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || (len(strings.Split(rest, "/")) == 3 && parts[2] == "") {
		return Source{}, fmt.Errorf("plan source %q: want configmap:NAMESPACE/NAME (a plan published with `mtls-migrate plan publish`) or configmap:NAMESPACE/NAME/KEY", s)
	}
	src := Source{Namespace: parts[0], Name: parts[1], Key: parts[2]}
	if errs := validation.IsDNS1123Label(src.Namespace); len(errs) > 0 {
		return Source{}, fmt.Errorf("plan source %q: namespace: %s", s, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(src.Name); len(errs) > 0 {
		return Source{}, fmt.Errorf("plan source %q: ConfigMap name: %s", s, strings.Join(errs, "; "))
	}
	if errs := validation.IsConfigMapKey(src.Key); src.Key != "" && len(errs) > 0 {
		return Source{}, fmt.Errorf("plan source %q: key: %s", s, strings.Join(errs, "; "))
	}
	return src, nil
}

// IsConfigMap reports whether the source is a ConfigMap key.
func (s Source) IsConfigMap() bool { return s.Path == "" }

// String names the source as given.
func (s Source) String() string {
	if s.IsConfigMap() && s.Key == "" {
		return configMapPrefix + s.Namespace + "/" + s.Name
	}
	if s.IsConfigMap() {
		return configMapPrefix + s.Namespace + "/" + s.Name + "/" + s.Key
	}
	return s.Path
}

// Read returns the plan's bytes, of a file or a ConfigMap key (not of a
// published plan: see Load). kube is only used for a ConfigMap source and
// may be nil for a file.
func (s Source) Read(ctx context.Context, kube kubernetes.Interface) ([]byte, error) {
	if !s.IsConfigMap() {
		b, err := os.ReadFile(s.Path) // #nosec G304 -- the user names the plan to load.
		if err != nil {
			return nil, fmt.Errorf("read plan: %w", err)
		}
		return b, nil
	}
	if kube == nil {
		return nil, fmt.Errorf("read plan from %s: no cluster client", s)
	}
	if s.Key == "" {
		return nil, fmt.Errorf("read plan from %s: a published plan is read with Load", s)
	}
	cm, err := kube.CoreV1().ConfigMaps(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("plan ConfigMap %s/%s not found: publish the reviewed plan (mtls-migrate plan publish --plan plan.yaml --to configmap:%s/%s) and run with --plan configmap:%s/%s", s.Namespace, s.Name, s.Namespace, s.Name, s.Namespace, s.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("read plan ConfigMap %s/%s: %w", s.Namespace, s.Name, err)
	}
	if v, ok := cm.Data[s.Key]; ok {
		return []byte(v), nil
	}
	if v, ok := cm.BinaryData[s.Key]; ok {
		return v, nil
	}
	keys := make([]string, 0, len(cm.Data))
	for k := range cm.Data {
		keys = append(keys, k)
	}
	return nil, fmt.Errorf("plan ConfigMap %s/%s has no key %q (keys: %s)", s.Namespace, s.Name, s.Key, strings.Join(keys, ", "))
}

// Loaded is a plan as a run uses it: validated, with the digest the
// migration state records it under and the source it came from.
type Loaded struct {
	Plan   *plans.Plan
	Digest string
	Source Source
}

// InvalidError says the plan source or the plan itself is bad input: nothing
// was touched, and the caller exits with the usage code.
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

// Load is the one way every command loads a plan: it parses the source (a
// file, configmap:NAMESPACE/NAME or configmap:NAMESPACE/NAME/KEY), reads it (kube is used for a
// ConfigMap only and is asked for lazily, so a file needs no cluster),
// validates it strictly and digests it. A bad source, an unreadable file and
// an invalid plan are *InvalidError; a ConfigMap the API server could not
// give is a plain error.
func Load(ctx context.Context, source string, kube func() (kubernetes.Interface, error)) (*Loaded, error) {
	src, err := Parse(source)
	if err != nil {
		return nil, &InvalidError{Err: err}
	}
	var client kubernetes.Interface
	if src.IsConfigMap() {
		if kube == nil {
			return nil, fmt.Errorf("read plan from %s: no cluster client", src)
		}
		if client, err = kube(); err != nil {
			return nil, err
		}
	}
	if src.IsConfigMap() && src.Key == "" {
		p, published, err := loadPublished(ctx, client, src)
		if err != nil {
			return nil, err
		}
		d, err := plans.Digest(p)
		if err != nil {
			return nil, err
		}
		if d != published {
			// The shards hold other bytes than the plan's canonical YAML
			// (not written by plan publish): the digest a run records
			// must be the one `plan` printed.
			return nil, &InvalidError{Err: fmt.Errorf("plan %s: its bytes (digest %s) are not the plan's canonical form (digest %s); publish it with mtls-migrate plan publish", src, published, d)}
		}
		return &Loaded{Plan: p, Digest: d, Source: src}, nil
	}
	data, err := src.Read(ctx, client)
	if err != nil {
		if !src.IsConfigMap() {
			return nil, &InvalidError{Err: err}
		}
		return nil, err
	}
	p, err := plans.Load(src.String(), data)
	if err != nil {
		return nil, &InvalidError{Err: err}
	}
	d, err := plans.Digest(p)
	if err != nil {
		return nil, err
	}
	return &Loaded{Plan: p, Digest: d, Source: src}, nil
}
