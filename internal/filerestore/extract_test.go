package filerestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

// stamp is the modification time given to every staged entry.
var stamp = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// stage builds the tree the test file systems hold.
func stage(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "staging")
	mk := func(rel string, data []byte, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("data/small.txt", []byte("hello from the backup\n"), 0o640)
	mk("data/empty", nil, 0o600)
	mk("data/one.bin", randomBytes(1, 1<<20), 0o644)
	mk("data/big.bin", randomBytes(2, 5<<20+123), 0o755)
	mk("data/nested/a/b/c/deep.txt", []byte("deep\n"), 0o444)
	mk("data/nested/a/script.sh", []byte("#!/bin/sh\necho hi\n"), 0o750)
	for i := range 300 { // more than a block of entries: an htree after e2fsck -D
		mk(fmt.Sprintf("data/many/entry-with-a-longish-name-%04d", i), []byte(fmt.Sprint(i)), 0o644)
	}
	// a file with a hole in the middle
	p := filepath.Join(dir, "data/holey")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(3, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(4, 4096), 3<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	must(t, os.Symlink("small.txt", filepath.Join(dir, "data/link")))
	must(t, os.Symlink("nested/a/b/c/"+strings.Repeat("long-target-", 8), filepath.Join(dir, "data/slowlink")))
	must(t, os.Symlink("../../..", filepath.Join(dir, "data/evil")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "data/abs")))
	must(t, os.Symlink("data/nested", filepath.Join(dir, "shortcut")))
	must(t, os.Chmod(filepath.Join(dir, "data/nested/a/b"), 0o751))
	// mtimes last, deepest first, so directories keep theirs
	var paths []string
	must(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSymlink == 0 {
			paths = append(paths, p)
		}
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		must(t, os.Chtimes(paths[i], stamp, stamp))
	}
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// mkfs makes an ext4 image of size from staging dir; with htree, e2fsck -D
// then indexes its directories.
func mkfs(t *testing.T, staging, size string, htree bool) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mkfs.ext4 missing in CI: run make test-deps (Debian package e2fsprogs)")
		}
		t.Skip("SKIPPED: mkfs.ext4 (e2fsprogs) not installed: run make test-deps")
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", staging, img, size).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if htree {
		// exit status 1 means "file system modified", which -D does
		out, err := exec.Command("e2fsck", "-fyD", img).CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
			t.Fatalf("e2fsck -D: %v\n%s", err, out)
		}
	}
	return img
}

func openImage(t *testing.T, img string) (*os.File, int64) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, fi.Size()
}

