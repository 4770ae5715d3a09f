package cli

import (
	"io"
	"log/slog"
)

// Log formats.
const (
	LogText = "text"
	LogJSON = "json"
)

// NewLogger returns a structured logger on w (stderr: data goes to stdout).
// Verbosity 0 logs info and above, 1 or more adds debug.
func NewLogger(w io.Writer, format string, verbosity int) (*slog.Logger, error) {
	level := slog.LevelInfo
	if verbosity > 0 {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case LogText, "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case LogJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, Usagef("--log-format %q is not supported: use text or json", format)
}
