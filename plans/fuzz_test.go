package plans

import (
	"os"
	"path/filepath"
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
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Load("fuzz", data)
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
