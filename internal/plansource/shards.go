package plansource

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/internal/gz"
	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// A published plan is the plan's canonical YAML (what `plan --out` writes
// and what its digest is computed on) cut between stages into shards, each
// gzip-compressed into one ConfigMap, and an index ConfigMap that lists
// them with the sha256 of each one's bytes and the plan's digest. A run
// reads the index, then each shard, checks every digest, and decodes the
// plan stage by stage: the bytes it decodes are exactly the reviewed ones
// (the pinned --plan-digest is the sha256 of their concatenation), and no
// object comes near the API server's 1 MiB (the plan of 2,000 namespaces
// is 27 MB of YAML, about 0.7 MB compressed).
const (
	// IndexKey holds the index in the index ConfigMap.
	IndexKey = "index.json"
	// ShardKey holds a shard's gzip-compressed YAML.
	ShardKey = "plan.yaml.gz"
	// PlanLabel marks a shard with its index's name, DigestLabel with the
	// start of its plan's digest.
	PlanLabel   = "mtls-migrate.io/plan"
	DigestLabel = "mtls-migrate.io/plan-digest"
	// IndexKind is the index document's kind.
	IndexKind = "PlanIndex"
	// MaxShardBytes is the most a shard ConfigMap holds compressed: well
	// under 1 MiB, with the base64 of a JSON request (4/3) well under the
	// API server's 3 MiB.
	MaxShardBytes = 700 << 10
	// shardRawBytes is how much YAML a shard starts with (compressed about
	// 30-fold, ~300 KiB); halved until every shard fits MaxShardBytes.
	shardRawBytes = 8 << 20
	// maxIndexShards bounds the index (at 10,000 namespaces a plan needs
	// about 20 shards).
	maxIndexShards = 2000
)

// Index lists a published plan's shards.
type Index struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Plan and Digest are the plan's metadata.name and digest (what
	// `apply --plan-digest` pins).
	Plan   string `json:"plan"`
	Digest string `json:"digest"`
	Stages int    `json:"stages"`
	// Bytes is the size of the plan's YAML.
	Bytes  int64   `json:"bytes"`
	Shards []Shard `json:"shards"`
}

// Shard is one shard of a published plan: stages FirstStage..LastStage (the
// first shard starts with the plan's header; FirstStage 0 when it holds no
// stage).
type Shard struct {
	Name       string `json:"name"`
	FirstStage int    `json:"firstStage"`
	LastStage  int    `json:"lastStage"`
	// Bytes and SHA256 are the size and sha256 of its YAML, uncompressed.
	Bytes  int    `json:"bytes"`
	SHA256 string `json:"sha256"`
	// Compressed is the size of what the ConfigMap holds.
	Compressed int `json:"compressed"`
}

// Published is a plan laid out for the cluster: the index and the shards'
// compressed bytes, in order.
type Published struct {
	Namespace, Name string
	Index           Index
	Data            [][]byte
}

// ShardTooLargeError says one stage alone does not fit a shard.
type ShardTooLargeError struct {
	Stage, Compressed int
}

func (e *ShardTooLargeError) Error() string {
	return fmt.Sprintf("stage %d alone is %d KiB compressed, more than a plan shard holds (%d KiB): nothing was published; leave its namespace out of the plan (--exclude-namespaces) and migrate it on its own", e.Stage, e.Compressed>>10, MaxShardBytes>>10)
}

// Build lays the plan out as shards for the index ConfigMap NAMESPACE/NAME;
// it writes nothing.
func Build(p *plans.Plan, namespace, name string) (*Published, error) {
	for budget := shardRawBytes; ; budget /= 2 {
		pub, tooBig, err := build(p, namespace, name, budget)
		if err != nil {
			return nil, err
		}
		if tooBig == nil {
			return pub, nil
		}
		if tooBig.FirstStage == tooBig.LastStage {
			return nil, &ShardTooLargeError{Stage: tooBig.LastStage, Compressed: tooBig.Compressed}
		}
	}
}

