package state

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/gz"
)

// The sharded layout (version 2) of the state in ConfigMaps, all in the
// state's namespace:
//
//   - the root, ConfigMap mtls-migrate-state (the name of the single
//     ConfigMap that held everything before), key root.json: the plan
//     records' names, digests and start times, and the names of the objects
//     holding the rest. Its key state.json holds a document an older
//     mtls-migrate cannot decode, so an old binary stops instead of taking
//     the migration for not started.
//   - per plan record, one object per group of StagesPerShard stage numbers
//     (mtls-migrate-state-<digest>-g<group>-<suffix>), and the outline in
//     parts of outlinePart stages;
//   - the probe marks (State.ProbedAt), hashed by namespace into
//     probedBuckets objects.
//
// Every object but the root holds gzip-compressed JSON under payloadKey.
// An object's name ends with a random suffix chosen when it is created, and
// only the root makes it part of the state: an object the root does not
// name is not read (see ConfigMapStore.Update for why that makes writes of
// several objects safe).
const (
	// RootKey holds the root document.
	RootKey = "root.json"
	// payloadKey holds a shard's gzip-compressed JSON.
	payloadKey = "state.json.gz"
	// DefaultStagesPerShard stage records share an object: at about 4 KiB
	// of JSON (1 KiB compressed) per done stage, 50 of them are ~50 KiB.
	DefaultStagesPerShard = 50
	outlinePart           = 2000
	probedBuckets         = 16
	// MaxObjectBytes is the most the store writes in one ConfigMap (keys and
	// values; the API server refuses more than 1 MiB).
	MaxObjectBytes = 900 << 10
	layoutVersion  = 2
	// ShardLabel marks every object of the state (the root too) with the
	// root's name.
	ShardLabel = "mtls-migrate.io/state"
	// contentsAnnotation says what a shard holds, for kubectl get.
	contentsAnnotation = "mtls-migrate.io/contents"
	// oldBinaryNotice is the root's state.json: a JSON document whose
	// "plans" is a string, which an mtls-migrate from before the sharded
	// layout fails to decode (it wants a list), and says why.
	oldBinaryNotice = `{"plans":"this migration state is kept in several ConfigMaps (root.json of this one names them); an mtls-migrate from before the sharded state cannot read it: upgrade it"}`
)

// root is the root document.
type root struct {
	Version int          `json:"version"`
	Plans   []rootRecord `json:"plans"`
	// Probed maps a bucket of namespaces to its object's suffix.
	Probed map[int]string `json:"probed,omitempty"`
}

// rootRecord is a plan record without its stages and outline.
type rootRecord struct {
	Name      string    `json:"name"`
	Digest    string    `json:"digest"`
	StartedAt time.Time `json:"startedAt"`
	// Groups maps a stage group ((number-1)/stagesPerShard) to its object's
	// suffix.
	Groups map[int]string `json:"groups,omitempty"`
	// Outline holds the suffixes of the outline's parts, in order.
	Outline []string `json:"outline,omitempty"`
	// StagesPerShard is the grouping Groups uses.
	StagesPerShard int `json:"stagesPerShard"`
}

type stageShard struct {
	Plan   string            `json:"plan"`
	Group  int               `json:"group"`
	Stages []json.RawMessage `json:"stages"`
}

type outlineShard struct {
	Plan    string         `json:"plan"`
	Part    int            `json:"part"`
	Outline []StageOutline `json:"outline"`
}

type probedShard struct {
	Bucket   int                  `json:"bucket"`
	ProbedAt map[string]time.Time `json:"probedAt"`
}

// inheritable are the keys of a carried-over stage's record that the store
// keeps once, with the stage it was carried from, when they are the same
// there: what makes a done stage's record big.
var inheritable = []string{"snapshot", "baseline", "gates", "probes", "target", "alsoTargets"}

// inheritsKey lists, in a stored stage, the keys taken from CarriedFrom.
const inheritsKey = "inherits"

// object is one ConfigMap of the layout as the store reads or writes it.
type object struct {
	name     string
	payload  []byte // uncompressed JSON (the root's root.json)
	contents string // what it holds, for people and errors
	isRoot   bool
}

// digestID is the part of a plan digest in its objects' names.
func digestID(digest string) string {
	h := strings.TrimPrefix(digest, "sha256:")
	h = strings.ToLower(h)
	var b strings.Builder
	for _, r := range h {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
		if b.Len() == 12 {
			break
		}
	}
	if b.Len() == 0 {
		// Not a sha256 digest (tests, hand-made records): a hash of it.
		f := fnv.New64a()
		_, _ = f.Write([]byte(digest))
		return strconv.FormatUint(f.Sum64(), 36)
	}
	return b.String()
}

