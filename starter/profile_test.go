package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestStartProfiles: each RAKSHA_*PROFILE / RAKSHA_TRACE variable makes its
// file, written when the returned function runs (and only once).
func TestStartProfiles(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"RAKSHA_CPUPROFILE":   filepath.Join(dir, "cpu"),
		"RAKSHA_TRACE":        filepath.Join(dir, "trace"),
		"RAKSHA_BLOCKPROFILE": filepath.Join(dir, "block"),
		"RAKSHA_MEMPROFILE":   filepath.Join(dir, "mem"),
	}
	stop := startProfiles(func(k string) string { return files[k] })
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	stop()
	stop()
	for k, p := range files {
		st, err := os.Stat(p)
		if err != nil || st.Size() == 0 {
			t.Errorf("%s: %s not written (%v)", k, p, err)
		}
	}
	// Nothing asked for: nothing started, stop is a no-op.
	startProfiles(func(string) string { return "" })()
}
