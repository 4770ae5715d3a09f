package plans

import (
	"bytes"
	"errors"
	"fmt"
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
	var d PiecesDecoder
	if d.Add(data) != nil {
		return nil, false
	}
	p, problems := d.plan()
	if len(problems) > 0 {
		return nil, false
	}
	return p, true
}

// PiecesDecoder reads a plan from its YAML in Encode's layout, given in
// pieces cut between stages (as EncodePieces hands them out, or any run of
// them): the first piece starts with the header. Each stage is decoded
// strictly as it comes, so the document is never held whole. It takes
// only that layout; a plan in any other is read with Load.
type PiecesDecoder struct {
	p       Plan
	started bool
	err     error
}

// Add decodes the next piece.
func (d *PiecesDecoder) Add(piece []byte) error {
	if d.err != nil {
		return d.err
	}
	d.err = d.add(piece)
	return d.err
}

func (d *PiecesDecoder) add(piece []byte) error {
	if !d.started {
		d.started = true
		header, rest, ok := cutHeader(piece)
		if !ok {
			return errors.New("the document does not start with a plan's header (apiVersion, kind, metadata, then stages:)")
		}
		if err := decodeOne(header, &d.p); err != nil {
			return fmt.Errorf("the plan's header: %w", err)
		}
		if d.p.Stages != nil {
			return errors.New("the plan's header holds stages")
		}
		piece = rest
	}
	items, ok := cutItems(piece)
	if !ok {
		return fmt.Errorf("after stage %d: the document goes on with something other than a stage", len(d.p.Stages))
	}
	stages := make([]Stage, len(items))
	errs := make([]error, len(items))
	workers := min(runtime.GOMAXPROCS(0), maxEncoders, max(len(items), 1))
	var wg sync.WaitGroup
	for k := range workers {
		wg.Go(func() {
			for i := k; i < len(items); i += workers {
				var one []Stage
				if err := decodeOne(items[i], &one); err != nil {
					errs[i] = err
					return
				}
				if len(one) != 1 {
					errs[i] = errors.New("not one stage")
					return
				}
				stages[i] = one[0]
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("stage %d of the document: %w", len(d.p.Stages)+i+1, err)
		}
	}
	d.p.Stages = append(d.p.Stages, stages...)
	return nil
}

// Plan validates and returns the plan decoded; source names it in errors,
// an *InvalidError for a plan that does not validate (by field, without
// lines).
func (d *PiecesDecoder) Plan(source string) (*Plan, error) {
	if d.err != nil {
		return nil, d.err
	}
	if !d.started {
		return nil, &InvalidError{Source: source, Problems: []Problem{{Message: "the document is empty"}}}
	}
	p, problems := d.plan()
	if len(problems) > 0 {
		return nil, &InvalidError{Source: source, Problems: problems}
	}
	return p, nil
}

func (d *PiecesDecoder) plan() (*Plan, []Problem) {
	p := d.p
	return &p, Validate(&p)
}

// decodeOne decodes exactly one strict YAML document (unknown fields are
// errors).
func decodeOne(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	return nil
}

// cutHeader cuts a document in Encode's layout after its top-level
// "stages:" line.
func cutHeader(data []byte) (header, rest []byte, ok bool) {
	const key = "\n" + stagesKey
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return nil, nil, false
	}
	return data[:i+len(key)], data[i+len(key):], true
}

// cutItems cuts stages in Encode's layout into one piece per stage (from
// its "  - " line to the next). Only a line that starts with exactly "  - "
// starts a stage: in Encode's output (and in any valid YAML with this
// layout) nothing inside a stage is indented less than four spaces. An
// empty piece has no stages.
func cutItems(data []byte) ([][]byte, bool) {
	if len(data) == 0 {
		return nil, true
	}
	if !bytes.HasPrefix(data, []byte("  - ")) {
		return nil, false
	}
	var items [][]byte
	for len(data) > 0 {
		end := bytes.Index(data, []byte("\n  - "))
		if end < 0 {
			items = append(items, data)
			break
		}
		items = append(items, data[:end+1])
		data = data[end+1:]
	}
	return items, true
}
