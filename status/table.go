package status

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Unknown is what the table shows for a rate that could not be told.
const Unknown = "unknown"

// WriteTable writes the human view: one line per namespace, then the
// stages' reasons and last gate values, then the notes. Warnings are the
// caller's to log (stderr).
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NAMESPACE\tMODE\tOVERRIDES\tSTAGE\tPHASE\tAPPLIED\tBY\tPLAINTEXT/S (%s)\n", r.RateWindow)
	for _, n := range r.Namespaces {
		name := n.Name
		if n.Scope == ScopeMesh {
			name += " (mesh)"
		}
		stage, phase, at, by := "-", "-", "-", "-"
		if s := n.Stage; s != nil {
			stage, phase = strconv.Itoa(s.Number), s.Phase
			if s.AppliedAt != nil {
				at = s.AppliedAt.Format(time.RFC3339)
			}
			if s.AppliedBy != "" {
				by = s.AppliedBy
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, n.Mode, overridesText(n.Overrides), stage, phase, at, by, FormatRate(n.PlaintextRate))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range r.Namespaces {
		s := n.Stage
		if s == nil || (s.Reason == "" && s.ForceReason == "" && len(s.Gates) == 0) {
			continue
		}
		fmt.Fprintf(w, "\nstage %d (%s): %s", s.Number, n.Name, s.Phase)
		if s.FinishedAt != nil {
			fmt.Fprintf(w, " at %s", s.FinishedAt.Format(time.RFC3339))
		}
		if s.Reason != "" {
			fmt.Fprintf(w, ": %s", s.Reason)
		}
		fmt.Fprintln(w)
		if s.ForceReason != "" {
			fmt.Fprintf(w, "  forced: %s\n", s.ForceReason)
		}
		gw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, g := range s.Gates {
			line := fmt.Sprintf("  gate %s\t%s\tvalue %s\tthreshold %s", g.Name, g.Verdict, number(g.Value, "no data"), number(g.Threshold, "-"))
			if g.Message != "" {
				line += "\t" + g.Message
			}
			fmt.Fprintln(gw, line)
		}
		if err := gw.Flush(); err != nil {
			return err
		}
	}
	if r.Plan != nil || len(r.Notes) > 0 {
		fmt.Fprintln(w)
	}
	if r.Plan != nil {
		fmt.Fprintf(w, "plan %s (%s)\n", r.Plan.Name, r.Plan.Digest)
	}
	for _, note := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", note)
	}
	return nil
}

// FormatRate shows a rate with three significant digits, or "unknown".
func FormatRate(v *float64) string {
	if v == nil {
		return Unknown
	}
	return strconv.FormatFloat(*v, 'g', 3, 64)
}

func number(v *float64, none string) string {
	if v == nil {
		return none
	}
	return strconv.FormatFloat(*v, 'g', 4, 64)
}

// maxOverrides bounds the overrides shown in a table cell; -o yaml has all.
const maxOverrides = 3

func overridesText(os []Override) string {
	if len(os) == 0 {
		return "-"
	}
	var parts []string
	for i, o := range os {
		if i == maxOverrides {
			parts = append(parts, fmt.Sprintf("+%d more (-o yaml)", len(os)-maxOverrides))
			break
		}
		if o.Port == nil {
			parts = append(parts, fmt.Sprintf("%s=%s", o.Workload, o.Mode))
		} else {
			parts = append(parts, fmt.Sprintf("%s:%d=%s", o.Workload, *o.Port, o.Mode))
		}
	}
	return strings.Join(parts, ",")
}