func build(p *plans.Plan, namespace, name string, budget int) (*Published, *Shard, error) {
	digest := sha256.New()
	pub := &Published{Namespace: namespace, Name: name, Index: Index{APIVersion: plans.APIVersion, Kind: IndexKind, Plan: p.Metadata.Name, Stages: len(p.Stages)}}
	var cur bytes.Buffer
	first, last := 0, 0
	var tooBig *Shard
	flush := func() error {
		if cur.Len() == 0 {
			return nil
		}
		zipped, err := gz.Compress(cur.Bytes())
		if err != nil {
			return err
		}
		sum := sha256.Sum256(cur.Bytes())
		sh := Shard{FirstStage: first, LastStage: last, Bytes: cur.Len(), SHA256: hex.EncodeToString(sum[:]), Compressed: len(zipped)}
		if len(zipped) > MaxShardBytes && tooBig == nil {
			tooBig = &sh
		}
		pub.Index.Shards = append(pub.Index.Shards, sh)
		pub.Data = append(pub.Data, zipped)
		pub.Index.Bytes += int64(cur.Len())
		cur.Reset()
		first = 0
		return nil
	}
	err := plans.EncodePieces(p, func(stage int, b []byte) error {
		digest.Write(b)
		if stage > 0 && cur.Len() > 0 && cur.Len()+len(b) > budget && last > 0 {
			if err := flush(); err != nil {
				return err
			}
		}
		cur.Write(b)
		if stage > 0 {
			if first == 0 {
				first = stage
			}
			last = stage
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("lay the plan out in shards: %w", err)
	}
	if tooBig != nil {
		return nil, tooBig, nil
	}
	if len(pub.Index.Shards) > maxIndexShards {
		return nil, nil, fmt.Errorf("the plan needs %d shards, more than %d: split it into several plans", len(pub.Index.Shards), maxIndexShards)
	}
	pub.Index.Digest = "sha256:" + hex.EncodeToString(digest.Sum(nil))
	id := digestID(pub.Index.Digest)
	for i := range pub.Index.Shards {
		pub.Index.Shards[i].Name = fmt.Sprintf("%s-%s-%d", name, id, i)
	}
	return pub, nil, nil
}

func digestID(digest string) string {
	h := strings.TrimPrefix(digest, "sha256:")
	return h[:min(12, len(h))]
}

// ConfigMaps are the objects to write: the shards, then the index (written
// last, so a run never reads an index whose shards are not there yet).
func (pub *Published) ConfigMaps() []*corev1.ConfigMap {
	labels := func() map[string]string {
		return map[string]string{
			peerauth.ManagedByLabel:  peerauth.ManagedByValue,
			"app.kubernetes.io/name": "mtls-migrate",
			PlanLabel:                pub.Name,
			DigestLabel:              digestID(pub.Index.Digest),
		}
	}
	var out []*corev1.ConfigMap
	for i, sh := range pub.Index.Shards {
		out = append(out, &corev1.ConfigMap{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: metav1.ObjectMeta{Name: sh.Name, Namespace: pub.Namespace, Labels: labels(),
				Annotations: map[string]string{"mtls-migrate.io/contents": shardContents(&pub.Index, sh)}},
			BinaryData: map[string][]byte{ShardKey: pub.Data[i]},
		})
	}
	idx, _ := json.MarshalIndent(pub.Index, "", "  ")
	out = append(out, &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: pub.Name, Namespace: pub.Namespace, Labels: labels()},
		Data:       map[string]string{IndexKey: string(idx) + "\n"},
	})
	return out
}

func shardContents(idx *Index, sh Shard) string {
	if sh.FirstStage == 0 {
		return fmt.Sprintf("the header of plan %q (%s)", idx.Plan, idx.Digest)
	}
	return fmt.Sprintf("stages %d-%d of plan %q (%s)", sh.FirstStage, sh.LastStage, idx.Plan, idx.Digest)
}

// PublishOptions are Publish's.
type PublishOptions struct {
	// DryRun sends every object through the API server's validation
	// (dryRun=All) and persists nothing.
	DryRun bool
	// Say reports progress (a line each).
	Say func(string)
}

