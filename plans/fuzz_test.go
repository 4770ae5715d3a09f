package plans

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad shows the loader never panics and that whatever it accepts it
// can write back and load again identically. Seeds: the example plans in
// testdata and the corpus in testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.yaml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		// Seeds at the edges of the stage-by-stage decoder's layout.
		f.Add([]byte(strings.Replace(strings.Replace(string(b), "soak: 5m", "soak: &s 5m", 1), "soak: 10m", "soak: *s", 1)))
		f.Add([]byte(strings.ReplaceAll(string(b), "\n  - ", "\n- ")))
		f.Add(append(b, "metadata: {}\n"...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		staged, ok := loadStaged(data)
		p, err := loadWhole("fuzz", data)
		if ok {
			// The stage-by-stage decoder accepts only what the
			// whole-document one accepts, and reads it the same.
			if err != nil {
				t.Fatalf("accepted stage by stage, refused as a document: %v", err)
			}
			a, _ := Marshal(staged)
			b, _ := Marshal(p)
			if string(a) != string(b) {
				t.Fatalf("decoded differently stage by stage:\n%s\n---\n%s", a, b)
			}
		}
		if err != nil {
			return
		}
		out, err := Marshal(p)
		if err != nil {
			t.Fatalf("accepted plan does not marshal: %v", err)
		}
		q, err := Load("fuzz-again", out)
		if err != nil {
			t.Fatalf("accepted plan does not load back: %v\n%s", err, out)
		}
		out2, err := Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != string(out2) {
			t.Fatalf("not stable across a round trip:\n%s\n---\n%s", out, out2)
		}
	})
}
