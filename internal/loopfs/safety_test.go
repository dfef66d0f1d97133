package loopfs_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
)

// TestExtractStripsSpecialBitsLinksOnceAndKeepsToBudget is the kernel
// path's copier (it copies out of any directory: a mounted backup's) held
// to filerestore's rules: special bits stripped unless kept, a file with
// several names written once and linked, ErrBudget past the budget.
func TestExtractStripsSpecialBitsLinksOnceAndKeepsToBudget(t *testing.T) {
	src := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(src, "bin"), 0o755))
	must(t, os.MkdirAll(filepath.Join(src, "shared"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "bin/suid"), []byte("#!/bin/sh\nid\n"), 0o755))
	must(t, os.Chmod(filepath.Join(src, "bin/suid"), 0o755|os.ModeSetuid))
	must(t, os.Chmod(filepath.Join(src, "shared"), 0o777|os.ModeSticky))
	must(t, os.WriteFile(filepath.Join(src, "shared/data"), []byte(strings.Repeat("d", 2<<20)), 0o644))
	must(t, os.Link(filepath.Join(src, "shared/data"), filepath.Join(src, "bin/data.2")))
	ctx := context.Background()

	dest := filepath.Join(t.TempDir(), "out")
	st, err := loopfs.Extract(ctx, src, "/", dest, filerestore.ExtractOptions{})
	must(t, err)
	for rel, want := range map[string]fs.FileMode{"bin/suid": 0o755, "shared": fs.ModeDir | 0o777} {
		if fi, err := os.Lstat(filepath.Join(dest, rel)); err != nil || fi.Mode() != want {
			t.Errorf("%s restored as %v (%v), want %v", rel, fi.Mode(), err, want)
		}
	}
	if st.SpecialBitsStripped != 2 || len(st.Warnings) != 1 {
		t.Errorf("stats %+v: want 2 stripped and a warning", st)
	}
	a, _ := os.Stat(filepath.Join(dest, "shared/data"))
	b, _ := os.Stat(filepath.Join(dest, "bin/data.2"))
	if a == nil || b == nil || a.Sys().(*syscall.Stat_t).Ino != b.Sys().(*syscall.Stat_t).Ino || st.Hardlinks != 1 {
		t.Errorf("the file with two names: %v %v, %d links; want one file linked once", a, b, st.Hardlinks)
	}

	kept := filepath.Join(t.TempDir(), "kept")
	_, err = loopfs.Extract(ctx, src, "/bin/suid", kept, filerestore.ExtractOptions{KeepSpecialBits: true})
	must(t, err)
	if fi, err := os.Lstat(filepath.Join(kept, "suid")); err != nil || fi.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("with KeepSpecialBits: %v %v", fi.Mode(), err)
	}
	_, err = loopfs.Extract(ctx, src, "/", filepath.Join(t.TempDir(), "b"), filerestore.ExtractOptions{MaxBytes: 1 << 20})
	if !errors.Is(err, filerestore.ErrBudget) {
		t.Errorf("past the byte budget: %v, want ErrBudget", err)
	}
	_, err = loopfs.Extract(ctx, src, "/", filepath.Join(t.TempDir(), "e"), filerestore.ExtractOptions{MaxEntries: 2})
	if !errors.Is(err, filerestore.ErrBudget) {
		t.Errorf("past the entry budget: %v, want ErrBudget", err)
	}
}
