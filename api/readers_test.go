package api

import (
	"slices"
	"testing"
	"time"
)

// The runs a server started are remembered per backup, oldest first, for
// readerGrace and no longer.
func TestStartedReadersExpire(t *testing.T) {
	var s startedReaders
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	if got := s.recent("r/b1", t0); len(got) != 0 {
		t.Fatalf("empty: %v", got)
	}
	s.add("r/b1", "restore/b1/x", t0)
	s.add("r/b1", "clone/c1", t0.Add(time.Minute))
	s.add("r/b2", "restore/b2/y", t0)
	if got, want := s.recent("r/b1", t0.Add(2*time.Minute)), []string{"restore/b1/x", "clone/c1"}; !slices.Equal(got, want) {
		t.Errorf("b1 after 2 min: %v, want %v", got, want)
	}
	if got, want := s.recent("r/b1", t0.Add(readerGrace)), []string{"clone/c1"}; !slices.Equal(got, want) {
		t.Errorf("b1 at the grace: %v, want %v", got, want)
	}
	if got := s.recent("r/b2", t0.Add(readerGrace)); len(got) != 0 {
		t.Errorf("b2 at the grace: %v", got)
	}
	if _, ok := s.runs["r/b2"]; ok {
		t.Error("b2's expired entry is still kept")
	}
	// an add prunes the key's expired runs
	s.add("r/b1", "restore/b1/z", t0.Add(readerGrace+time.Minute))
	if got := len(s.runs["r/b1"]); got != 1 {
		t.Errorf("b1 holds %d runs after an add past the grace, want 1", got)
	}
}
