package executor

import (
	"log/slog"

	"github.com/mtls-migrate/mtls-migrate/internal/health"
)

// Progress shows a run to people or machines.
type Progress interface {
	// Step reports a step starting or a notable thing within it.
	Step(step, message string, attrs ...any)
	// Tick reports a round of gate evaluations during the soak.
	Tick(t health.Tick)
}

// LogProgress writes progress as structured logs (non-TTY runs).
type LogProgress struct{ Log *slog.Logger }

// Step logs at info.
func (p LogProgress) Step(step, message string, attrs ...any) {
	p.Log.Info(message, append([]any{"step", step}, attrs...)...)
}

// Tick logs each gate's result.
func (p LogProgress) Tick(t health.Tick) {
	for _, r := range t.Results {
		p.Log.Info("gate", "step", "soak", "gate", r.Gate, "verdict", string(r.Verdict), "value", r.Value,
			"threshold", r.Threshold, "samples", r.Samples, "message", r.Message, "remaining", t.Remaining.String())
	}
}
