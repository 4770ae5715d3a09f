package window

import (
	"strings"
	"testing"
	"time"
)

func TestWindowContains(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no tzdata:", err)
	}
	cases := []struct {
		name, window string
		at           time.Time
		in           bool
	}{
		{"weekday inside", "Mon-Fri 09:00-16:00 Europe/Berlin", time.Date(2026, 3, 4, 10, 0, 0, 0, berlin), true},
		{"start is inside", "Mon-Fri 09:00-16:00 Europe/Berlin", time.Date(2026, 3, 4, 9, 0, 0, 0, berlin), true},
		{"end is outside", "Mon-Fri 09:00-16:00 Europe/Berlin", time.Date(2026, 3, 4, 16, 0, 0, 0, berlin), false},
		{"before start", "Mon-Fri 09:00-16:00 Europe/Berlin", time.Date(2026, 3, 4, 8, 59, 0, 0, berlin), false},
		{"saturday", "Mon-Fri 09:00-16:00 Europe/Berlin", time.Date(2026, 3, 7, 10, 0, 0, 0, berlin), false},
		{"UTC instant converted to Berlin", "Mon-Fri 09:00-16:00 Europe/Berlin", time.Date(2026, 3, 4, 8, 30, 0, 0, time.UTC), true},
		{"summer time converted", "Mon-Fri 09:00-16:00 Europe/Berlin", time.Date(2026, 7, 1, 7, 30, 0, 0, time.UTC), true},
		{"summer time before start", "Mon-Fri 09:00-16:00 Europe/Berlin", time.Date(2026, 7, 1, 6, 30, 0, 0, time.UTC), false},
		{"default zone is UTC", "Mon-Fri 09:00-16:00", time.Date(2026, 3, 4, 8, 30, 0, 0, time.UTC), false},
		{"list of days", "Mon,Wed 09:00-16:00", time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC), true},
		{"list excludes tuesday", "Mon,Wed 09:00-16:00", time.Date(2026, 3, 3, 12, 0, 0, 0, time.UTC), false},
		{"range wraps the week", "Fri-Mon 09:00-16:00", time.Date(2026, 3, 8, 12, 0, 0, 0, time.UTC), true},
		{"every day", "* 00:00-24:00", time.Date(2026, 3, 8, 23, 59, 0, 0, time.UTC), true},
		{"overnight on its start day", "Fri 22:00-02:00", time.Date(2026, 3, 6, 23, 0, 0, 0, time.UTC), true},
		{"overnight after midnight belongs to Friday", "Fri 22:00-02:00", time.Date(2026, 3, 7, 1, 0, 0, 0, time.UTC), true},
		{"overnight not on Saturday night", "Fri 22:00-02:00", time.Date(2026, 3, 7, 23, 0, 0, 0, time.UTC), false},
		{"case insensitive days", "mon-FRI 09:00-16:00", time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, err := Parse(c.window)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := w.Contains(c.at); got != c.in {
				t.Fatalf("Contains(%s) = %v, want %v", c.at, got, c.in)
			}
		})
	}
}

func TestWindowEndAndNext(t *testing.T) {
	w, err := Parse("Mon-Fri 09:00-16:00")
	if err != nil {
		t.Fatal(err)
	}
	_, end := w.Contains(time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC))
	if want := time.Date(2026, 3, 4, 16, 0, 0, 0, time.UTC); !end.Equal(want) {
		t.Fatalf("end %s, want %s", end, want)
	}
	// Friday evening: the next start is Monday morning.
	next := w.Next(time.Date(2026, 3, 6, 17, 0, 0, 0, time.UTC))
	if want := time.Date(2026, 3, 9, 9, 0, 0, 0, time.UTC); !next.Equal(want) {
		t.Fatalf("next %s, want %s", next, want)
	}
}

func TestWindowParseRejects(t *testing.T) {
	for _, s := range []string{
		"", "Mon-Fri", "Mon-Fri 9-16", "Mon-Fri 09:00-16:00 Mars/Olympus", "Mo-Fr 09:00-16:00",
		"Mon-Fri 09:00-25:00", "Mon-Fri 09:60-16:00", "Mon-Fri 09:00-09:00", "Mon-Fri 09:00-16:00 UTC extra",
	} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		} else if !strings.Contains(err.Error(), "window") {
			t.Errorf("Parse(%q): error does not name the window: %v", s, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"Mon-Fri 09:00-16:00 Europe/Berlin", "* 00:00-24:00", "Fri 22:00-02:00 UTC", "Sat,Sun 10:00-11:00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := Parse(s)
		if err != nil {
			return
		}
		now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
		if in, end := w.Contains(now); in && !end.After(now) {
			t.Fatalf("%q: inside but end %s not after %s", s, end, now)
		}
	})
}
