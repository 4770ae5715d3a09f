package state

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/mtls-migrate/mtls-migrate/internal/gz"
	"github.com/mtls-migrate/mtls-migrate/internal/kuberetry"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
)

// ConfigMap names and keys.
const (
	ConfigMapName    = "mtls-migrate-state"
	DefaultNamespace = "mtls-migrate"
	// Key held the whole state as JSON before the sharded layout (see
	// shards.go); a root still holding it is read, and rewritten in the
	// sharded layout by the next Update.
	Key = "state.json"
)

// ConfigMapStore keeps the state in ConfigMaps: a root and shards (stage
// records by group of stages, outlines, probe marks; see shards.go), each
// well under the API server's 1 MiB. It creates the ConfigMaps, never the
// namespace: the tool's namespace is the operator's decision (and the
// scheduled Job's RBAC is scoped to it).
//
// Concurrency is optimistic and per object: Update writes only the objects
// that changed, each with the resourceVersion it read as a precondition.
// A write of several objects is made safe by the root: new objects (a new
// plan record, a new group of stages, an outline) are created under fresh
// names first, invisible until the root names them, and the one write in
// place (the root, or a single existing shard) is the commit. An update
// that would change two existing objects in place is refused before
// anything is written. A read of several objects is not one snapshot:
// every write is fenced on the stage it changes, which lives in the object
// written, and runs that decide across stages hold the lock.
type ConfigMapStore struct {
	Client    kubernetes.Interface
	Namespace string
	// Name is the root's; the shards' names start with it.
	Name string
	// StagesPerShard is the grouping of new plan records' stages
	// (DefaultStagesPerShard when 0); a record keeps the one it started
	// with.
	StagesPerShard int
}

// NewConfigMapStore returns a store rooted at ConfigMap mtls-migrate-state in namespace.
func NewConfigMapStore(c kubernetes.Interface, namespace string) *ConfigMapStore {
	return &ConfigMapStore{Client: c, Namespace: namespace, Name: ConfigMapName}
}

func (c *ConfigMapStore) where() string { return c.Namespace + "/" + c.Name }

// read is what one read of the store found.
type read struct {
	rootCM      *corev1.ConfigMap // nil: no state yet
	legacy      bool              // the whole state in the root's Key
	root        root
	rootPayload []byte
	objects     map[string]*object
	rvs         map[string]string
}

// Load reads the state; no root ConfigMap is an empty state.
func (c *ConfigMapStore) Load(ctx context.Context) (*State, error) {
	_, s, err := c.read(ctx)
	return s, err
}

func (c *ConfigMapStore) read(ctx context.Context) (*read, *State, error) {
	cms := c.Client.CoreV1().ConfigMaps(c.Namespace)
	r := &read{objects: map[string]*object{}, rvs: map[string]string{}}
	var cm *corev1.ConfigMap
	err := kuberetry.Do(ctx, func() (err error) {
		cm, err = cms.Get(ctx, c.Name, metav1.GetOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		return r, &State{}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read migration state from ConfigMap %s: %w", c.where(), err)
	}
	r.rootCM = cm
	r.rvs[c.Name] = cm.ResourceVersion
	raw, sharded := cm.Data[RootKey]
	if !sharded {
		// Written by an mtls-migrate from before the sharded layout.
		r.legacy = true
		s, err := decode([]byte(cm.Data[Key]))
		if err != nil {
			return nil, nil, fmt.Errorf("ConfigMap %s key %s: %w", c.where(), Key, err)
		}
		return r, s, nil
	}
	r.rootPayload = []byte(raw)
	if err := json.Unmarshal(r.rootPayload, &r.root); err != nil {
		return nil, nil, fmt.Errorf("ConfigMap %s key %s: decode migration state: %w", c.where(), RootKey, err)
	}
	if r.root.Version != layoutVersion {
		return nil, nil, fmt.Errorf("ConfigMap %s holds a migration state of layout %d; this mtls-migrate reads layout %d: use the version that wrote it", c.where(), r.root.Version, layoutVersion)
	}
	if err := c.fetch(ctx, c.objectNames(&r.root), r); err != nil {
		return nil, nil, err
	}
	s, err := c.decodeLayout(&layout{root: r.root, objects: r.objects})
	if err != nil {
		return nil, nil, fmt.Errorf("migration state in %s: %w", c.where(), err)
	}
	return r, s, nil
}

// fetchers bounds the GETs in flight (client-go's rate limiter bounds them
// over time).
const fetchers = 16

// fetch reads the objects the root names, in parallel. One missing is an
// error, never an empty part: the stages it held would look not started.
func (c *ConfigMapStore) fetch(ctx context.Context, want []*object, r *read) error {
	cms := c.Client.CoreV1().ConfigMaps(c.Namespace)
	var mu sync.Mutex
	var firstErr error
	work := make(chan *object)
	var wg sync.WaitGroup
	for range min(fetchers, len(want)) {
		wg.Go(func() {
			for o := range work {
				var cm *corev1.ConfigMap
				err := kuberetry.Do(ctx, func() (err error) {
					cm, err = cms.Get(ctx, o.name, metav1.GetOptions{})
					return err
				})
				if err == nil {
					o.payload, err = gunzipBytes(cm.BinaryData[payloadKey])
					if err != nil {
						err = fmt.Errorf("ConfigMap %s/%s (%s) key %s: %w", c.Namespace, o.name, o.contents, payloadKey, err)
					}
				} else if apierrors.IsNotFound(err) {
					err = &MissingObjectError{Namespace: c.Namespace, Name: o.name, Contents: o.contents, Root: c.Name}
				} else {
					err = fmt.Errorf("read migration state from ConfigMap %s/%s: %w", c.Namespace, o.name, err)
				}
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					r.objects[o.name] = o
					r.rvs[o.name] = cm.ResourceVersion
				}
				mu.Unlock()
			}
		})
	}
	for _, o := range want {
		work <- o
	}
	close(work)
	wg.Wait()
	return firstErr
}

// Update re-reads the state, applies fn and writes what changed, each
// object with the resourceVersion it read (an update precondition the API
// server enforces): on a conflict, someone else wrote in between, so it
// re-reads and calls fn again rather than overwriting their write. Every
// object is sized before the first write: one over MaxObjectBytes fails
// the update with nothing written.
func (c *ConfigMapStore) Update(ctx context.Context, fn func(*State) error) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		r, s, err := c.read(ctx)
		if err != nil {
			return err
		}
		if err := fn(s); err != nil {
			return err
		}
		var prev *root
		if r.rootCM != nil && !r.legacy {
			prev = &r.root
		}
		l, err := c.encodeLayout(s, prev, r.objects)
		if err != nil {
			return err
		}
		return c.write(ctx, r, l)
	})
	if apierrors.IsConflict(err) {
		return fmt.Errorf("write migration state to ConfigMap %s: still conflicting after retries: %w", c.where(), err)
	}
	return err
}

