package scale

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// OpenMetricsOptions say which samples WriteOpenMetrics writes.
type OpenMetricsOptions struct {
	// Samples are at the multiples of Resolution in [From, To].
	From, To   time.Time
	Resolution time.Duration
	// Metrics restricts the metrics written (nil: all of them).
	Metrics []string
	// Lean keeps only the labels the product selects or groups by and
	// those that make a series unique (leanLabels): promtool's cost is in
	// the bytes it parses.
	Lean bool
}

// WriteOpenMetrics writes the world's series as OpenMetrics text with
// timestamps, the input of `promtool tsdb create-blocks-from openmetrics`:
// one family after the other, each series' samples in time order.
func (w *World) WriteOpenMetrics(out io.Writer, o OpenMetricsOptions) (samples int64, err error) {
	if o.Resolution < time.Second {
		return 0, fmt.Errorf("resolution %s: want at least a second", o.Resolution)
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	res := int64(o.Resolution / time.Second)
	first := (o.From.Unix() + res - 1) / res * res
	last := o.To.Unix()
	metrics := o.Metrics
	if metrics == nil {
		metrics = metricNames
	}
	buf := make([]byte, 0, 1024)
	for _, name := range metrics {
		idx := w.byMetric[name]
		if len(idx) == 0 {
			continue
		}
		family, typ := strings.TrimSuffix(name, "_total"), "counter"
		if name == MetricBuild {
			typ = "gauge"
		}
		fmt.Fprintf(bw, "# TYPE %s %s\n", family, typ)
		for _, k := range idx {
			s := &w.series[k]
			prefix := append(buf[:0], name...)
			prefix = append(prefix, '{')
			for n, l := range w.labels(s, o.Lean) {
				if n > 0 {
					prefix = append(prefix, ',')
				}
				prefix = append(prefix, l.name...)
				prefix = append(prefix, '=', '"')
				prefix = appendOMEscaped(prefix, l.value)
				prefix = append(prefix, '"')
			}
			prefix = append(prefix, '}', ' ')
			buf = prefix
			line := make([]byte, 0, len(prefix)+48)
			for ts := first; ts <= last; ts += res {
				line = append(line[:0], prefix...)
				line = formatFloat(line, w.value(s, time.Unix(ts, 0)))
				line = append(line, ' ')
				line = strconv.AppendInt(line, ts, 10)
				line = append(line, '\n')
				if _, err := bw.Write(line); err != nil {
					return samples, err
				}
				samples++
			}
		}
	}
	if _, err := bw.WriteString("# EOF\n"); err != nil {
		return samples, err
	}
	return samples, bw.Flush()
}

func appendOMEscaped(b []byte, s string) []byte {
	for k := 0; k < len(s); k++ {
		switch c := s[k]; c {
		case '\\':
			b = append(b, '\\', '\\')
		case '"':
			b = append(b, '\\', '"')
		case '\n':
			b = append(b, '\\', 'n')
		default:
			b = append(b, c)
		}
	}
	return b
}

// BackfillOptions say what Backfill writes and where.
type BackfillOptions struct {
	OpenMetricsOptions
	// TSDB is the Prometheus data directory the blocks go to.
	TSDB string
	// BlockDuration is promtool's --max-block-duration (default 18h, the
	// largest block a Prometheus with 15 days' retention compacts to).
	BlockDuration time.Duration
	// Promtool is the promtool binary (default: promtool on PATH).
	Promtool string
	Logf     func(format string, args ...any)
}

// BackfillStats is what a backfill took.
type BackfillStats struct {
	Series, Files          int
	Samples, Bytes         int64
	Generate, Promtool     time.Duration
	TSDBBytes              int64
	PromtoolCPU            time.Duration
	PromtoolMaxRSS         int64
	From, To               time.Time
	Resolution, BlockRange time.Duration
}

func (s BackfillStats) String() string {
	return fmt.Sprintf("%d series, %d samples (%s to %s every %s) in %d files of %.1f GB OpenMetrics: generated in %s, promtool %s (CPU %s, max RSS %d MB), TSDB %.0f MB",
		s.Series, s.Samples, s.From.UTC().Format(time.RFC3339), s.To.UTC().Format(time.RFC3339), s.Resolution, s.Files, float64(s.Bytes)/1e9,
		s.Generate.Round(100*time.Millisecond), s.Promtool.Round(100*time.Millisecond), s.PromtoolCPU.Round(100*time.Millisecond), s.PromtoolMaxRSS>>20, float64(s.TSDBBytes)/(1<<20))
}

// Backfill writes the world's samples into a Prometheus TSDB with promtool,
// one OpenMetrics file per block range (promtool parses its input once per
// block it makes, so a file per block keeps that to one pass), each file
// removed once its block is written.
func Backfill(ctx context.Context, w *World, o BackfillOptions) (BackfillStats, error) {
	if o.BlockDuration <= 0 {
		o.BlockDuration = 18 * time.Hour
	}
	if o.Promtool == "" {
		o.Promtool = "promtool"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	st := BackfillStats{From: o.From, To: o.To, Resolution: o.Resolution, BlockRange: o.BlockDuration}
	bin, err := exec.LookPath(o.Promtool)
	if err != nil {
		return st, fmt.Errorf("promtool not found (it comes with Debian's prometheus package: scripts/install-prometheus.sh): %w", err)
	}
	if err := os.MkdirAll(o.TSDB, 0o755); err != nil {
		return st, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(o.TSDB)), "openmetrics-")
	if err != nil {
		return st, err
	}
	defer os.RemoveAll(tmp)
	for _, name := range o.Metrics {
		st.Series += len(w.byMetric[name])
	}
	if o.Metrics == nil {
		st.Series = len(w.series)
	}
	block := o.BlockDuration.Milliseconds()
	for start := block * (o.From.UnixMilli() / block); start <= o.To.UnixMilli(); start += block {
		part := o.OpenMetricsOptions
		if from := time.UnixMilli(start); from.After(part.From) {
			part.From = from
		}
		// The block covers [start, start+block): its last sample is before.
		if to := time.UnixMilli(start + block - 1); to.Before(part.To) {
			part.To = to
		}
		path := filepath.Join(tmp, fmt.Sprintf("part-%d.om", start/1000))
		began := time.Now()
		f, err := os.Create(path)
		if err != nil {
			return st, err
		}
		n, werr := w.WriteOpenMetrics(f, part)
		cerr := f.Close()
		if werr != nil || cerr != nil {
			return st, fmt.Errorf("write %s: %w", path, errors.Join(werr, cerr))
		}
		fi, _ := os.Stat(path)
		st.Generate += time.Since(began)
		st.Samples += n
		st.Bytes += fi.Size()
		st.Files++
		began = time.Now()
		cmd := exec.CommandContext(ctx, bin, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration="+promDurationString(o.BlockDuration), path, o.TSDB)
		var outb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &outb, &outb
		err = cmd.Start()
		if err == nil {
			rss := watchRSS(cmd)
			err = cmd.Wait()
			st.PromtoolMaxRSS = max(st.PromtoolMaxRSS, rss.stop())
		}
		out := outb.Bytes()
		st.Promtool += time.Since(began)
		if cmd.ProcessState != nil {
			st.PromtoolCPU += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		if err != nil {
			return st, fmt.Errorf("promtool tsdb create-blocks-from openmetrics %s: %w\n%s", path, err, tailLines(string(out), 20))
		}
		if err := os.Remove(path); err != nil {
			return st, err
		}
		o.Logf("  backfilled %s .. %s: %d samples, %.0f MB of OpenMetrics, promtool %s", part.From.UTC().Format(time.RFC3339), part.To.UTC().Format(time.RFC3339),
			n, float64(fi.Size())/(1<<20), time.Since(began).Round(100*time.Millisecond))
	}
	_ = filepath.Walk(o.TSDB, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			st.TSDBBytes += fi.Size()
		}
		return nil
	})
	return st, nil
}

func promDurationString(d time.Duration) string {
	if d%time.Hour == 0 {
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	}
	return d.String()
}
