package state

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// apiServer is the part of the API server the store relies on, which the
// fake clientset leaves out: resourceVersions, and the precondition an
// update carries. It records the writes.
type apiServer struct {
	mu     sync.Mutex
	rv     int
	cms    map[string]*corev1.ConfigMap
	writes []string // "create NAME", "update NAME"
}

func newAPIServer() (*fake.Clientset, *apiServer) {
	a := &apiServer{cms: map[string]*corev1.ConfigMap{}}
	c := fake.NewClientset()
	c.PrependReactor("*", "configmaps", func(act k8stesting.Action) (bool, runtime.Object, error) {
		switch act.GetVerb() {
		case "get":
			act := act.(k8stesting.GetAction)
			a.mu.Lock()
			defer a.mu.Unlock()
			cm, ok := a.cms[act.GetName()]
			if !ok {
				return true, nil, apierrors.NewNotFound(corev1.Resource("configmaps"), act.GetName())
			}
			return true, cm.DeepCopy(), nil
		case "create":
			act := act.(k8stesting.CreateAction)
			cm := act.GetObject().(*corev1.ConfigMap).DeepCopy()
			a.mu.Lock()
			defer a.mu.Unlock()
			if _, ok := a.cms[cm.Name]; ok {
				return true, nil, apierrors.NewAlreadyExists(corev1.Resource("configmaps"), cm.Name)
			}
			a.rv++
			cm.ResourceVersion = strconv.Itoa(a.rv)
			a.cms[cm.Name] = cm
			a.writes = append(a.writes, "create "+cm.Name)
			return true, cm.DeepCopy(), nil
		case "update":
			act := act.(k8stesting.UpdateAction)
			cm := act.GetObject().(*corev1.ConfigMap).DeepCopy()
			a.mu.Lock()
			defer a.mu.Unlock()
			cur, ok := a.cms[cm.Name]
			if !ok {
				return true, nil, apierrors.NewNotFound(corev1.Resource("configmaps"), cm.Name)
			}
			if cm.ResourceVersion != cur.ResourceVersion {
				return true, nil, apierrors.NewConflict(corev1.Resource("configmaps"), cm.Name, errors.New("the object has been modified"))
			}
			a.rv++
			cm.ResourceVersion = strconv.Itoa(a.rv)
			a.cms[cm.Name] = cm
			a.writes = append(a.writes, "update "+cm.Name)
			return true, cm.DeepCopy(), nil
		}
		return true, nil, fmt.Errorf("unexpected %s", act.GetVerb())
	})
	return c, a
}

// jsonBytes is the size of the state's JSON, uncompressed.
func (a *apiServer) jsonBytes(t *testing.T) int {
	t.Helper()
	n := 0
	for _, cm := range a.cms {
		n += len(cm.Data[RootKey])
		if gz, ok := cm.BinaryData[payloadKey]; ok {
			b, err := gunzipBytes(gz)
			if err != nil {
				t.Fatal(err)
			}
			n += len(b)
		}
	}
	return n
}

func (a *apiServer) takeWrites() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.writes
	a.writes = nil
	return w
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// doneStage is a done stage record of about the size the executor writes.
func doneStage(n int, ns string) StageState {
	v := 0.99
	st := StageState{Number: n, Namespace: ns, Phase: Done, Owner: "runner-1", TargetMode: "STRICT", StartedAt: t0, FinishedAt: t0.Add(6 * time.Minute),
		AppliedBy: "system:serviceaccount:mtls-migrate:mtls-migrate",
		Target:    &Target{Name: "default", Created: true, UID: "0b5f5a8e-8f53-4a8e-9a4b-" + fmt.Sprintf("%012d", n), ResourceVersion: strconv.Itoa(1000 + n), Mode: "STRICT"},
		Snapshot:  []json.RawMessage{json.RawMessage(fmt.Sprintf(`{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"legacy","namespace":%q,"uid":"u-%d","resourceVersion":"%d","creationTimestamp":"2025-01-01T00:00:00Z"},"spec":{"mtls":{"mode":"PERMISSIVE"}}}`, ns, n, n))},
	}
	for _, g := range []string{"success-rate", "inbound-request-rate", "client-error-rate", "client-connection-failures", "plaintext-request-rate"} {
		st.Baseline = append(st.Baseline, GateValue{Name: g, Verdict: "pass", Value: Float(v), Samples: Float(1234), At: t0})
		st.Gates = append(st.Gates, GateValue{Name: g, Verdict: "pass", Value: Float(v), Threshold: Float(0.98), Samples: Float(1200), At: t0.Add(5 * time.Minute)})
	}
	for i := range 10 {
		st.Probes = append(st.Probes, ProbeResult{Name: fmt.Sprintf("plaintext-wl-%02d-80", i), OK: true, Observed: "connection reset by peer", At: t0.Add(time.Minute)})
	}
	for _, ph := range []Phase{Applying, Applying, Soaking, Done} {
		st.History = append(st.History, Transition{Phase: ph, At: t0})
	}
	return st
}