// write sends l's changes against what r read (see ConfigMapStore).
func (c *ConfigMapStore) write(ctx context.Context, r *read, l *layout) error {
	rootPayload, err := json.Marshal(l.root)
	if err != nil {
		return fmt.Errorf("encode migration state: %w", err)
	}
	rootChanged := r.rootCM == nil || r.legacy || !bytes.Equal(rootPayload, r.rootPayload)
	var created, inPlace []*object
	for _, name := range sortedNames(l.objects) {
		o := l.objects[name]
		old, ok := r.objects[name]
		switch {
		case !ok:
			created = append(created, o)
		case !bytes.Equal(old.payload, o.payload):
			inPlace = append(inPlace, o)
		}
	}
	if rootChanged {
		inPlace = append(inPlace, &object{name: c.Name, payload: rootPayload, isRoot: true, contents: "the root"})
	}
	if len(inPlace) == 0 {
		return nil // nothing changed
	}
	if len(inPlace) > 1 {
		return &MultiObjectError{Namespace: c.Namespace, Objects: inPlace}
	}
	// Everything is built and sized before anything is sent.
	cms := make([]*corev1.ConfigMap, 0, len(created)+1)
	for _, o := range append(created, inPlace...) {
		cm, err := c.configMap(o, r)
		if err != nil {
			return err
		}
		if n := ObjectBytes(cm); n > MaxObjectBytes {
			return &TooLargeError{Namespace: c.Namespace, Name: o.name, Contents: o.contents, Bytes: n, Largest: largestStage(o)}
		}
		cms = append(cms, cm)
	}
	client := c.Client.CoreV1().ConfigMaps(c.Namespace)
	for i, cm := range cms {
		// The last is the one in place; it is new only as the first root.
		if i < len(cms)-1 || (inPlace[0].isRoot && r.rootCM == nil) {
			err = kuberetry.Do(ctx, func() error {
				_, err := client.Create(ctx, cm, metav1.CreateOptions{FieldManager: peerauth.FieldManager})
				return err
			})
			if apierrors.IsAlreadyExists(err) {
				// Another runner created it first (the root), or a random
				// name was taken: re-read and retry like a conflict.
				return apierrors.NewConflict(corev1.Resource("configmaps"), cm.Name, err)
			}
			if apierrors.IsNotFound(err) {
				return &NamespaceMissingError{Namespace: c.Namespace}
			}
			if err != nil {
				return fmt.Errorf("create migration state ConfigMap %s/%s: %w", c.Namespace, cm.Name, err)
			}
			continue
		}
		// Retried on 429/5xx/timeouts only; the update carries the
		// resourceVersion read, so a retry of a write that did land is a
		// 409 and goes round RetryOnConflict (re-read, fn again).
		err = kuberetry.Do(ctx, func() error {
			_, err := client.Update(ctx, cm, metav1.UpdateOptions{FieldManager: peerauth.FieldManager})
			return err
		})
		if err != nil && !apierrors.IsConflict(err) {
			return fmt.Errorf("write migration state to ConfigMap %s/%s: %w", c.Namespace, cm.Name, err)
		}
		return err
	}
	return nil
}