func (c *ConfigMapStore) groupName(digest string, g int, suffix string) string {
	return fmt.Sprintf("%s-%s-g%d-%s", c.Name, digestID(digest), g, suffix)
}

func (c *ConfigMapStore) outlineName(digest string, i int, suffix string) string {
	return fmt.Sprintf("%s-%s-outline%d-%s", c.Name, digestID(digest), i, suffix)
}

func (c *ConfigMapStore) probedName(b int, suffix string) string {
	return fmt.Sprintf("%s-probed%d-%s", c.Name, b, suffix)
}

// newSuffix is a random object-name suffix.
func newSuffix() string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func probedBucket(ns string) int {
	f := fnv.New32a()
	_, _ = f.Write([]byte(ns))
	return int(f.Sum32() % probedBuckets)
}

func (c *ConfigMapStore) perShard() int {
	if c.StagesPerShard > 0 {
		return c.StagesPerShard
	}
	return DefaultStagesPerShard
}

// layout is the state as objects: what was read (or is to be written).
type layout struct {
	root    root
	objects map[string]*object // by name, the root excluded
}

// objectNames lists the objects the root names, with what each holds.
func (c *ConfigMapStore) objectNames(r *root) []*object {
	var out []*object
	for _, rec := range r.Plans {
		n := rec.StagesPerShard
		for _, g := range sortedKeys(rec.Groups) {
			out = append(out, &object{name: c.groupName(rec.Digest, g, rec.Groups[g]),
				contents: fmt.Sprintf("stages %d-%d of plan %q (%s)", g*n+1, (g+1)*n, rec.Name, rec.Digest)})
		}
		for i, sfx := range rec.Outline {
			out = append(out, &object{name: c.outlineName(rec.Digest, i, sfx),
				contents: fmt.Sprintf("outline part %d of plan %q (%s)", i+1, rec.Name, rec.Digest)})
		}
	}
	for _, b := range sortedKeys(r.Probed) {
		out = append(out, &object{name: c.probedName(b, r.Probed[b]), contents: fmt.Sprintf("probe marks, bucket %d", b)})
	}
	return out
}

func sortedKeys(m map[int]string) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// decodeLayout assembles the State from the root and the objects it names
// (all present: a missing one is the caller's error).
func (c *ConfigMapStore) decodeLayout(l *layout) (*State, error) {
	s := &State{}
	idx := stageIndex{}
	for _, rec := range l.root.Plans {
		pr := PlanRecord{Name: rec.Name, Digest: rec.Digest, StartedAt: rec.StartedAt}
		n := rec.StagesPerShard
		for _, g := range sortedKeys(rec.Groups) {
			o := l.objects[c.groupName(rec.Digest, g, rec.Groups[g])]
			var sh stageShard
			if err := json.Unmarshal(o.payload, &sh); err != nil {
				return nil, fmt.Errorf("ConfigMap %s (%s): %w", o.name, o.contents, err)
			}
			if sh.Plan != rec.Digest || sh.Group != g {
				return nil, fmt.Errorf("ConfigMap %s holds group %d of plan %s, but the root names it for %s; the state was edited by hand", o.name, sh.Group, sh.Plan, o.contents)
			}
			for _, raw := range sh.Stages {
				st, full, err := decodeStage(raw, &idx)
				if err != nil {
					return nil, fmt.Errorf("ConfigMap %s (%s): %w", o.name, o.contents, err)
				}
				if n > 0 && (st.Number-1)/n != g {
					return nil, fmt.Errorf("ConfigMap %s (%s) holds stage %d", o.name, o.contents, st.Number)
				}
				idx.add(StageRef{Digest: rec.Digest, Number: st.Number}, full)
				pr.Stages = append(pr.Stages, *st)
			}
		}
		sort.SliceStable(pr.Stages, func(i, j int) bool { return pr.Stages[i].Number < pr.Stages[j].Number })
		for i, sfx := range rec.Outline {
			o := l.objects[c.outlineName(rec.Digest, i, sfx)]
			var sh outlineShard
			if err := json.Unmarshal(o.payload, &sh); err != nil {
				return nil, fmt.Errorf("ConfigMap %s (%s): %w", o.name, o.contents, err)
			}
			if sh.Plan != rec.Digest || sh.Part != i {
				return nil, fmt.Errorf("ConfigMap %s holds outline part %d of plan %s, but the root names it for %s; the state was edited by hand", o.name, sh.Part, sh.Plan, o.contents)
			}
			pr.Outline = append(pr.Outline, sh.Outline...)
		}
		s.Plans = append(s.Plans, pr)
	}
	for _, b := range sortedKeys(l.root.Probed) {
		o := l.objects[c.probedName(b, l.root.Probed[b])]
		var sh probedShard
		if err := json.Unmarshal(o.payload, &sh); err != nil {
			return nil, fmt.Errorf("ConfigMap %s (%s): %w", o.name, o.contents, err)
		}
		for ns, t := range sh.ProbedAt {
			if s.ProbedAt == nil {
				s.ProbedAt = map[string]time.Time{}
			}
			s.ProbedAt[ns] = t
		}
	}
	return s, nil
}

