package plans

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"gopkg.in/yaml.v3"
)

// Encode writes the plan as YAML with a fixed field order (the order of the
// struct fields), two-space indentation and UTC times, so the same plan is
// always the same bytes and diffs cleanly in git. It writes stage by stage
// (yaml.v3 would build the whole document in memory, twice the plan's
// size): a few batches of stages are held as YAML at a time, encoded in
// parallel, since yaml.v3's writer is what a big plan waits for.
func Encode(w io.Writer, p *Plan) error {
	return EncodePieces(p, func(_ int, b []byte) error {
		_, err := w.Write(b)
		return err
	})
}

// EncodePieces encodes the plan as Encode does and hands emit the pieces
// of the document in order: the header (everything before the first stage,
// "stages:" included) as stage 0, then each stage, with its number. The
// pieces concatenated are Encode's bytes; emit must not keep b.
func EncodePieces(p *Plan, emit func(stage int, b []byte) error) error {
	var hb bytes.Buffer
	if err := newStageEncoder().header(&hb, p); err != nil {
		return err
	}
	if err := emit(0, hb.Bytes()); err != nil {
		return err
	}
	workers := min(runtime.GOMAXPROCS(0), maxEncoders)
	if workers < 2 || len(p.Stages) < 2*encodeBatch {
		e := newStageEncoder()
		var b bytes.Buffer
		for i := range p.Stages {
			b.Reset()
			if err := e.stage(&b, &p.Stages[i]); err != nil {
				return err
			}
			if err := emit(p.Stages[i].Number, b.Bytes()); err != nil {
				return err
			}
		}
		return nil
	}
	encs := make([]*stageEncoder, workers)
	outs := make([]bytes.Buffer, workers)
	ends := make([][]int, workers) // where each stage of a batch ends in outs
	errs := make([]error, workers)
	for i := range encs {
		encs[i] = newStageEncoder()
	}
	for start := 0; start < len(p.Stages); start += workers * encodeBatch {
		var wg sync.WaitGroup
		for k := range workers {
			from := start + k*encodeBatch
			to := min(from+encodeBatch, len(p.Stages))
			outs[k].Reset()
			ends[k] = ends[k][:0]
			if from >= to {
				continue
			}
			wg.Go(func() {
				for i := from; i < to && errs[k] == nil; i++ {
					errs[k] = encs[k].stage(&outs[k], &p.Stages[i])
					ends[k] = append(ends[k], outs[k].Len())
				}
			})
		}
		wg.Wait()
		for k := range workers {
			if errs[k] != nil {
				return errs[k]
			}
			b, prev := outs[k].Bytes(), 0
			for j, end := range ends[k] {
				if err := emit(p.Stages[start+k*encodeBatch+j].Number, b[prev:end]); err != nil {
					return err
				}
				prev = end
			}
		}
	}
	return nil
}

// encodeBatch stages are encoded by one goroutine at a time, by at most
// maxEncoders goroutines.
const (
	encodeBatch = 16
	maxEncoders = 8
)

// planHeader is Plan without its stages: the same fields, tags and order,
// so its YAML is the first lines of the plan's.
type planHeader struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Metadata   Metadata `yaml:"metadata"`
}

// oneStage puts a stage where it stands in a plan (an item of the
// top-level "stages" sequence), so yaml.v3 writes it with exactly the
// indentation and style it has in the whole document.
type oneStage struct {
	Stages []Stage `yaml:"stages"`
}

const stagesKey = "stages:\n"

// stageEncoder reuses one buffer across stages.
type stageEncoder struct{ buf bytes.Buffer }

func newStageEncoder() *stageEncoder { return &stageEncoder{} }

func (e *stageEncoder) encode(v any) ([]byte, error) {
	e.buf.Reset()
	enc := yaml.NewEncoder(&e.buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode plan: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode plan: %w", err)
	}
	return e.buf.Bytes(), nil
}

// header writes everything before the first stage, "stages:" included
// ("stages: []" for a plan without stages, as yaml.v3 writes it).
func (e *stageEncoder) header(w io.Writer, p *Plan) error {
	h := planHeader{APIVersion: p.APIVersion, Kind: p.Kind, Metadata: p.Metadata}
	h.Metadata.GeneratedAt = h.Metadata.GeneratedAt.UTC()
	b, err := e.encode(&h)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	if len(p.Stages) == 0 {
		_, err = io.WriteString(w, "stages: []\n")
		return err
	}
	_, err = io.WriteString(w, stagesKey)
	return err
}

// stage writes one item of the stages sequence.
func (e *stageEncoder) stage(w io.Writer, st *Stage) error {
	b, err := e.encode(&oneStage{Stages: []Stage{*st}})
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(b, []byte(stagesKey)) {
		return fmt.Errorf("encode plan: stage %d: unexpected YAML %.40q", st.Number, b)
	}
	_, err = w.Write(b[len(stagesKey):])
	return err
}

// Marshal renders the plan as YAML (see Encode) into memory.
func Marshal(p *Plan) ([]byte, error) {
	var buf bytes.Buffer
	if err := Encode(&buf, p); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write writes the plan's YAML to w (see Encode).
func Write(w io.Writer, p *Plan) error { return Encode(w, p) }

// SaveFile writes the plan atomically (see Save).
func SaveFile(path string, p *Plan) error {
	_, err := Save(path, p)
	return err
}

// Save writes the plan atomically: to a temporary file in the same
// directory, then renamed over path, so a crash never leaves half a plan.
// It streams (see Encode) through a buffer and returns the plan's digest
// (see Digest), computed from the bytes written.
func Save(path string, p *Plan) (string, error) {
	fail := func(err error) (string, error) { return "", fmt.Errorf("save plan to %s: %w", path, err) }
	tmp, err := os.CreateTemp(filepath.Dir(path), ".plan-*.yaml")
	if err != nil {
		return fail(err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, sum), 256<<10)
	if err := Encode(bw, p); err != nil {
		_ = tmp.Close()
		return "", err
	}
	if err := bw.Flush(); err != nil {
		_ = tmp.Close()
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil { // #nosec G302 -- a plan is meant to be read and reviewed.
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fail(err)
	}
	return "sha256:" + hex.EncodeToString(sum.Sum(nil)), nil
}
