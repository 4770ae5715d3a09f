package plansource

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mtls-migrate/mtls-migrate/internal/gz"
	"github.com/mtls-migrate/mtls-migrate/plans"
)

// bigPlan is the example plan grown to n stages (one namespace each, the
// mesh stage last).
func bigPlan(t *testing.T, n int) *plans.Plan {
	t.Helper()
	b, err := os.ReadFile("../../plans/testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := plans.Load("valid.yaml", b)
	if err != nil {
		t.Fatal(err)
	}
	ns, mesh := p.Stages[0], p.Stages[1]
	p.Stages = nil
	for i := 1; i < n; i++ {
		st := ns
		st.Number, st.Namespace = i, fmt.Sprintf("ns-%05d", i)
		st.Policy.Metadata.Namespace = st.Namespace
		st.Rationale = fmt.Sprintf("stage %d of %d", i, n)
		p.Stages = append(p.Stages, st)
	}
	mesh.Number = n
	p.Stages = append(p.Stages, mesh)
	if problems := plans.Validate(p); len(problems) > 0 {
		t.Fatal(problems)
	}
	return p
}

// publish lays p out in small shards (so that a test plan has several)
// and writes them to a fake API server.
func publish(t *testing.T, p *plans.Plan) (*fake.Clientset, *Published) {
	t.Helper()
	pub, tooBig, err := build(p, "mtls-migrate", "mtls-migrate-plan", 32<<10)
	if err != nil || tooBig != nil {
		t.Fatal(err, tooBig)
	}
	kube := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mtls-migrate"}})
	if err := Publish(context.Background(), kube, pub, PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	return kube, pub
}

func loadFrom(kube *fake.Clientset) (*Loaded, error) {
	return Load(context.Background(), "configmap:mtls-migrate/mtls-migrate-plan", func() (kubernetes.Interface, error) { return kube, nil })
}

func TestPublishedPlanLoadsBackWithTheReviewedDigest(t *testing.T) {
	p := bigPlan(t, 400)
	want, err := plans.Digest(p)
	if err != nil {
		t.Fatal(err)
	}
	kube, pub := publish(t, p)
	if len(pub.Index.Shards) < 3 || pub.Index.Digest != want {
		t.Fatalf("%d shards, digest %s, want several and %s", len(pub.Index.Shards), pub.Index.Digest, want)
	}
	got, err := loadFrom(kube)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := plans.Marshal(p)
	b, _ := plans.Marshal(got.Plan)
	if got.Digest != want || !bytes.Equal(a, b) {
		t.Fatalf("loaded digest %s, want %s; same plan %v", got.Digest, want, bytes.Equal(a, b))
	}
	// A second publication of another plan replaces the first's shards but
	// keeps them until a third (a run may be reading them).
	q := bigPlan(t, 401)
	pub2, _, _ := build(q, "mtls-migrate", "mtls-migrate-plan", 32<<10)
	if err := Publish(context.Background(), kube, pub2, PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err := loadFrom(kube); err != nil || len(got.Plan.Stages) != 401 {
		t.Fatalf("after republishing: %v", err)
	}
	if _, err := kube.CoreV1().ConfigMaps("mtls-migrate").Get(context.Background(), pub.Index.Shards[0].Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("the previous plan's shard is gone already: %v", err)
	}
	pub3, _, _ := build(bigPlan(t, 402), "mtls-migrate", "mtls-migrate-plan", 32<<10)
	if err := Publish(context.Background(), kube, pub3, PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().ConfigMaps("mtls-migrate").Get(context.Background(), pub.Index.Shards[0].Name, metav1.GetOptions{}); err == nil {
		t.Fatal("the shards of the plan before the previous one are kept")
	}
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	z, err := gz.Compress(b)
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	out, err := gz.Decompress(b, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPublishedPlanRefusesAMissingOrChangedShard: what the Job reads is the
// reviewed plan or nothing, and the error says what to do.
func TestPublishedPlanRefusesAMissingOrChangedShard(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		change func(t *testing.T, kube *fake.Clientset, pub *Published)
		want   string
	}{
		{"a shard deleted", func(t *testing.T, kube *fake.Clientset, pub *Published) {
			if err := kube.CoreV1().ConfigMaps("mtls-migrate").Delete(ctx, pub.Index.Shards[1].Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, "is missing"},
		{"a stage's soak changed in a shard", func(t *testing.T, kube *fake.Clientset, pub *Published) {
			editShard(t, kube, pub.Index.Shards[1].Name, func(b []byte) []byte { return bytes.Replace(b, []byte("soak: 5m"), []byte("soak: 9m"), 1) })
		}, "does not match the index"},
		{"a shard replaced by one of another plan", func(t *testing.T, kube *fake.Clientset, pub *Published) {
			cms := kube.CoreV1().ConfigMaps("mtls-migrate")
			cm, _ := cms.Get(ctx, pub.Index.Shards[1].Name, metav1.GetOptions{})
			cm.Labels[DigestLabel] = "0123456789ab"
			if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}, "belongs to another plan"},
		{"the index's shard digests edited to match a changed shard", func(t *testing.T, kube *fake.Clientset, pub *Published) {
			name := pub.Index.Shards[1].Name
			var changed []byte
			editShard(t, kube, name, func(b []byte) []byte {
				changed = bytes.Replace(b, []byte("soak: 5m"), []byte("soak: 9m"), 1)
				return changed
			})
			editIndex(t, kube, func(idx *Index) {
				sum := sha256Hex(changed)
				idx.Shards[1].SHA256 = sum
			})
		}, "says the plan's digest is"},
		{"a shard that decompresses to more than the index says", func(t *testing.T, kube *fake.Clientset, pub *Published) {
			editShard(t, kube, pub.Index.Shards[0].Name, func(b []byte) []byte { return append(b, bytes.Repeat([]byte("#"), 1<<20)...) })
		}, "does not match the index"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kube, pub := publish(t, bigPlan(t, 300))
			tt.change(t, kube, pub)
			_, err := loadFrom(kube)
			var inv *InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "mtls-migrate plan publish --plan plan.yaml --to configmap:mtls-migrate/mtls-migrate-plan") {
				t.Fatalf("err = %v, want an InvalidError saying %q and how to publish again", err, tt.want)
			}
		})
	}
}

func sha256Hex(b []byte) string {
	d := sha256.Sum256(b)
	return hex.EncodeToString(d[:])
}

func editShard(t *testing.T, kube *fake.Clientset, name string, f func([]byte) []byte) {
	t.Helper()
	cms := kube.CoreV1().ConfigMaps("mtls-migrate")
	cm, err := cms.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.BinaryData[ShardKey] = gzipped(t, f(gunzip(t, cm.BinaryData[ShardKey])))
	if _, err := cms.Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func editIndex(t *testing.T, kube *fake.Clientset, f func(*Index)) {
	t.Helper()
	cms := kube.CoreV1().ConfigMaps("mtls-migrate")
	cm, err := cms.Get(context.Background(), "mtls-migrate-plan", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var idx Index
	if err := json.Unmarshal([]byte(cm.Data[IndexKey]), &idx); err != nil {
		t.Fatal(err)
	}
	f(&idx)
	b, _ := json.Marshal(idx)
	cm.Data[IndexKey] = string(b)
	if _, err := cms.Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestBuildRefusesAStageThatCannotFitAShard(t *testing.T) {
	p := bigPlan(t, 5)
	b := make([]byte, 800<<10)
	_, _ = rand.Read(b)
	p.Stages[2].Rationale = base64.StdEncoding.EncodeToString(b)
	_, err := Build(p, "mtls-migrate", "mtls-migrate-plan")
	var tl *ShardTooLargeError
	if !errors.As(err, &tl) || tl.Stage != 3 || !strings.Contains(err.Error(), "--exclude-namespaces") {
		t.Fatalf("err = %v, want a ShardTooLargeError for stage 3", err)
	}
}

func TestIndexConfigMapWithoutAnIndexSaysWhatItIs(t *testing.T) {
	kube := fake.NewClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "mtls-migrate-plan", Namespace: "mtls-migrate"},
		Data:       map[string]string{"plan.yaml": "kind: MigrationPlan\n"},
	})
	_, err := loadFrom(kube)
	var inv *InvalidError
	if !errors.As(err, &inv) || !strings.Contains(err.Error(), "configmap:mtls-migrate/mtls-migrate-plan/KEY") || !strings.Contains(err.Error(), "plan.yaml") {
		t.Fatalf("err = %v", err)
	}
}