// stageIndex holds every stage's full JSON by plan and number, and the
// keys of those a carried-over stage was compared with.
type stageIndex struct {
	raw  map[StageRef]json.RawMessage
	keys map[StageRef]map[string]json.RawMessage
}

func (x *stageIndex) add(ref StageRef, raw json.RawMessage) {
	if x.raw == nil {
		x.raw = map[StageRef]json.RawMessage{}
	}
	x.raw[ref] = raw
}

// of returns the keys of the stage ref, or nil when there is none.
func (x *stageIndex) of(ref StageRef) (map[string]json.RawMessage, error) {
	if m, ok := x.keys[ref]; ok {
		return m, nil
	}
	raw, ok := x.raw[ref]
	if !ok {
		return nil, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	if x.keys == nil {
		x.keys = map[StageRef]map[string]json.RawMessage{}
	}
	x.keys[ref] = m
	return m, nil
}

// decodeStage decodes a stored stage, taking the keys it inherits from the
// stage it was carried from (decoded before it: plan records are in order),
// and returns its full JSON.
func decodeStage(raw json.RawMessage, idx *stageIndex) (*StageState, json.RawMessage, error) {
	if bytes.Contains(raw, []byte(`"`+inheritsKey+`":`)) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, nil, err
		}
		if inh, ok := m[inheritsKey]; ok {
			delete(m, inheritsKey)
			var keys []string
			var from StageRef
			if err := json.Unmarshal(inh, &keys); err != nil {
				return nil, nil, err
			}
			if err := json.Unmarshal(m["carriedFrom"], &from); err != nil {
				return nil, nil, fmt.Errorf("a stage inherits %v but names no stage it was carried from", keys)
			}
			src, err := idx.of(from)
			if err != nil {
				return nil, nil, err
			}
			if src == nil {
				return nil, nil, fmt.Errorf("a stage was carried over from stage %d of plan %s, which the state does not hold", from.Number, from.Digest)
			}
			for _, k := range keys {
				m[k] = src[k]
			}
			if raw, err = json.Marshal(m); err != nil {
				return nil, nil, err
			}
		}
	}
	st := &StageState{}
	if err := json.Unmarshal(raw, st); err != nil {
		return nil, nil, err
	}
	return st, raw, nil
}

