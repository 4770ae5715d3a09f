// Package window parses and evaluates the days and hours, in a time zone,
// when a scheduled run may start a new stage ("Mon-Fri 09:00-16:00
// Europe/Berlin"). It is pure: the caller passes the time.
package window

import (
	"fmt"
	"strings"
	"time"
	// The image may have no zoneinfo (distroless, scratch): embed it.
	_ "time/tzdata"
)

// Window is a set of weekdays and a daily time range in a location. An end
// at or before the start means the range crosses midnight and belongs to the
// day it starts on ("Fri 22:00-02:00" is Friday night).
type Window struct {
	Days       [7]bool // indexed by time.Weekday
	Start, End time.Duration
	Loc        *time.Location
	text       string
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// Parse reads "DAYS HH:MM-HH:MM [ZONE]": DAYS is a comma-separated list of
// days or day ranges (Mon-Fri, Sat,Sun, Mon-Wed,Fri) or "*" for every day;
// ZONE is an IANA name (default UTC).
func Parse(s string) (*Window, error) {
	fields := strings.Fields(s)
	if len(fields) < 2 || len(fields) > 3 {
		return nil, fmt.Errorf("window %q: want \"DAYS HH:MM-HH:MM [ZONE]\", e.g. \"Mon-Fri 09:00-16:00 Europe/Berlin\"", s)
	}
	w := &Window{Loc: time.UTC, text: strings.Join(fields, " ")}
	if err := w.parseDays(fields[0]); err != nil {
		return nil, fmt.Errorf("window %q: %w", s, err)
	}
	from, to, ok := strings.Cut(fields[1], "-")
	if !ok {
		return nil, fmt.Errorf("window %q: hours %q: want HH:MM-HH:MM", s, fields[1])
	}
	var err error
	if w.Start, err = clock(from); err != nil {
		return nil, fmt.Errorf("window %q: %w", s, err)
	}
	if w.End, err = clock(to); err != nil {
		return nil, fmt.Errorf("window %q: %w", s, err)
	}
	if w.Start == w.End {
		return nil, fmt.Errorf("window %q: start and end are the same time; use 00:00-24:00 for the whole day", s)
	}
	if len(fields) == 3 {
		if w.Loc, err = time.LoadLocation(fields[2]); err != nil {
			return nil, fmt.Errorf("window %q: time zone: %w", s, err)
		}
	}
	return w, nil
}

func (w *Window) parseDays(s string) error {
	if s == "*" {
		for i := range w.Days {
			w.Days[i] = true
		}
		return nil
	}
	for _, part := range strings.Split(s, ",") {
		a, b, isRange := strings.Cut(part, "-")
		first, ok := dayNames[strings.ToLower(a)]
		if !ok {
			return fmt.Errorf("unknown day %q (use Mon Tue Wed Thu Fri Sat Sun)", a)
		}
		last := first
		if isRange {
			if last, ok = dayNames[strings.ToLower(b)]; !ok {
				return fmt.Errorf("unknown day %q (use Mon Tue Wed Thu Fri Sat Sun)", b)
			}
		}
		// Ranges wrap around the week: Fri-Mon is Fri, Sat, Sun, Mon.
		for d := first; ; d = (d + 1) % 7 {
			w.Days[d] = true
			if d == last {
				break
			}
		}
	}
	return nil
}

func clock(s string) (time.Duration, error) {
	var h, m int
	if n, err := fmt.Sscanf(s, "%d:%d", &h, &m); err != nil || n != 2 || len(s) != 5 {
		return 0, fmt.Errorf("time %q: want HH:MM", s)
	}
	if h < 0 || m < 0 || m > 59 || h > 24 || (h == 24 && m != 0) {
		return 0, fmt.Errorf("time %q is not a time of day", s)
	}
	return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute, nil
}

// String returns the window as parsed.
func (w *Window) String() string { return w.text }

// Contains reports whether t falls inside the window, and when that
// occurrence of the window ends.
func (w *Window) Contains(t time.Time) (bool, time.Time) {
	t = t.In(w.Loc)
	// The occurrence that started today, and one that started yesterday and
	// crosses midnight.
	for back := 0; back <= 1; back++ {
		day := t.AddDate(0, 0, -back)
		midnight := time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, w.Loc)
		if !w.Days[midnight.Weekday()] {
			continue
		}
		start := at(midnight, w.Start)
		end := at(midnight, w.End)
		if w.End <= w.Start {
			end = at(midnight.AddDate(0, 0, 1), w.End)
		}
		if !t.Before(start) && t.Before(end) {
			return true, end
		}
	}
	return false, time.Time{}
}

// at is midnight plus a wall-clock offset, computed on the calendar so a
// daylight saving change does not shift it by an hour.
func at(midnight time.Time, d time.Duration) time.Time {
	h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
	return time.Date(midnight.Year(), midnight.Month(), midnight.Day(), h, m, 0, 0, midnight.Location())
}

// Next returns the next start of the window at or after t (within 8 days).
func (w *Window) Next(t time.Time) time.Time {
	t = t.In(w.Loc)
	for i := 0; i <= 8; i++ {
		day := t.AddDate(0, 0, i)
		midnight := time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, w.Loc)
		if !w.Days[midnight.Weekday()] {
			continue
		}
		if s := at(midnight, w.Start); !s.Before(t) {
			return s
		}
	}
	return time.Time{}
}
