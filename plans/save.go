package plans

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"
)

// Marshal renders the plan as YAML with a fixed field order (the order of
// the struct fields), two-space indentation and UTC times, so the same plan
// is always the same bytes and diffs cleanly in git.
func Marshal(p *Plan) ([]byte, error) {
	c := *p
	c.Metadata.GeneratedAt = c.Metadata.GeneratedAt.UTC()
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&c); err != nil {
		return nil, fmt.Errorf("encode plan: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode plan: %w", err)
	}
	return buf.Bytes(), nil
}

// Write writes the plan's YAML to w.
func Write(w io.Writer, p *Plan) error {
	b, err := Marshal(p)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// SaveFile writes the plan atomically: to a temporary file in the same
// directory, then renamed over path, so a crash never leaves half a plan.
func SaveFile(path string, p *Plan) error {
	b, err := Marshal(p)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".plan-*.yaml")
	if err != nil {
		return fmt.Errorf("save plan to %s: %w", path, err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("save plan to %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save plan to %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil { // #nosec G302 -- a plan is meant to be read and reviewed.
		return fmt.Errorf("save plan to %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save plan to %s: %w", path, err)
	}
	return nil
}