// encodeLayout lays s out as objects, keeping the names of prev's objects
// (read, what Update read) for what they held: a new group, outline or
// bucket gets a new object.
func (c *ConfigMapStore) encodeLayout(s *State, prev *root, read map[string]*object) (*layout, error) {
	prevRec := map[string]*rootRecord{}
	if prev != nil {
		for i := range prev.Plans {
			prevRec[prev.Plans[i].Digest] = &prev.Plans[i]
		}
	}
	l := &layout{root: root{Version: layoutVersion}, objects: map[string]*object{}}
	idx := stageIndex{}
	for i := range s.Plans {
		p := &s.Plans[i]
		old := prevRec[p.Digest]
		rec := rootRecord{Name: p.Name, Digest: p.Digest, StartedAt: p.StartedAt, StagesPerShard: c.perShard()}
		if old != nil && old.StagesPerShard > 0 {
			rec.StagesPerShard = old.StagesPerShard
		}
		n := rec.StagesPerShard
		groups := map[int][]json.RawMessage{}
		for j := range p.Stages {
			st := &p.Stages[j]
			raw, full, err := encodeStage(st, &idx)
			if err != nil {
				return nil, fmt.Errorf("encode stage %d of plan %s: %w", st.Number, p.Digest, err)
			}
			idx.add(StageRef{Digest: p.Digest, Number: st.Number}, full)
			g := max(st.Number-1, 0) / n
			groups[g] = append(groups[g], raw)
		}
		for g, stages := range groups {
			if rec.Groups == nil {
				rec.Groups = map[int]string{}
			}
			sfx := ""
			if old != nil {
				sfx = old.Groups[g]
			}
			if sfx == "" {
				sfx = newSuffix()
			}
			rec.Groups[g] = sfx
			b, err := json.Marshal(stageShard{Plan: p.Digest, Group: g, Stages: stages})
			if err != nil {
				return nil, err
			}
			name := c.groupName(p.Digest, g, sfx)
			l.objects[name] = &object{name: name, payload: b, contents: fmt.Sprintf("stages %d-%d of plan %q (%s)", g*n+1, (g+1)*n, p.Name, p.Digest)}
		}
		if len(p.Outline) > 0 {
			var parts [][]byte
			for k := 0; k*outlinePart < len(p.Outline); k++ {
				b, err := json.Marshal(outlineShard{Plan: p.Digest, Part: k, Outline: p.Outline[k*outlinePart : min((k+1)*outlinePart, len(p.Outline))]})
				if err != nil {
					return nil, err
				}
				parts = append(parts, b)
			}
			// The outline is written once: the old parts are kept unless
			// it changed, which makes new ones (never two writes in place).
			same := old != nil && len(old.Outline) == len(parts)
			for k := 0; same && k < len(parts); k++ {
				o := read[c.outlineName(p.Digest, k, old.Outline[k])]
				same = o != nil && bytes.Equal(o.payload, parts[k])
			}
			for k, b := range parts {
				sfx := newSuffix()
				if same {
					sfx = old.Outline[k]
				}
				rec.Outline = append(rec.Outline, sfx)
				name := c.outlineName(p.Digest, k, sfx)
				l.objects[name] = &object{name: name, payload: b, contents: fmt.Sprintf("outline part %d of plan %q (%s)", k+1, p.Name, p.Digest)}
			}
		}
		l.root.Plans = append(l.root.Plans, rec)
	}
	buckets := map[int]map[string]time.Time{}
	for ns, t := range s.ProbedAt {
		b := probedBucket(ns)
		if buckets[b] == nil {
			buckets[b] = map[string]time.Time{}
		}
		buckets[b][ns] = t
	}
	for b, m := range buckets {
		if l.root.Probed == nil {
			l.root.Probed = map[int]string{}
		}
		sfx := ""
		if prev != nil {
			sfx = prev.Probed[b]
		}
		if sfx == "" {
			sfx = newSuffix()
		}
		l.root.Probed[b] = sfx
		raw, err := json.Marshal(probedShard{Bucket: b, ProbedAt: m})
		if err != nil {
			return nil, err
		}
		name := c.probedName(b, sfx)
		l.objects[name] = &object{name: name, payload: raw, contents: fmt.Sprintf("probe marks, bucket %d", b)}
	}
	return l, nil
}

// encodeStage stores a stage (and returns its full JSON); a carried-over
// one without the inheritable keys that are the same in the stage it was
// carried from.
func encodeStage(st *StageState, idx *stageIndex) (stored, full json.RawMessage, err error) {
	full, err = json.Marshal(st)
	if err != nil || st.CarriedFrom == nil {
		return full, full, err
	}
	src, err := idx.of(*st.CarriedFrom)
	if err != nil || src == nil {
		return full, full, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(full, &m); err != nil {
		return nil, nil, err
	}
	var keys []string
	for _, k := range inheritable {
		if v, ok := m[k]; ok && bytes.Equal(v, src[k]) {
			keys = append(keys, k)
			delete(m, k)
		}
	}
	if len(keys) == 0 {
		return full, full, nil
	}
	m[inheritsKey], _ = json.Marshal(keys)
	stored, err = json.Marshal(m)
	return stored, full, err
}

// maxPayload bounds what a shard may decompress to (a ConfigMap holds at
// most 1 MiB compressed; JSON compresses about tenfold).
const maxPayload = 64 << 20

func gunzipBytes(b []byte) ([]byte, error) { return gz.Decompress(b, maxPayload) }

// StagesOf decodes the stage records a shard of the state holds, as they
// are stored (a carried-over stage without what it shares with its
// original), for tools that watch the state's ConfigMaps; ok is false for
// any other object.
func StagesOf(cm *corev1.ConfigMap) (digest string, stages []StageState, ok bool) {
	b, err := gunzipBytes(cm.BinaryData[payloadKey])
	if err != nil {
		return "", nil, false
	}
	var sh stageShard
	if json.Unmarshal(b, &sh) != nil || sh.Plan == "" {
		return "", nil, false
	}
	for _, raw := range sh.Stages {
		var st StageState
		if json.Unmarshal(raw, &st) != nil {
			return "", nil, false
		}
		stages = append(stages, st)
	}
	return sh.Plan, stages, true
}
