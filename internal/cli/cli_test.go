package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestCodeFollowsWrappedErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, ExitOK},
		{"plain", errors.New("x"), ExitError},
		{"usage", Usagef("bad flag"), ExitUsage},
		{"wrapped rolled back", fmt.Errorf("stage 3: %w", WithCode(ExitRolledBack, errors.New("gate failed"))), ExitRolledBack},
		{"rollback failed", WithCode(ExitRollbackFailed, errors.New("conflict")), ExitRollbackFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Code(tc.err); got != tc.want {
				t.Fatalf("Code = %d, want %d", got, tc.want)
			}
		})
	}
	if WithCode(3, nil) != nil {
		t.Fatal("WithCode(nil) must stay nil")
	}
}

func TestPrintDataFormats(t *testing.T) {
	v := map[string]string{"query": `rate(x{code=~"5.."}[1m]) <= 0.01`}
	var b bytes.Buffer
	if err := PrintData(&b, OutputJSON, v, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "<= 0.01") {
		t.Fatalf("JSON escaped the query: %s", b.String())
	}
	b.Reset()
	if err := PrintData(&b, OutputYAML, v, nil); err != nil || !strings.Contains(b.String(), "query:") {
		t.Fatalf("yaml: %q %v", b.String(), err)
	}
	b.Reset()
	called := false
	table := func(w io.Writer) error {
		called = true
		_, err := io.WriteString(w, "TABLE\n")
		return err
	}
	if err := PrintData(&b, OutputTable, v, table); err != nil {
		t.Fatal(err)
	}
	if !called || b.String() != "TABLE\n" {
		t.Fatalf("table view not used: called=%v out=%q", called, b.String())
	}
	if err := ValidateOutput("xml"); Code(err) != ExitUsage {
		t.Fatalf("ValidateOutput(xml) = %v", err)
	}
}
