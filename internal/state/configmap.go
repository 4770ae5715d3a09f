package state

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/mtls-migrate/mtls-migrate/internal/kuberetry"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
)

// ConfigMap names and keys.
const (
	ConfigMapName    = "mtls-migrate-state"
	DefaultNamespace = "mtls-migrate"
	// Key holds the state as JSON.
	Key = "state.json"
)

// ConfigMapStore keeps the state in a ConfigMap. It creates the ConfigMap,
// never the namespace: the tool's namespace is the operator's decision (and
// the scheduled Job's RBAC is scoped to it).
type ConfigMapStore struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
}

// NewConfigMapStore returns a store on ConfigMap mtls-migrate-state in namespace.
func NewConfigMapStore(c kubernetes.Interface, namespace string) *ConfigMapStore {
	return &ConfigMapStore{Client: c, Namespace: namespace, Name: ConfigMapName}
}

func (c *ConfigMapStore) where() string { return c.Namespace + "/" + c.Name }

// Load reads the state; a missing ConfigMap is an empty state.
func (c *ConfigMapStore) Load(ctx context.Context) (*State, error) {
	var cm *corev1.ConfigMap
	err := kuberetry.Do(ctx, func() (err error) {
		cm, err = c.Client.CoreV1().ConfigMaps(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		return &State{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read migration state from ConfigMap %s: %w", c.where(), err)
	}
	s, err := decode([]byte(cm.Data[Key]))
	if err != nil {
		return nil, fmt.Errorf("ConfigMap %s key %s: %w", c.where(), Key, err)
	}
	s.resourceVersion = cm.ResourceVersion
	return s, nil
}

// Update re-reads the ConfigMap, applies fn and writes it back with the
// resourceVersion it read (an update precondition the API server enforces):
// on a conflict, someone else wrote in between, so it re-reads and calls fn
// again rather than overwriting their write.
func (c *ConfigMapStore) Update(ctx context.Context, fn func(*State) error) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cms := c.Client.CoreV1().ConfigMaps(c.Namespace)
		var cm *corev1.ConfigMap
		err := kuberetry.Do(ctx, func() (err error) {
			cm, err = cms.Get(ctx, c.Name, metav1.GetOptions{})
			return err
		})
		exists := err == nil
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("read migration state from ConfigMap %s: %w", c.where(), err)
		}
		var s *State
		if exists {
			if s, err = decode([]byte(cm.Data[Key])); err != nil {
				return fmt.Errorf("ConfigMap %s key %s: %w", c.where(), Key, err)
			}
		} else {
			s = &State{}
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
				Name:      c.Name,
				Namespace: c.Namespace,
				Labels:    map[string]string{peerauth.ManagedByLabel: peerauth.ManagedByValue},
			}}
		}
		if err := fn(s); err != nil {
			return err
		}
		data, err := encode(s)
		if err != nil {
			return err
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[Key] = string(data)
		if exists {
			// Retried on 429/5xx/timeouts only; the update carries the
			// resourceVersion read above, so a retry of a write that did land
			// is a 409 and goes round RetryOnConflict (re-read, fn again).
			err = kuberetry.Do(ctx, func() error {
				_, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: peerauth.FieldManager})
				return err
			})
			if err != nil && !apierrors.IsConflict(err) {
				return fmt.Errorf("write migration state to ConfigMap %s: %w", c.where(), err)
			}
			return err
		}
		err = kuberetry.Do(ctx, func() error {
			_, err := cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: peerauth.FieldManager})
			return err
		})
		if apierrors.IsAlreadyExists(err) {
			// Another runner created it first: re-read and retry like a conflict.
			return apierrors.NewConflict(corev1.Resource("configmaps"), c.Name, err)
		}
		if apierrors.IsNotFound(err) {
			return &NamespaceMissingError{Namespace: c.Namespace}
		}
		if err != nil {
			return fmt.Errorf("create migration state ConfigMap %s: %w", c.where(), err)
		}
		return nil
	})
	if apierrors.IsConflict(err) {
		return fmt.Errorf("write migration state to ConfigMap %s: still conflicting after retries: %w", c.where(), err)
	}
	return err
}

// NamespaceMissingError says the state's namespace does not exist.
type NamespaceMissingError struct{ Namespace string }

func (e *NamespaceMissingError) Error() string {
	return fmt.Sprintf("namespace %q for the migration state does not exist: create it (kubectl create namespace %s) or pass --state-namespace", e.Namespace, e.Namespace)
}