// Publish writes the plan's shards and then its index with server-side
// apply (no last-applied annotation), and then deletes the shards of plans
// older than the one the index named before (kept one publication, for a
// run that read that index a moment ago). Every object is built and sized
// before the first write.
func Publish(ctx context.Context, kube kubernetes.Interface, pub *Published, o PublishOptions) error {
	if o.Say == nil {
		o.Say = func(string) {}
	}
	cms := kube.CoreV1().ConfigMaps(pub.Namespace)
	prevDigest := ""
	if cur, err := cms.Get(ctx, pub.Name, metav1.GetOptions{}); err == nil {
		var idx Index
		if json.Unmarshal([]byte(cur.Data[IndexKey]), &idx) == nil {
			prevDigest = digestID(idx.Digest)
		}
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("read the plan index ConfigMap %s/%s: %w", pub.Namespace, pub.Name, err)
	}
	opts := metav1.ApplyOptions{FieldManager: peerauth.FieldManager, Force: true}
	if o.DryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	for _, cm := range pub.ConfigMaps() {
		ac := corev1ac.ConfigMap(cm.Name, cm.Namespace).WithLabels(cm.Labels).WithAnnotations(cm.Annotations)
		if cm.BinaryData != nil {
			ac.WithBinaryData(cm.BinaryData)
		}
		if cm.Data != nil {
			ac.WithData(cm.Data)
		}
		if _, err := cms.Apply(ctx, ac, opts); err != nil {
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("publish the plan: namespace %q does not exist: create it first (kubectl apply --server-side -k deploy/ creates it)", pub.Namespace)
			}
			return fmt.Errorf("publish the plan: apply ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
		}
		o.Say(fmt.Sprintf("applied ConfigMap %s/%s", cm.Namespace, cm.Name))
	}
	if o.DryRun {
		return nil
	}
	// The index now names the new shards: older ones are garbage, except
	// those of the plan it named until now.
	old, err := cms.List(ctx, metav1.ListOptions{LabelSelector: PlanLabel + "=" + pub.Name})
	if err != nil {
		o.Say(fmt.Sprintf("could not list the shards of older plans to delete them (%v); they are harmless: kubectl -n %s delete configmap -l %s=%s,%s!=%s", err, pub.Namespace, PlanLabel, pub.Name, DigestLabel, digestID(pub.Index.Digest)))
		return nil
	}
	for _, cm := range old.Items {
		d := cm.Labels[DigestLabel]
		if cm.Name == pub.Name || d == digestID(pub.Index.Digest) || d == prevDigest {
			continue
		}
		if err := cms.Delete(ctx, cm.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			o.Say(fmt.Sprintf("could not delete %s, a shard of an older plan: %v", cm.Name, err))
			continue
		}
		o.Say(fmt.Sprintf("deleted ConfigMap %s/%s (a shard of an older plan)", cm.Namespace, cm.Name))
	}
	return nil
}

// ShardError says a published plan's shard is missing, belongs to another
// plan or does not match the index: the plan cannot be read as reviewed.
type ShardError struct {
	Source        Source
	Shard, Reason string
}

func (e *ShardError) Error() string {
	return fmt.Sprintf("plan %s: %s %s; nothing was run: publish the reviewed plan again (mtls-migrate plan publish --plan plan.yaml --to %s)", e.Source, e.Shard, e.Reason, e.Source)
}

// loadPublished reads a published plan: the index, then each shard in
// order, each checked against the index before it is decoded; then the
// plan's digest against the index's.
func loadPublished(ctx context.Context, kube kubernetes.Interface, src Source) (*plans.Plan, string, error) {
	cms := kube.CoreV1().ConfigMaps(src.Namespace)
	cm, err := cms.Get(ctx, src.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", &InvalidError{Err: fmt.Errorf("plan index ConfigMap %s/%s not found: publish the reviewed plan (mtls-migrate plan publish --plan plan.yaml --to %s)", src.Namespace, src.Name, src)}
	}
	if err != nil {
		return nil, "", fmt.Errorf("read plan index ConfigMap %s/%s: %w", src.Namespace, src.Name, err)
	}
	raw, ok := cm.Data[IndexKey]
	if !ok {
		var keys []string
		for k := range cm.Data {
			keys = append(keys, k)
		}
		return nil, "", &InvalidError{Err: fmt.Errorf("ConfigMap %s/%s has no %s, so it is not a plan published by `mtls-migrate plan publish` (keys: %s); publish the plan, or name the key of a plan kept whole: configmap:%s/%s/KEY",
			src.Namespace, src.Name, IndexKey, strings.Join(keys, ", "), src.Namespace, src.Name)}
	}
	idx, err := decodeIndex(raw)
	if err != nil {
		return nil, "", &InvalidError{Err: fmt.Errorf("plan index %s/%s key %s: %w; publish the plan again", src.Namespace, src.Name, IndexKey, err)}
	}
	whole := sha256.New()
	var dec plans.PiecesDecoder
	for i, sh := range idx.Shards {
		b, err := readShard(ctx, cms, src, &idx, sh, whole)
		if err != nil {
			return nil, "", err
		}
		if err := dec.Add(b); err != nil {
			return nil, "", &InvalidError{Err: fmt.Errorf("plan %s: shard %d (%s) does not decode: %w; publish the plan again", src, i, sh.Name, err)}
		}
	}
	if got := "sha256:" + hex.EncodeToString(whole.Sum(nil)); got != idx.Digest {
		return nil, "", &InvalidError{Err: &ShardError{Source: src, Shard: "the index", Reason: fmt.Sprintf("says the plan's digest is %s, but its shards make %s", idx.Digest, got)}}
	}
	p, err := dec.Plan(src.String())
	if err != nil {
		return nil, "", &InvalidError{Err: err}
	}
	if len(p.Stages) != idx.Stages {
		return nil, "", &InvalidError{Err: &ShardError{Source: src, Shard: "the index", Reason: fmt.Sprintf("says %d stages, the shards hold %d", idx.Stages, len(p.Stages))}}
	}
	return p, idx.Digest, nil
}

