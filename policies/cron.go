package policies

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// cronField describes one field of a cron expression.
type cronField struct {
	name     string
	lo, hi   int
	names    []string // names for lo, lo+1, ... (months, days of week)
	namesMin int      // the value of names[0]
}

var cronFields = []cronField{
	{name: "minute", lo: 0, hi: 59},
	{name: "hour", lo: 0, hi: 23},
	{name: "day of month", lo: 1, hi: 31},
	{name: "month", lo: 1, hi: 12, names: []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}, namesMin: 1},
	{name: "day of week", lo: 0, hi: 7, names: []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}, namesMin: 0},
}

var cronMacros = map[string]bool{"@yearly": true, "@annually": true, "@monthly": true, "@weekly": true, "@daily": true, "@midnight": true, "@hourly": true}

// ValidateCron checks a five-field cron expression (minute hour
// day-of-month month day-of-week; each field *, a value, a range a-b, a
// step */n or a-b/n, or a comma-separated list of those; months and days
// may be given by their three-letter English names) or one of @hourly,
// @daily, @midnight, @weekly, @monthly, @yearly, @annually. It accepts a
// subset of what Temporal accepts, with errors that say which field is
// wrong. Time zones belong in the policy's time_zone, intervals in every.
func ValidateCron(expr string) error {
	expr = strings.TrimSpace(expr)
	if strings.HasPrefix(expr, "@") {
		if strings.HasPrefix(expr, "@every") {
			return errors.New("@every is not supported here: use the schedule's every field")
		}
		if !cronMacros[expr] {
			return errors.New("unknown macro: want @hourly, @daily, @weekly, @monthly or @yearly")
		}
		return nil
	}
	if strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ=") {
		return errors.New("a time zone inside the expression is not supported: use the schedule's time_zone field")
	}
	parts := strings.Fields(expr)
	if len(parts) != len(cronFields) {
		return fmt.Errorf("has %d fields, want 5: minute hour day-of-month month day-of-week", len(parts))
	}
	for i, p := range parts {
		if err := cronFields[i].check(p); err != nil {
			return fmt.Errorf("%s field %q: %w", cronFields[i].name, p, err)
		}
	}
	return nil
}

func (f cronField) check(s string) error {
	for _, item := range strings.Split(s, ",") {
		if item == "" {
			return errors.New("empty list item")
		}
		rng, step, hasStep := strings.Cut(item, "/")
		if hasStep {
			n, err := strconv.Atoi(step)
			if err != nil || n < 1 {
				return fmt.Errorf("step %q: want a whole number of 1 or more", step)
			}
			if n > f.hi {
				return fmt.Errorf("step %d is larger than %d", n, f.hi)
			}
		}
		if rng == "*" {
			continue
		}
		a, b, isRange := strings.Cut(rng, "-")
		lo, err := f.value(a)
		if err != nil {
			return err
		}
		if !isRange {
			continue
		}
		hi, err := f.value(b)
		if err != nil {
			return err
		}
		if hi < lo {
			return fmt.Errorf("range %s ends before it starts", rng)
		}
	}
	return nil
}

func (f cronField) value(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < f.lo || n > f.hi {
			return 0, fmt.Errorf("%d is out of range %d-%d", n, f.lo, f.hi)
		}
		return n, nil
	}
	for i, name := range f.names {
		if strings.EqualFold(s, name) {
			return f.namesMin + i, nil
		}
	}
	if f.names != nil {
		return 0, fmt.Errorf("%q: want a number %d-%d or a name such as %s", s, f.lo, f.hi, strings.ToUpper(f.names[0]))
	}
	return 0, fmt.Errorf("%q: want a number %d-%d", s, f.lo, f.hi)
}