// configMap is the object to send for o: new (no resourceVersion) or the
// one read, changed.
func (c *ConfigMapStore) configMap(o *object, r *read) (*corev1.ConfigMap, error) {
	labels := map[string]string{peerauth.ManagedByLabel: peerauth.ManagedByValue, ShardLabel: c.Name}
	if o.isRoot {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: c.Name, Namespace: c.Namespace, Labels: labels}}
		if r.rootCM != nil {
			cm = r.rootCM.DeepCopy()
			if cm.Labels == nil {
				cm.Labels = map[string]string{}
			}
			cm.Labels[ShardLabel] = c.Name
		}
		cm.BinaryData = nil
		cm.Data = map[string]string{RootKey: string(o.payload), Key: oldBinaryNotice}
		return cm, nil
	}
	zipped, err := gz.Compress(o.payload)
	if err != nil {
		return nil, fmt.Errorf("compress migration state: %w", err)
	}
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name: o.name, Namespace: c.Namespace, Labels: labels, ResourceVersion: r.rvs[o.name],
			Annotations: map[string]string{contentsAnnotation: o.contents},
		},
		BinaryData: map[string][]byte{payloadKey: zipped},
	}, nil
}

// ObjectBytes is what the API server counts against a ConfigMap's 1 MiB
// (keys and values), plus its labels and annotations.
func ObjectBytes(cm *corev1.ConfigMap) int {
	n := 0
	for k, v := range cm.Data {
		n += len(k) + len(v)
	}
	for k, v := range cm.BinaryData {
		n += len(k) + len(v)
	}
	for k, v := range cm.Labels {
		n += len(k) + len(v)
	}
	for k, v := range cm.Annotations {
		n += len(k) + len(v)
	}
	return n
}

// largestStage names the biggest stage record of a stage group, "" for
// other objects.
func largestStage(o *object) string {
	var sh stageShard
	if o.isRoot || json.Unmarshal(o.payload, &sh) != nil || sh.Plan == "" {
		return ""
	}
	best, size := -1, 0
	for i, raw := range sh.Stages {
		if len(raw) > size {
			best, size = i, len(raw)
		}
	}
	if best < 0 {
		return ""
	}
	var st StageState
	_ = json.Unmarshal(sh.Stages[best], &st)
	return fmt.Sprintf("stage %d (%s): %d KiB of JSON, %d PeerAuthentications in its snapshot", st.Number, st.Namespace, size>>10, len(st.Snapshot))
}

func sortedNames(m map[string]*object) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// NamespaceMissingError says the state's namespace does not exist.
type NamespaceMissingError struct{ Namespace string }

func (e *NamespaceMissingError) Error() string {
	return fmt.Sprintf("namespace %q for the migration state does not exist: create it (kubectl create namespace %s) or pass --state-namespace", e.Namespace, e.Namespace)
}

// MissingObjectError says an object the state's root names is gone: the
// stages it held cannot be read, and are never taken for not started.
type MissingObjectError struct{ Namespace, Name, Contents, Root string }

func (e *MissingObjectError) Error() string {
	return fmt.Sprintf("the migration state's ConfigMap %s/%s (%s), named by %s, is missing: the state cannot be read without it and nothing was written; restore it from a backup of the namespace (or ask whoever deleted it), then run again", e.Namespace, e.Name, e.Contents, e.Root)
}

// TooLargeError says a write would put more in one ConfigMap than the store
// allows (MaxObjectBytes); nothing was written.
type TooLargeError struct {
	Namespace, Name, Contents string
	Bytes                     int
	// Largest names the largest stage record of a stage group.
	Largest string
}

func (e *TooLargeError) Error() string {
	msg := fmt.Sprintf("the migration state's ConfigMap %s/%s (%s) would hold %d KiB, over the %d KiB this tool writes in one object (the API server's limit is 1 MiB); nothing was written", e.Namespace, e.Name, e.Contents, e.Bytes>>10, MaxObjectBytes>>10)
	if e.Largest != "" {
		return msg + "; its largest record is " + e.Largest + ": a namespace with that many PeerAuthentications cannot be recorded; migrate it by hand and leave it out of the plan (--exclude-namespaces), or consolidate its policies and re-plan"
	}
	return msg + "; the state holds too many plan records: finish the migration with the current plan rather than re-planning again"
}

// MultiObjectError says an update would change several existing objects
// in place, which cannot be one atomic write; nothing was written. The
// executor's updates change one stage at a time and never do.
type MultiObjectError struct {
	Namespace string
	Objects   []*object
}

func (e *MultiObjectError) Error() string {
	var what []string
	for _, o := range e.Objects {
		what = append(what, o.name+" ("+o.contents+")")
	}
	return fmt.Sprintf("a migration state update would change %d existing ConfigMaps in %s at once (%s), which cannot be written atomically; nothing was written. A stage carried over by --replan shares its snapshot with the stage of the earlier plan it was carried from: change it under the current plan, not the old one", len(e.Objects), e.Namespace, strings.Join(what, ", "))
}