func TestConfigMapStoreShardsStagesAndWritesOnlyTheObjectThatChanged(t *testing.T) {
	ctx := context.Background()
	c, api := newAPIServer()
	s := NewConfigMapStore(c, "mtls-migrate")
	if err := s.Update(ctx, func(st *State) error {
		p := st.EnsurePlan("p", "sha256:abc", t0)
		for n := 1; n <= 120; n++ {
			*p.EnsureStage(n, fmt.Sprintf("ns-%d", n)) = doneStage(n, fmt.Sprintf("ns-%d", n))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if w := api.takeWrites(); len(w) != 4 || w[3] != "create mtls-migrate-state" {
		t.Fatalf("first write: %v, want three stage groups, then the root", w)
	}
	if err := s.Update(ctx, func(st *State) error {
		st.Plan("sha256:abc").Stage(77).Reason = "changed"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	w := api.takeWrites()
	if len(w) != 1 || !strings.HasPrefix(w[0], "update mtls-migrate-state-abc-g1-") {
		t.Fatalf("writes %v, want one update of group 1 (stages 51-100)", w)
	}
	if err := s.Update(ctx, func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if w := api.takeWrites(); len(w) != 0 {
		t.Fatalf("an update that changes nothing wrote %v", w)
	}
	got, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := got.Plan("sha256:abc"); len(p.Stages) != 120 || p.Stage(77).Reason != "changed" || p.Stage(120).Target.UID == "" {
		t.Fatalf("state read back: %d stages, %+v", len(p.Stages), p.Stage(77))
	}
	for name, cm := range api.cms {
		if n := ObjectBytes(cm); n > 64<<10 {
			t.Errorf("%s holds %d bytes", name, n)
		}
	}
}

// TestConfigMapStoreConflictOnOneShardRereadsAndKeepsBoth: a writer that
// changed the same shard in between is never overwritten; one that
// changed another shard does not even conflict.
func TestConfigMapStoreConflictOnOneShardRereadsAndKeepsBoth(t *testing.T) {
	ctx := context.Background()
	c, api := newAPIServer()
	s := NewConfigMapStore(c, "mtls-migrate")
	if err := s.Update(ctx, func(st *State) error {
		p := st.EnsurePlan("p", "sha256:abc", t0)
		for n := 1; n <= 100; n++ {
			p.EnsureStage(n, fmt.Sprintf("ns-%d", n))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name     string
		other    int // the stage the other writer changes
		wantRuns int
	}{
		{"same shard", 60, 2},
		{"another shard", 10, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			api.takeWrites()
			other := NewConfigMapStore(c, "mtls-migrate")
			runs := 0
			if err := s.Update(ctx, func(st *State) error {
				runs++
				if runs == 1 {
					// Another writer, between this update's read and its write.
					if err := other.Update(ctx, func(st *State) error {
						st.Plan("sha256:abc").Stage(tt.other).Reason = "other writer"
						return nil
					}); err != nil {
						t.Error(err)
					}
				}
				st.Plan("sha256:abc").Stage(70).Reason = "this writer " + tt.name
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if runs != tt.wantRuns {
				t.Errorf("fn ran %d times, want %d", runs, tt.wantRuns)
			}
			if w := api.takeWrites(); len(w) != 2 {
				t.Errorf("writes %v, want the other writer's and this one's", w)
			}
			got, err := s.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			p := got.Plan("sha256:abc")
			if p.Stage(tt.other).Reason != "other writer" || p.Stage(70).Reason != "this writer "+tt.name {
				t.Fatalf("a write was lost: stage %d %q, stage 70 %q", tt.other, p.Stage(tt.other).Reason, p.Stage(70).Reason)
			}
		})
	}
}

func incompressible(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// TestConfigMapStoreRefusesAnObjectOverTheLimitBeforeWritingAnything: a
// write that would put more than MaxObjectBytes in one ConfigMap writes
// nothing at all, not even the other object of the same update (the root
// that would name it), and says what to do.
func TestConfigMapStoreRefusesAnObjectOverTheLimitBeforeWritingAnything(t *testing.T) {
	ctx := context.Background()
	c, api := newAPIServer()
	s := NewConfigMapStore(c, "mtls-migrate")
	if err := s.Update(ctx, func(st *State) error { st.EnsurePlan("p", "sha256:abc", t0).EnsureStage(1, "small"); return nil }); err != nil {
		t.Fatal(err)
	}
	api.takeWrites()
	err := s.Update(ctx, func(st *State) error {
		p := st.EnsurePlan("p", "sha256:abc", t0)
		big := p.EnsureStage(60, "huge") // a new group: a new object, and the root
		for i := range 40 {
			big.Snapshot = append(big.Snapshot, json.RawMessage(fmt.Sprintf(`{"metadata":{"name":"pa-%d"},"data":%q}`, i, incompressible(24<<10))))
		}
		return nil
	})
	var tl *TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), "stage 60 (huge)") || !strings.Contains(err.Error(), "nothing was written") || !strings.Contains(err.Error(), "--exclude-namespaces") {
		t.Fatalf("err = %v, want a TooLargeError naming stage 60 and what to do", err)
	}
	if w := api.takeWrites(); len(w) != 0 {
		t.Fatalf("wrote %v before refusing", w)
	}
	got, _ := s.Load(ctx)
	if p := got.Plan("sha256:abc"); len(p.Stages) != 1 {
		t.Fatalf("state changed: %+v", p.Stages)
	}
}

func TestConfigMapStoreRefusesToChangeTwoExistingShardsAtOnce(t *testing.T) {
	ctx := context.Background()
	c, api := newAPIServer()
	s := NewConfigMapStore(c, "mtls-migrate")
	if err := s.Update(ctx, func(st *State) error {
		p := st.EnsurePlan("p", "sha256:abc", t0)
		p.EnsureStage(1, "a")
		p.EnsureStage(60, "b")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	api.takeWrites()
	err := s.Update(ctx, func(st *State) error {
		p := st.Plan("sha256:abc")
		p.Stage(1).Reason, p.Stage(60).Reason = "x", "y"
		return nil
	})
	var mo *MultiObjectError
	if !errors.As(err, &mo) || len(mo.Objects) != 2 {
		t.Fatalf("err = %v, want a MultiObjectError", err)
	}
	if w := api.takeWrites(); len(w) != 0 {
		t.Fatalf("wrote %v", w)
	}
}

// TestConfigMapStoreMigratesTheSingleConfigMapState: a state written by
// an mtls-migrate from before the shards (one ConfigMap, key state.json)
// reads as it was, and the first update rewrites it sharded; an old binary
// then refuses the root rather than reading an empty state.
func TestConfigMapStoreMigratesTheSingleConfigMapState(t *testing.T) {
	ctx := context.Background()
	var old State
	p := old.EnsurePlan("before", "sha256:0ld", t0)
	for n := 1; n <= 70; n++ {
		*p.EnsureStage(n, fmt.Sprintf("ns-%d", n)) = doneStage(n, fmt.Sprintf("ns-%d", n))
	}
	p.Outline = []StageOutline{{Number: 1, Namespace: "ns-1", Status: "ready", TargetMode: "STRICT", Digest: "ab"}}
	old.ProbedAt = map[string]time.Time{"ns-3": t0}
	legacy, err := encode(&old)
	if err != nil {
		t.Fatal(err)
	}
	c, api := newAPIServer()
	api.cms[ConfigMapName] = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: "mtls-migrate", ResourceVersion: "1"}, Data: map[string]string{Key: string(legacy)}}
	s := NewConfigMapStore(c, "mtls-migrate")
	same := func(got *State) {
		t.Helper()
		a, _ := json.Marshal(&old)
		b, _ := json.Marshal(got)
		if string(a) != string(b) {
			t.Fatalf("state differs:\n%s\n%s", a, b)
		}
	}
	got, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	same(got)
	if err := s.Update(ctx, func(st *State) error { st.Plan("sha256:0ld").Stage(70).Reason = "after the upgrade"; return nil }); err != nil {
		t.Fatal(err)
	}
	old.Plans[0].Stages[69].Reason = "after the upgrade"
	got, err = s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	same(got)
	rootCM := api.cms[ConfigMapName]
	if rootCM.Data[RootKey] == "" || len(api.cms) != 5 { // root, two groups, outline, one probe bucket
		t.Fatalf("not migrated: keys %v, %d objects", rootCM.Data, len(api.cms))
	}
	if _, err := decode([]byte(rootCM.Data[Key])); err == nil {
		t.Fatal("an mtls-migrate from before the shards would read the migrated root's state.json as a state")
	}
}

func TestConfigMapStoreSaysWhichShardIsMissing(t *testing.T) {
	ctx := context.Background()
	c, api := newAPIServer()
	s := NewConfigMapStore(c, "mtls-migrate")
	if err := s.Update(ctx, func(st *State) error { st.EnsurePlan("p", "sha256:abc", t0).EnsureStage(3, "ns"); return nil }); err != nil {
		t.Fatal(err)
	}
	for name := range api.cms {
		if name != ConfigMapName {
			delete(api.cms, name)
		}
	}
	_, err := s.Load(ctx)
	var me *MissingObjectError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "stages 1-50 of plan") {
		t.Fatalf("err = %v, want a MissingObjectError naming the stages", err)
	}
	if err := s.Update(ctx, func(*State) error { t.Fatal("fn ran on a state with a part missing"); return nil }); !errors.As(err, &me) {
		t.Fatalf("update: %v", err)
	}
}

// TestCarriedOverStagesAreStoredOnce: a stage carried to a new plan record
// keeps its snapshot, gates and probes in the executor's view, and the
// store writes them once.
func TestCarriedOverStagesAreStoredOnce(t *testing.T) {
	ctx := context.Background()
	c, api := newAPIServer()
	s := NewConfigMapStore(c, "mtls-migrate")
	if err := s.Update(ctx, func(st *State) error {
		p := st.EnsurePlan("old", "sha256:0ld", t0)
		for n := 1; n <= 40; n++ {
			*p.EnsureStage(n, fmt.Sprintf("ns-%d", n)) = doneStage(n, fmt.Sprintf("ns-%d", n))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	oldSize := api.jsonBytes(t)
	if err := s.Update(ctx, func(st *State) error {
		rec := st.EnsurePlan("new", "sha256:new", t0)
		for _, ost := range st.Plan("sha256:0ld").Stages {
			ns := rec.EnsureStage(ost.Number+1, ost.Namespace) // numbers moved by one
			*ns = ost
			ns.Number = ost.Number + 1
			ns.CarriedFrom = &StageRef{Digest: "sha256:0ld", Number: ost.Number}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	carried := got.Plan("sha256:new").Stage(41)
	orig := got.Plan("sha256:0ld").Stage(40)
	if carried == nil || len(carried.Snapshot) != 1 || string(carried.Snapshot[0]) != string(orig.Snapshot[0]) || len(carried.Probes) != 10 || carried.Target.UID != orig.Target.UID {
		t.Fatalf("carried stage read back as %+v", carried)
	}
	if grown := api.jsonBytes(t) - oldSize; grown > oldSize/3 {
		t.Fatalf("carrying 40 stages over grew the state by %d bytes (it was %d): copied, not referenced", grown, oldSize)
	}
	// Changing what a carried stage shares under the old plan writes both
	// records' objects: refused as a whole, nothing written.
	api.takeWrites()
	err = s.Update(ctx, func(st *State) error {
		st.Plan("sha256:0ld").Stage(40).Snapshot = nil
		return nil
	})
	var mo *MultiObjectError
	if !errors.As(err, &mo) {
		t.Fatalf("err = %v, want a MultiObjectError", err)
	}
	if w := api.takeWrites(); len(w) != 0 {
		t.Fatalf("wrote %v", w)
	}
}

func TestHistoryKeepsTheLastTransitionsAndCountsTheRest(t *testing.T) {
	st := &StageState{Number: 1, Phase: Pending}
	at := t0
	for range 20 {
		for _, ph := range []Phase{Applying, Soaking, RollingBack, RolledBack} {
			at = at.Add(time.Minute)
			if err := st.Move(ph, at, ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(st.History) != MaxHistory || st.EarlierTransitions != 80-MaxHistory || st.Attempts != 20 || !st.History[MaxHistory-1].At.Equal(at) {
		t.Fatalf("history %d, earlier %d, attempts %d", len(st.History), st.EarlierTransitions, st.Attempts)
	}
}
