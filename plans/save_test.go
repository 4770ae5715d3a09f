package plans

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// marshalWhole is how plans were written before Encode streamed them: the
// whole document through one yaml.v3 encoder. Encode must write the same
// bytes, or every digest recorded in a migration state would change.
func marshalWhole(t *testing.T, p *Plan) []byte {
	t.Helper()
	c := *p
	c.Metadata.GeneratedAt = c.Metadata.GeneratedAt.UTC()
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&c); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// awkwardPlan has what stresses a YAML writer: multi-line strings with
// blank lines and trailing spaces, strings that look like numbers, booleans,
// comments or sequence items, unicode, empty lists.
func awkwardPlan(t *testing.T) *Plan {
	t.Helper()
	p, err := Load("valid.yaml", loadValid(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Metadata.GeneratedAt = p.Metadata.GeneratedAt.In(time.FixedZone("X", 3600))
	p.Metadata.Warnings = []string{"line one\n\nline three  \n  - number: 9", "yes", "0x1F", "# not a comment", "- item", "ünïcödé ✓", ""}
	s := &p.Stages[0]
	s.Rationale = "first\n\n  - number: 2\nlast"
	s.Risks = append(s.Risks, Risk{Code: "X", Severity: SeverityInfo, Message: "a: b\n\tc", Fix: "'quoted' \"double\" \\ back"})
	s.Gates[0].Query = "sum(x)\n  / sum(y)\n"
	return p
}

func TestEncodeWritesWhatTheWholeDocumentEncoderWrote(t *testing.T) {
	valid, err := Load("valid.yaml", loadValid(t))
	if err != nil {
		t.Fatal(err)
	}
	noStages := *valid
	noStages.Stages = nil
	many := awkwardPlan(t)
	for i := 0; len(many.Stages) < 5*encodeBatch+3; i++ {
		st := many.Stages[i%2]
		st.Number = len(many.Stages) + 1
		st.Rationale += strings.Repeat("x", i)
		many.Stages = append(many.Stages, st)
	}
	plans := map[string]*Plan{"valid": valid, "awkward": awkwardPlan(t), "no stages": &noStages, "empty": {}, "many stages, encoded in parallel": many}
	for name, p := range plans {
		t.Run(name, func(t *testing.T) {
			got, err := Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			if want := marshalWhole(t, p); !bytes.Equal(got, want) {
				t.Fatalf("streamed YAML differs:\n--- got\n%s\n--- want\n%s", got, want)
			}
		})
	}
}

func TestSaveReturnsTheDigestOfWhatItWrote(t *testing.T) {
	p := awkwardPlan(t)
	path := filepath.Join(t.TempDir(), "plan.yaml")
	d, err := Save(path, p)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Digest(p)
	if err != nil || d != want {
		t.Fatalf("Save's digest %s, Digest %s (%v)", d, want, err)
	}
	q, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if dq, _ := Digest(q); dq != d {
		t.Fatalf("the saved plan loads back with digest %s, want %s", dq, d)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

// TestLoadStageByStageReadsWhatTheDocumentSays: the stage-by-stage decoder
// takes Encode's layout and leaves everything else, anything it could
// misread included, to the whole-document decoder, which then decides.
func TestLoadStageByStageReadsWhatTheDocumentSays(t *testing.T) {
	base := string(loadValid(t))
	stage2 := "  - number: 2\n"
	tests := []struct {
		name   string
		doc    string
		staged bool // decoded stage by stage
		valid  bool
	}{
		{"the layout Encode writes", base, true, true},
		{"another indentation", strings.ReplaceAll(strings.ReplaceAll(base, "\n  - ", "\n- "), "\n    ", "\n  "), false, true},
		{"a top-level key after the stages", base + "kind: Other\n", false, false},
		{"a second document", base + "---\nkind: Other\n", false, false},
		{"an anchor used in a later stage", strings.Replace(strings.Replace(base, "soak: 5m", "soak: &s 5m", 1), "soak: 10m", "soak: *s", 1), false, true},
		{"a misspelled field in the second stage", strings.Replace(base, stage2+"    namespace:", stage2+"    namespce:", 1), false, false},
		{"stages out of order", strings.Replace(base, stage2, "  - number: 3\n", 1), false, false},
		{"a stage split in two", strings.Replace(base, stage2+"    namespace: istio-system\n", stage2+"  - namespace: istio-system\n", 1), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.doc == base && tt.name != "the layout Encode writes" {
				t.Fatal("the test's edit did not apply")
			}
			staged, ok := loadStaged([]byte(tt.doc))
			whole, err := loadWhole("p.yaml", []byte(tt.doc))
			if ok != tt.staged || (err == nil) != tt.valid {
				t.Fatalf("staged %v, whole-document error %v; want staged %v, valid %v", ok, err, tt.staged, tt.valid)
			}
			if ok {
				a, _ := Marshal(staged)
				b, _ := Marshal(whole)
				if !bytes.Equal(a, b) {
					t.Fatal("stage by stage and as a document decode differently")
				}
			}
			if p, err := Load("p.yaml", []byte(tt.doc)); (err == nil) != tt.valid || (err != nil && !strings.Contains(err.Error(), "line ")) {
				t.Fatalf("Load = %v, %v", p != nil, err)
			}
		})
	}
}

// TestPiecesRoundTrip: the pieces EncodePieces hands out, regrouped in runs
// (as a plan published in shards is), decode to the same plan, and
// concatenated are Encode's bytes.
func TestPiecesRoundTrip(t *testing.T) {
	p, err := Load("valid.yaml", loadValid(t))
	if err != nil {
		t.Fatal(err)
	}
	for len(p.Stages) < 3*encodeBatch+5 {
		st := p.Stages[0]
		st.Number = len(p.Stages) + 1
		st.Namespace = fmt.Sprintf("ns-%d", st.Number)
		st.Policy.Metadata.Namespace = st.Namespace
		p.Stages = append(p.Stages, st)
	}
	// The mesh stage goes last.
	mesh := p.Stages[1]
	p.Stages = append(append(p.Stages[:1:1], p.Stages[2:]...), mesh)
	for i := range p.Stages {
		p.Stages[i].Number = i + 1
	}
	if problems := Validate(p); len(problems) > 0 {
		t.Fatal(problems)
	}
	var all, run bytes.Buffer
	var d PiecesDecoder
	n := 0
	if err := EncodePieces(p, func(stage int, b []byte) error {
		if stage != 0 && stage != n+1 {
			t.Fatalf("stage %d after %d", stage, n)
		}
		n = stage
		all.Write(b)
		run.Write(b)
		if stage%7 == 0 {
			err := d.Add(append([]byte(nil), run.Bytes()...))
			run.Reset()
			return err
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(run.Bytes()); err != nil {
		t.Fatal(err)
	}
	q, err := d.Plan("pieces")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Marshal(p)
	got, _ := Marshal(q)
	if !bytes.Equal(all.Bytes(), want) || !bytes.Equal(got, want) {
		t.Fatal("pieces differ from the plan")
	}
	var bad PiecesDecoder
	if err := bad.Add([]byte("  - number: 1\n")); err == nil {
		t.Fatal("a piece without the header was taken as the first")
	}
}