// sameTree checks that got holds what want holds: types, permission bits,
// modification times, contents and symlink targets.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		g := filepath.Join(got, rel)
		wi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		gi, err := os.Lstat(g)
		if err != nil {
			return fmt.Errorf("missing in the restore: %w", err)
		}
		n++
		if wi.Mode().Type() != gi.Mode().Type() {
			return fmt.Errorf("%s: type %v, want %v", rel, gi.Mode().Type(), wi.Mode().Type())
		}
		switch {
		case wi.Mode()&fs.ModeSymlink != 0:
			wt, _ := os.Readlink(p)
			gt, _ := os.Readlink(g)
			if wt != gt {
				return fmt.Errorf("%s: link to %q, want %q", rel, gt, wt)
			}
			return nil
		case wi.Mode().IsRegular():
			if wh, gh := hashFile(t, p), hashFile(t, g); wh != gh {
				return fmt.Errorf("%s: content differs", rel)
			}
		}
		if rel != "." {
			if wi.Mode().Perm() != gi.Mode().Perm() {
				return fmt.Errorf("%s: mode %v, want %v", rel, gi.Mode().Perm(), wi.Mode().Perm())
			}
			if !wi.ModTime().Equal(gi.ModTime()) {
				return fmt.Errorf("%s: mtime %v, want %v", rel, gi.ModTime(), wi.ModTime())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 300 {
		t.Fatalf("compared only %d entries", n)
	}
}

func hashFile(t *testing.T, p string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

func TestExtractWholeTreeHtree(t *testing.T) {
	staging := stage(t)
	img := mkfs(t, staging, "64M", true)
	r, size := openImage(t, img)
	// the big directory really is an htree
	f, err := openExt4(r, size)
	must(t, err)
	ino, err := f.lookup(context.Background(), "/data/many")
	must(t, err)
	in, err := f.inode(ino)
	must(t, err)
	if in.flags&0x1000 == 0 || in.size <= f.bs {
		t.Fatalf("/data/many: flags %#x, size %d: not an indexed multi-block directory", in.flags, in.size)
	}
	dest := filepath.Join(t.TempDir(), "out")
	st, err := Extract(context.Background(), r, size, "/", dest, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// lost+found is the file system's own
	must(t, os.Remove(filepath.Join(dest, "lost+found")))
	sameTree(t, staging, dest)
	if st.Files < 306 || st.Symlinks != 5 || st.Bytes < 6<<20 || len(st.Skipped) != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestExtractFileDirAndSymlinkPath(t *testing.T) {
	staging := stage(t)
	img := mkfs(t, staging, "64M", false)
	r, size := openImage(t, img)
	ctx := context.Background()
	dest := t.TempDir()

	// a single file lands under its name
	if _, err := Extract(ctx, r, size, "/data/big.bin", dest, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if hashFile(t, filepath.Join(dest, "big.bin")) != hashFile(t, filepath.Join(staging, "data/big.bin")) {
		t.Fatal("big.bin differs")
	}
	// a directory, reached through a symlink in the image (trailing slash ok)
	st, err := Extract(ctx, r, size, "/shortcut/a/", dest, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Dirs != 3 || st.Files != 2 {
		t.Fatalf("stats %+v", st)
	}
	sameTreeSmall(t, filepath.Join(staging, "data/nested/a"), filepath.Join(dest, "a"))
	// the holey file keeps its hole (a sparse file) and its bytes
	if _, err := Extract(ctx, r, size, "/data/holey", dest, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if hashFile(t, filepath.Join(dest, "holey")) != hashFile(t, filepath.Join(staging, "data/holey")) {
		t.Fatal("holey differs")
	}
	// restoring over existing files fails and leaves them alone
	if _, err := Extract(ctx, r, size, "/data/big.bin", dest, ExtractOptions{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second extract: %v, want an exists error", err)
	}
}

// sameTreeSmall is sameTree without the minimum entry count.
func sameTreeSmall(t *testing.T, want, got string) {
	t.Helper()
	must(t, filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		wi, _ := os.Lstat(p)
		gi, err := os.Lstat(filepath.Join(got, rel))
		if err != nil {
			return err
		}
		if wi.Mode() != gi.Mode() || !wi.ModTime().Equal(gi.ModTime()) {
			return fmt.Errorf("%s: mode %v mtime %v, want %v %v", rel, gi.Mode(), gi.ModTime(), wi.Mode(), wi.ModTime())
		}
		if wi.Mode().IsRegular() && hashFile(t, p) != hashFile(t, filepath.Join(got, rel)) {
			return fmt.Errorf("%s: content differs", rel)
		}
		return nil
	}))
}

func TestExtractErrors(t *testing.T) {
	staging := stage(t)
	img := mkfs(t, staging, "32M", false)
	r, size := openImage(t, img)
	ctx := context.Background()
	dest := filepath.Join(t.TempDir(), "out")

	_, err := Extract(ctx, r, size, "/etc/app", dest, ExtractOptions{})
	if !errors.Is(err, ErrNotFound) || err.Error() != "no such file or directory in the backup: /etc/app" {
		t.Fatalf("missing path: %v", err)
	}
	if _, err := Extract(ctx, r, size, "/data/small.txt/x", dest, ExtractOptions{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("path through a file: %v", err)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Fatal("failed lookups created the target directory")
	}

	// not a file system at all
	zeros := bytes.NewReader(make([]byte, 1<<20))
	if _, err := Extract(ctx, zeros, 1<<20, "/", dest, ExtractOptions{}); !errors.Is(err, ErrNotExt4) {
		t.Fatalf("zero disk: %v", err)
	}
	tiny := bytes.NewReader(make([]byte, 100))
	if _, err := Extract(ctx, tiny, 100, "/", dest, ExtractOptions{}); !errors.Is(err, ErrNotExt4) {
		t.Fatalf("tiny disk: %v", err)
	}
	if _, err := exec.LookPath("mkfs.xfs"); err == nil {
		x := filepath.Join(t.TempDir(), "xfs.img")
		must(t, os.WriteFile(x, nil, 0o600))
		must(t, os.Truncate(x, 300<<20))
		if out, err := exec.Command("mkfs.xfs", "-q", x).CombinedOutput(); err != nil {
			t.Logf("mkfs.xfs failed, skipping the xfs case: %v\n%s", err, out)
		} else {
			xr, xs := openImage(t, x)
			_, err := Extract(ctx, xr, xs, "/", dest, ExtractOptions{})
			if !errors.Is(err, ErrNotExt4) || !strings.Contains(err.Error(), "XFS") {
				t.Fatalf("xfs disk: %v", err)
			}
		}
	}
}

// TestExtractCraftedNames patches directory entries of an image into names
// no file system tool would write ("..", names with "/" or NUL) and checks
// that nothing lands outside the target, and that a symlink pointing up is
// written as a link and never followed.
func TestExtractCraftedNames(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(filepath.Join(staging, "d"), 0o755))
	must(t, os.WriteFile(filepath.Join(staging, "d/QQQQQQQQQQ"), []byte("pwned\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(staging, "d/WW"), []byte("pwned\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(staging, "d/ZZZZ"), []byte("pwned\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(staging, "d/ok"), []byte("fine\n"), 0o644))
	must(t, os.Symlink("../../..", filepath.Join(staging, "d/evil")))
	img := mkfs(t, staging, "16M", false)
	data, err := os.ReadFile(img)
	must(t, err)
	for from, to := range map[string]string{
		"QQQQQQQQQQ": "evil/pwned", // through the symlink
		"WW":         "..",         // a second "..", pointing at a file
		"ZZZZ":       "a\x00/b",
	} {
		// the names sit in directory entries: 8 bytes of header, then the name
		needle := []byte(from)
		k := bytes.Index(data, needle)
		if k < 8 || int(data[k-2]) != len(from) || bytes.Contains(data[k+1:], needle) {
			t.Fatalf("directory entry %q not found exactly once", from)
		}
		copy(data[k:], to)
	}
	must(t, os.WriteFile(img, data, 0o600))

	top := t.TempDir()
	dest := filepath.Join(top, "x", "y", "out")
	st, err := Extract(context.Background(), bytes.NewReader(data), int64(len(data)), "/d", dest, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Skipped) != 2 || st.Files != 1 || st.Symlinks != 1 {
		t.Fatalf("stats %+v", st)
	}
	if target, err := os.Readlink(filepath.Join(dest, "d/evil")); err != nil || target != "../../.." {
		t.Fatalf("evil symlink: %q, %v", target, err)
	}
	// everything under top is the target path and what Extract made
	var found []string
	must(t, filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(top, p)
		found = append(found, rel)
		return err
	}))
	want := []string{".", "x", "x/y", "x/y/out", "x/y/out/d", "x/y/out/d/evil", "x/y/out/d/ok"}
	if fmt.Sprint(found) != fmt.Sprint(want) {
		t.Fatalf("files under the test dir: %q, want %q", found, want)
	}
}

// TestExtractFromBackup backs up a 256 MiB ext4 image with 1 MiB chunks and
// pulls a 1 MiB file and a directory out of it through a repo.DiskReader,
// fetching only a few chunks.
func TestExtractFromBackup(t *testing.T) {
	staging := stage(t)
	img := mkfs(t, staging, "256M", false)
	ctx := context.Background()
	r := repotest.NewLocal(t, "", 1<<20)
	m := repotest.BackUpFile(t, r, img, "local", "fs")
	if m.Chunks != 256 {
		t.Fatalf("%d chunks, want 256", m.Chunks)
	}

	d, err := r.OpenDisk(ctx, m.ID, repo.ReaderOptions{})
	must(t, err)
	dest := t.TempDir()
	st, err := Extract(ctx, d, d.Size(), "/data/one.bin", dest, ExtractOptions{})
	must(t, err)
	if st.Files != 1 || st.Bytes != 1<<20 {
		t.Fatalf("stats %+v", st)
	}
	if hashFile(t, filepath.Join(dest, "one.bin")) != hashFile(t, filepath.Join(staging, "data/one.bin")) {
		t.Fatal("one.bin differs")
	}
	fi, err := os.Stat(filepath.Join(dest, "one.bin"))
	must(t, err)
	if fi.Mode().Perm() != 0o644 || !fi.ModTime().Equal(stamp) {
		t.Fatalf("one.bin: mode %v, mtime %v", fi.Mode(), fi.ModTime())
	}
	rs := d.Stats()
	t.Logf("1 MiB file from a 256 MiB disk: fetched %d of %d chunks (%d bytes), %d cache hits, %d hole reads",
		rs.ChunksFetched, m.Chunks, rs.BytesFetched, rs.CacheHits, rs.HoleReads)
	// superblock and group descriptors, inode table, directories, and the
	// file's data (at most 2 chunks when it straddles a boundary)
	if rs.ChunksFetched > 6 {
		t.Fatalf("fetched %d of %d chunks for a 1 MiB file", rs.ChunksFetched, m.Chunks)
	}

	// a directory tree, through a fresh reader
	d2, err := r.OpenDisk(ctx, m.ID, repo.ReaderOptions{})
	must(t, err)
	st, err = Extract(ctx, d2, d2.Size(), "/data/nested", dest, ExtractOptions{})
	must(t, err)
	sameTreeSmall(t, filepath.Join(staging, "data/nested"), filepath.Join(dest, "nested"))
	t.Logf("directory /data/nested (%d files): fetched %d of %d chunks", st.Files, d2.Stats().ChunksFetched, m.Chunks)
	if n := d2.Stats().ChunksFetched; n > 6 {
		t.Fatalf("fetched %d of %d chunks for a small directory", n, m.Chunks)
	}
}

// TestExtractExt2BlockMaps reads an ext2 file system: 1 KiB blocks, 128-byte
// inodes, files mapped by direct, indirect and double-indirect blocks.
func TestExtractExt2BlockMaps(t *testing.T) {
	staging := stage(t)
	if _, err := exec.LookPath("mkfs.ext2"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mkfs.ext2 missing in CI: run make test-deps (Debian package e2fsprogs)")
		}
		t.Skip("SKIPPED: mkfs.ext2 (e2fsprogs) not installed: run make test-deps")
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	if out, err := exec.Command("mkfs.ext2", "-q", "-F", "-b", "1024", "-I", "128", "-d", staging, img, "48M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext2: %v\n%s", err, out)
	}
	r, size := openImage(t, img)
	f, err := openExt4(r, size)
	must(t, err)
	if f.bs != 1024 || f.inodeSize != 128 {
		t.Fatalf("block size %d, inode size %d", f.bs, f.inodeSize)
	}
	dest := filepath.Join(t.TempDir(), "out")
	if _, err := Extract(context.Background(), r, size, "/", dest, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	must(t, os.Remove(filepath.Join(dest, "lost+found")))
	sameTree(t, staging, dest)
}

// patched reads base with a few bytes changed.
type patched struct {
	base    []byte
	patches map[int64]byte
}

func (p patched) ReadAt(b []byte, off int64) (int, error) {
	n, err := bytes.NewReader(p.base).ReadAt(b, off)
	for k, v := range p.patches {
		if k >= off && k < off+int64(n) {
			b[k-off] = v
		}
	}
	return n, err
}

// TestExtractCorruptImages flips random metadata bytes of a small image: the
// reader may fail, but must not panic, hang or write outside the target.
func TestExtractCorruptImages(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(filepath.Join(staging, "a/b"), 0o755))
	must(t, os.WriteFile(filepath.Join(staging, "a/b/f"), randomBytes(9, 70000), 0o644))
	must(t, os.WriteFile(filepath.Join(staging, "a/g"), []byte("g"), 0o644))
	must(t, os.Symlink("b/f", filepath.Join(staging, "a/l")))
	img := mkfs(t, staging, "8M", false)
	data, err := os.ReadFile(img)
	must(t, err)
	// only the blocks in use: metadata and the few data blocks
	var used []int64
	for blk := int64(0); blk < int64(len(data))/4096; blk++ {
		if !bytes.Equal(data[blk*4096:(blk+1)*4096], make([]byte, 4096)) {
			used = append(used, blk)
		}
	}
	rng := rand.New(rand.NewPCG(42, 43))
	top := t.TempDir()
	errs := 0
	for i := range 300 {
		p := patched{base: data, patches: map[int64]byte{}}
		for range 1 + rng.IntN(8) {
			off := used[rng.IntN(len(used))]*4096 + int64(rng.IntN(4096))
			p.patches[off] = byte(rng.Uint32())
		}
		dest := filepath.Join(top, fmt.Sprint(i), "out")
		if _, err := Extract(context.Background(), p, int64(len(data)), "/", dest, ExtractOptions{}); err != nil {
			errs++
		}
	}
	t.Logf("%d of 300 corrupted images failed cleanly", errs)
	entries, err := os.ReadDir(top)
	must(t, err)
	for _, e := range entries {
		sub, err := os.ReadDir(filepath.Join(top, e.Name()))
		must(t, err)
		if len(sub) > 1 || len(sub) == 1 && sub[0].Name() != "out" {
			t.Fatalf("something was written next to the target in %s: %v", e.Name(), sub)
		}
	}
}
