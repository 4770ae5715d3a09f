package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
	"gopkg.in/yaml.v3"
)

// Output formats for commands that print data.
const (
	OutputTable = "table"
	OutputYAML  = "yaml"
	OutputJSON  = "json"
)

// ValidateOutput rejects an unknown -o value.
func ValidateOutput(format string) error {
	switch format {
	case OutputTable, OutputYAML, OutputJSON:
		return nil
	}
	return Usagef("-o %q is not supported: use table, yaml or json", format)
}

// PrintData writes v as YAML or JSON, or calls table for the human view.
func PrintData(w io.Writer, format string, v any, table func(io.Writer) error) error {
	switch format {
	case OutputJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		// PromQL and comparisons ("<=") are data here, not HTML.
		enc.SetEscapeHTML(false)
		return enc.Encode(v)
	case OutputYAML:
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			return err
		}
		return enc.Close()
	case OutputTable, "":
		return table(w)
	}
	return fmt.Errorf("unknown output format %q", format)
}

// IsTerminal reports whether w is an interactive terminal; commands show
// progress and colour only then.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) // #nosec G115 -- file descriptors fit in int.
}