func decodeIndex(raw string) (Index, error) {
	var idx Index
	d := json.NewDecoder(strings.NewReader(raw))
	d.DisallowUnknownFields()
	if err := d.Decode(&idx); err != nil {
		return idx, err
	}
	switch {
	case idx.APIVersion != plans.APIVersion || idx.Kind != IndexKind:
		return idx, fmt.Errorf("want apiVersion %s, kind %s; got %s, %s", plans.APIVersion, IndexKind, idx.APIVersion, idx.Kind)
	case len(idx.Shards) == 0 || len(idx.Shards) > maxIndexShards:
		return idx, fmt.Errorf("%d shards", len(idx.Shards))
	case !strings.HasPrefix(idx.Digest, "sha256:"):
		return idx, fmt.Errorf("digest %q is not a sha256 digest", idx.Digest)
	}
	for _, sh := range idx.Shards {
		if sh.Bytes < 0 || sh.Bytes > 4*shardRawBytes {
			return idx, fmt.Errorf("shard %s: %d bytes", sh.Name, sh.Bytes)
		}
	}
	return idx, nil
}

// readShard fetches and checks one shard, adding its bytes to whole.
func readShard(ctx context.Context, cms interface {
	Get(context.Context, string, metav1.GetOptions) (*corev1.ConfigMap, error)
}, src Source, idx *Index, sh Shard, whole hash.Hash) ([]byte, error) {
	what := fmt.Sprintf("shard %s (%s)", sh.Name, shardContents(idx, sh))
	cm, err := cms.Get(ctx, sh.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, &InvalidError{Err: &ShardError{Source: src, Shard: what, Reason: "is missing (deleted, or the plan is being republished)"}}
	}
	if err != nil {
		return nil, fmt.Errorf("read plan %s: %s: %w", src, what, err)
	}
	if d := cm.Labels[DigestLabel]; d != digestID(idx.Digest) {
		return nil, &InvalidError{Err: &ShardError{Source: src, Shard: what, Reason: fmt.Sprintf("belongs to another plan (digest %s...)", d)}}
	}
	zr, err := gzip.NewReader(bytes.NewReader(cm.BinaryData[ShardKey]))
	var b []byte
	if err == nil {
		// Never more than the index says: a shard cannot make the run hold
		// more than the reviewed plan.
		b, err = io.ReadAll(io.LimitReader(zr, int64(sh.Bytes)+1))
	}
	if err != nil {
		return nil, &InvalidError{Err: &ShardError{Source: src, Shard: what, Reason: "does not decompress: " + err.Error()}}
	}
	sum := sha256.Sum256(b)
	if len(b) != sh.Bytes || hex.EncodeToString(sum[:]) != sh.SHA256 {
		return nil, &InvalidError{Err: &ShardError{Source: src, Shard: what, Reason: fmt.Sprintf("does not match the index (%d bytes, sha256 %s; the index says %d bytes, sha256 %s): it was changed after publishing", len(b), hex.EncodeToString(sum[:]), sh.Bytes, sh.SHA256)}}
	}
	whole.Write(b)
	return b, nil
}
