package filerestore

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestExtractStripsSpecialBitsLinksOnceAndKeepsToBudget: a tenant's disk
// holds a setuid-root program, a setgid file, a sticky directory and a file
// with three names. By default the restored files keep their permission
// bits but not the special ones (counted and warned about); with
// KeepSpecialBits they keep them; the file with three names is written
// once and hard-linked twice; an extraction past its entry or byte budget
// stops with ErrBudget.
func TestExtractStripsSpecialBitsLinksOnceAndKeepsToBudget(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(filepath.Join(staging, "bin"), 0o755))
	must(t, os.MkdirAll(filepath.Join(staging, "shared"), 0o755))
	must(t, os.WriteFile(filepath.Join(staging, "bin/suid"), []byte("#!/bin/sh\nid\n"), 0o755))
	must(t, os.Chmod(filepath.Join(staging, "bin/suid"), 0o755|os.ModeSetuid))
	must(t, os.WriteFile(filepath.Join(staging, "bin/sgid"), []byte("x"), 0o755))
	must(t, os.Chmod(filepath.Join(staging, "bin/sgid"), 0o755|os.ModeSetgid))
	must(t, os.Chmod(filepath.Join(staging, "shared"), 0o777|os.ModeSticky))
	must(t, os.WriteFile(filepath.Join(staging, "shared/data"), randomBytes(9, 3<<20), 0o644))
	must(t, os.Link(filepath.Join(staging, "shared/data"), filepath.Join(staging, "shared/data.2")))
	must(t, os.Link(filepath.Join(staging, "shared/data"), filepath.Join(staging, "bin/data.3")))
	img := mkfs(t, staging, "32M", false)
	f, size := openImage(t, img)
	ctx := context.Background()

	dest := filepath.Join(t.TempDir(), "out")
	st, err := Extract(ctx, f, size, "/", dest, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]fs.FileMode{"bin/suid": 0o755, "bin/sgid": 0o755, "shared": fs.ModeDir | 0o777} {
		fi, err := os.Lstat(filepath.Join(dest, rel))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s restored as %v (%v), want %v: special bits stripped", rel, fi.Mode(), err, want)
		}
	}
	if st.SpecialBitsStripped != 3 || !strings.Contains(strings.Join(st.Warnings, "\n"), "--keep-special-bits") {
		t.Errorf("stats: %d stripped, warnings %q; want 3 and a warning", st.SpecialBitsStripped, st.Warnings)
	}
	var inos []uint64
	for _, rel := range []string{"shared/data", "shared/data.2", "bin/data.3"} {
		fi, err := os.Stat(filepath.Join(dest, rel))
		if err != nil {
			t.Fatal(err)
		}
		inos = append(inos, fi.Sys().(*syscall.Stat_t).Ino)
	}
	if inos[0] != inos[1] || inos[0] != inos[2] || st.Hardlinks != 2 || st.Bytes != 3<<20+1+int64(len("#!/bin/sh\nid\n")) {
		t.Errorf("the file with three names: inodes %v, %d links, %d bytes written; want one file written once, linked twice", inos, st.Hardlinks, st.Bytes)
	}
	if hashFile(t, filepath.Join(dest, "bin/data.3")) != hashFile(t, filepath.Join(staging, "shared/data")) {
		t.Error("the linked file's content differs")
	}

	kept := filepath.Join(t.TempDir(), "kept")
	if _, err := Extract(ctx, f, size, "/bin", kept, ExtractOptions{KeepSpecialBits: true}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(kept, "bin/suid")); err != nil || fi.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("with KeepSpecialBits: %v, %v; want setuid kept", fi.Mode(), err)
	}

	for _, tc := range []struct {
		name string
		opts ExtractOptions
		want string
	}{
		{"entries", ExtractOptions{MaxEntries: 4}, "more than 4 files"},
		{"bytes", ExtractOptions{MaxBytes: 1 << 20}, "more than 1048576 bytes"},
	} {
		_, err := Extract(ctx, f, size, "/", filepath.Join(t.TempDir(), tc.name), tc.opts)
		if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("budget of %s: %v, want ErrBudget saying %q", tc.name, err, tc.want)
		}
	}
}
