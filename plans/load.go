package plans

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a plan document, located by line and field.
type Problem struct {
	Line    int    // 1-based; 0 when unknown
	Field   string // e.g. "stages[2].namespace"; empty for document-level problems
	Message string
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// InvalidError reports every problem found in a plan document. Callers map
// it to "invalid input" (exit code 2): nothing was touched.
type InvalidError struct {
	Source   string // file name or other description of where the plan came from
	Problems []Problem
}

func (e *InvalidError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plan %s is invalid", e.Source)
	if len(e.Problems) == 1 {
		b.WriteString(": ")
		b.WriteString(e.Problems[0].String())
	} else {
		fmt.Fprintf(&b, " (%d problems):", len(e.Problems))
		for _, p := range e.Problems {
			b.WriteString("\n  ")
			b.WriteString(p.String())
		}
	}
	b.WriteString("\nfix the plan file, or generate a new one with `mtls-migrate plan`")
	return b.String()
}

// LoadFile reads and validates a plan from a file.
func LoadFile(path string) (*Plan, error) {
	data, err := os.ReadFile(path) // #nosec G304 -- the user names the plan to load.
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	return Load(path, data)
}

// Read reads and validates a plan from r; source names it in errors.
func Read(source string, r io.Reader) (*Plan, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read plan %s: %w", source, err)
	}
	return Load(source, data)
}

// Load decodes data strictly (unknown fields are errors) and validates it.
// Every error it returns for a bad document is an *InvalidError whose
// problems carry line numbers. A plan in the layout Encode writes is decoded
// stage by stage (see loadStaged); anything else, and every plan with a
// problem, as one document.
func Load(source string, data []byte) (*Plan, error) {
	if p, ok := loadStaged(data); ok {
		return p, nil
	}
	return loadWhole(source, data)
}

// loadWhole decodes and validates data as one YAML document.
func loadWhole(source string, data []byte) (*Plan, error) {
	invalid := func(ps ...Problem) error { return &InvalidError{Source: source, Problems: ps} }

	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, invalid(yamlProblems(err)...)
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, invalid(Problem{Message: "the document is empty"})
	}
	if root.Content[0].Kind != yaml.MappingNode {
		return nil, invalid(Problem{Line: root.Content[0].Line, Message: "a plan must be a YAML mapping with apiVersion, kind, metadata and stages"})
	}

	lines := fieldLines(root.Content[0])
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var p Plan
	if err := dec.Decode(&p); err != nil {
		return nil, invalid(nameFields(yamlProblems(err), lines)...)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := extra.Line
		return nil, invalid(Problem{Line: line, Message: "the file holds more than one YAML document; a plan is one document"})
	}

	if problems := Validate(&p); len(problems) > 0 {
		for i := range problems {
			problems[i].Line = lineFor(lines, problems[i].Field)
		}
		return nil, invalid(problems...)
	}
	return &p, nil
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlProblems turns yaml.v3's errors (one per line in a TypeError) into
// problems with line numbers.
func yamlProblems(err error) []Problem {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	out := make([]Problem, 0, len(msgs))
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		if g := yamlLine.FindStringSubmatch(m); g != nil {
			n, _ := strconv.Atoi(g[1])
			out = append(out, Problem{Line: n, Message: friendlyYAML(g[2])})
			continue
		}
		out = append(out, Problem{Message: friendlyYAML(m)})
	}
	return out
}

// nameFields adds the field path to problems yaml.v3 reported by line only
// (type errors such as a word where a number belongs).
func nameFields(ps []Problem, lines map[string]int) []Problem {
	byLine := map[int]string{}
	for path, l := range lines {
		// Prefer the deepest path on a line: "a.b" over "a".
		if cur, ok := byLine[l]; !ok || len(path) > len(cur) || (len(path) == len(cur) && path < cur) {
			byLine[l] = path
		}
	}
	for i := range ps {
		if ps[i].Field == "" && ps[i].Line > 0 && !strings.HasPrefix(ps[i].Message, "unknown field") {
			ps[i].Field = byLine[ps[i].Line]
		}
	}
	return ps
}

var notFound = regexp.MustCompile(`^field (\S+) not found in type plans\.(\w+)$`)

func friendlyYAML(m string) string {
	if g := notFound.FindStringSubmatch(m); g != nil {
		return fmt.Sprintf("unknown field %q in %s (misspelled?)", g[1], strings.ToLower(g[2]))
	}
	return m
}

// fieldLines maps field paths ("stages[1].probes[0].url") to the line of
// their value in the document.
func fieldLines(n *yaml.Node) map[string]int {
	lines := map[string]int{}
	var walk func(path string, n *yaml.Node)
	walk = func(path string, n *yaml.Node) {
		// Aliases are not followed: they may be recursive, and the line
		// of the alias itself is where a reader would look.
		lines[path] = n.Line
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				p := k
				if path != "" {
					p = path + "." + k
				}
				walk(p, n.Content[i+1])
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(fmt.Sprintf("%s[%d]", path, i), c)
			}
		}
	}
	walk("", n)
	return lines
}

// lineFor finds the line of a field, or of its nearest ancestor present in
// the document (a missing field is reported where its parent is).
func lineFor(lines map[string]int, field string) int {
	for p := field; ; {
		if l, ok := lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			return lines[""]
		}
		p = p[:i]
	}
}
