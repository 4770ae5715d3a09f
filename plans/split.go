package plans

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"sync"

	"gopkg.in/yaml.v3"
)

// loadStaged decodes a plan in the layout Encode writes, the header and then
// each stage on its own, in parallel: a big plan is never one YAML tree in
// memory (yaml.v3 holds ~25 bytes of nodes per byte of document). It reports
// ok false, having decided nothing, for anything it is not sure to read as
// the whole-document decoder would (another layout, anchors, a second
// document, an error, a validation problem); Load then decodes the document
// as a whole, which is also what names the lines of the problems.
func loadStaged(data []byte) (*Plan, bool) {
	header, stages, ok := splitStages(data)
	if !ok {
		return nil, false
	}
	var p Plan
	if !decodeOne(header, &p) || p.Stages != nil {
		return nil, false
	}
	p.Stages = make([]Stage, len(stages))
	workers := min(runtime.GOMAXPROCS(0), maxEncoders)
	var wg sync.WaitGroup
	bad := make([]bool, workers)
	for k := range workers {
		wg.Go(func() {
			for i := k; i < len(stages) && !bad[k]; i += workers {
				var one []Stage
				if !decodeOne(stages[i], &one) || len(one) != 1 {
					bad[k] = true
					return
				}
				p.Stages[i] = one[0]
			}
		})
	}
	wg.Wait()
	for _, b := range bad {
		if b {
			return nil, false
		}
	}
	if len(Validate(&p)) > 0 {
		return nil, false
	}
	return &p, true
}

// decodeOne decodes exactly one strict YAML document (unknown fields are
// errors) that is not empty.
func decodeOne(data []byte, v any) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return false
	}
	var extra yaml.Node
	return errors.Is(dec.Decode(&extra), io.EOF)
}

// splitStages cuts a document in Encode's layout into the header (up to and
// including the top-level "stages:" line) and one piece per stage (from its
// "  - " line to the next). Only a line that starts with exactly "  - " at
// the top-level sequence starts a stage: in Encode's output (and in any
// valid YAML with this layout) nothing inside a stage is indented less than
// four spaces.
func splitStages(data []byte) (header []byte, stages [][]byte, ok bool) {
	const key = "\n" + stagesKey
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return nil, nil, false
	}
	header, rest := data[:i+len(key)], data[i+len(key):]
	if !bytes.HasPrefix(rest, []byte("  - ")) {
		return nil, nil, false
	}
	for len(rest) > 0 {
		end := bytes.Index(rest, []byte("\n  - "))
		if end < 0 {
			stages = append(stages, rest)
			break
		}
		stages = append(stages, rest[:end+1])
		rest = rest[end+1:]
	}
	return header, stages, true
}
