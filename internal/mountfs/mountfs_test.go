package mountfs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

// needFUSE fails under CI and skips loudly elsewhere when FUSE mounts
// cannot work here.
func needFUSE(t *testing.T) {
	t.Helper()
	if err := Check(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v: under CI the FUSE mount tests must run (make test-deps installs fuse3)", err)
		}
		t.Skipf("SKIPPED: %v: run make test-deps (Debian package fuse3) on a machine with /dev/fuse", err)
	}
}

func need(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing in CI: run make test-deps (Debian package %s)", tool, pkg)
		}
		t.Skipf("SKIPPED: %s (%s) not installed: run make test-deps", tool, pkg)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var stamp = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// stage builds a tree: files of several sizes, a hole, nested directories,
// a directory of 300 entries, symlinks and a hard link.
func stage(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "staging")
	mk := func(rel string, data []byte, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, data, mode))
		must(t, os.Chmod(p, mode))
	}
	mk("etc/app/app.conf", []byte("port = 8080\n"), 0o640)
	mk("etc/app/empty", nil, 0o600)
	mk("data/one.bin", randomBytes(1, 1<<20), 0o644)
	mk("data/big.bin", randomBytes(2, 9<<20+77), 0o755)
	mk("data/a/b/c/deep.txt", []byte("deep\n"), 0o444)
	for i := range 300 {
		mk(fmt.Sprintf("data/many/entry-%04d", i), []byte(fmt.Sprint(i)), 0o644)
	}
	f, err := os.Create(filepath.Join(dir, "data/holey"))
	must(t, err)
	_, err = f.WriteAt(randomBytes(3, 8192), 0)
	must(t, err)
	_, err = f.WriteAt(randomBytes(4, 4096), 5<<20)
	must(t, err)
	must(t, f.Close())
	must(t, os.Symlink("app.conf", filepath.Join(dir, "etc/app/link")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "etc/abs")))
	must(t, os.Symlink("a/b/c/"+strings.Repeat("long-", 20), filepath.Join(dir, "data/slowlink")))
	must(t, os.Link(filepath.Join(dir, "data/one.bin"), filepath.Join(dir, "data/one-again.bin")))
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

// backedUp makes an ext4 image of staging (size), backs it up into a
// file:// repository with 1 MiB chunks and returns the repository, the
// disk id and the image.
func backedUp(t *testing.T, staging, size string) (*repo.Repository, string, string) {
	t.Helper()
	need(t, "mkfs.ext4", "e2fsprogs")
	img := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "data", "-d", staging, img, size).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return backUp(t, img)
}

func backUp(t *testing.T, img string) (*repo.Repository, string, string) {
	t.Helper()
	return backUpTo(t, img, filepath.Join(t.TempDir(), "repo"))
}

func backUpTo(t *testing.T, img, repoDir string) (*repo.Repository, string, string) {
	t.Helper()
	r := repotest.NewLocal(t, repoDir, 1<<20)
	return r, repotest.BackUpFile(t, r, img, "local", "disk").ID, img
}

func sum(t *testing.T, p string) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must(t, err)
	return [32]byte(h.Sum(nil))
}

// assertClean checks that dir is no mount point any more and is empty.
func assertClean(t *testing.T, dir string) {
	t.Helper()
	if m, err := mounted(dir); err != nil || m != nil {
		t.Fatalf("%s still in the mount table: %+v, %v", dir, m, err)
	}
	ents, err := os.ReadDir(dir)
	must(t, err)
	if len(ents) != 0 {
		t.Fatalf("mount point not empty after unmount: %v", ents)
	}
}

// sameTree compares the mounted tree with the staged one: names, types,
// permission bits, mtimes, sizes, sha256 of every file, symlink targets.
func sameTree(t *testing.T, want, got string) int {
	t.Helper()
	n := 0
	must(t, filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
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
			return fmt.Errorf("missing in the mount: %w", err)
		}
		n++
		if wi.Mode().Type() != gi.Mode().Type() {
			return fmt.Errorf("%s: type %v, want %v", rel, gi.Mode().Type(), wi.Mode().Type())
		}
		if wi.IsDir() {
			wn, _ := os.ReadDir(p)
			gn, err := os.ReadDir(g)
			if err != nil {
				return err
			}
			var a, b []string
			for _, e := range wn {
				a = append(a, e.Name()+":"+e.Type().String())
			}
			for _, e := range gn {
				if rel == "." && e.Name() == "lost+found" {
					continue
				}
				b = append(b, e.Name()+":"+e.Type().String())
			}
			sort.Strings(b)
			if strings.Join(a, " ") != strings.Join(b, " ") {
				return fmt.Errorf("%s: listing %v, want %v", rel, b, a)
			}
		}
		if wi.Mode()&fs.ModeSymlink != 0 {
			wt, _ := os.Readlink(p)
			gt, err := os.Readlink(g)
			if err != nil || wt != gt {
				return fmt.Errorf("%s: link to %q (%v), want %q", rel, gt, err, wt)
			}
			return nil
		}
		if wi.Mode().IsRegular() {
			if wi.Size() != gi.Size() || sum(t, p) != sum(t, g) {
				return fmt.Errorf("%s: content differs", rel)
			}
		}
		if rel != "." && (wi.Mode() != gi.Mode() || !wi.ModTime().Equal(gi.ModTime())) {
			return fmt.Errorf("%s: mode %v mtime %v, want %v %v", rel, gi.Mode(), gi.ModTime(), wi.Mode(), wi.ModTime())
		}
		return nil
	}))
	return n
}

// TestMountExt4 backs up a real ext4 image, mounts it with FUSE and reads
// the tree back through the kernel.
func TestMountExt4(t *testing.T) {
	needFUSE(t)
	staging := stage(t)
	r, diskID, _ := backedUp(t, staging, "128M")
	ctx := context.Background()
	d, err := r.OpenDisk(ctx, diskID, repo.ReaderOptions{})
	must(t, err)
	x, err := filerestore.Open(d, d.Size())
	must(t, err)
	dir := t.TempDir()
	t0 := time.Now()
	m, err := MountExt4(dir, x, Options{Source: "raksha:" + diskID})
	must(t, err)
	mountTime := time.Since(t0)
	t.Cleanup(func() { _ = m.Unmount() })
	if ok, err := IsMounted(dir); !ok || err != nil {
		t.Fatalf("IsMounted: %v %v", ok, err)
	}
	mi, err := mounted(dir)
	must(t, err)
	if mi.fstype != FSType || mi.source != "raksha:"+diskID {
		t.Fatalf("mount table: %+v", mi)
	}

	// one file first: few chunks fetched
	before := d.Stats()
	if sum(t, filepath.Join(dir, "etc/app/app.conf")) != sum(t, filepath.Join(staging, "etc/app/app.conf")) {
		t.Fatal("app.conf differs")
	}
	after := d.Stats()
	catChunks := after.ChunksFetched - before.ChunksFetched
	t.Logf("cat of a 12-byte file on a 128 MiB disk: %d chunks fetched (%d before it: superblock, root)", catChunks, before.ChunksFetched)
	if after.ChunksFetched > 6 {
		t.Fatalf("%d of 128 chunks fetched for one small file", after.ChunksFetched)
	}

	n := sameTree(t, staging, dir)
	if n < 310 {
		t.Fatalf("compared %d entries", n)
	}
	t.Logf("whole tree compared (%d entries): %d of 128 chunks fetched, %d cache hits", n, d.Stats().ChunksFetched, d.Stats().CacheHits)

	// hard links share an inode, owners and link counts come through
	var a, b syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(dir, "data/one.bin"), &a))
	must(t, syscall.Stat(filepath.Join(dir, "data/one-again.bin"), &b))
	if a.Ino != b.Ino || a.Nlink != 2 || a.Uid != uint32(os.Getuid()) {
		t.Fatalf("hard link: ino %d/%d nlink %d uid %d", a.Ino, b.Ino, a.Nlink, a.Uid)
	}
	var sf syscall.Statfs_t
	must(t, syscall.Statfs(dir, &sf))
	if sf.Blocks*uint64(sf.Bsize) != 128<<20 || sf.Flags&0x1 == 0 { // ST_RDONLY
		t.Fatalf("statfs: %d blocks of %d, flags %#x", sf.Blocks, sf.Bsize, sf.Flags)
	}

	// every kind of write fails with EROFS
	erofs := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, syscall.EROFS) {
			t.Fatalf("%s: %v, want EROFS", what, err)
		}
	}
	_, err = os.OpenFile(filepath.Join(dir, "etc/app/app.conf"), os.O_WRONLY, 0)
	erofs("open for writing", err)
	_, err = os.OpenFile(filepath.Join(dir, "etc/app/app.conf"), os.O_RDWR|os.O_APPEND, 0)
	erofs("open for appending", err)
	erofs("create", os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644))
	erofs("mkdir", os.Mkdir(filepath.Join(dir, "newdir"), 0o755))
	erofs("remove", os.Remove(filepath.Join(dir, "etc/app/app.conf")))
	erofs("rename", os.Rename(filepath.Join(dir, "etc/app/app.conf"), filepath.Join(dir, "etc/app/x")))
	erofs("chmod", os.Chmod(filepath.Join(dir, "etc/app/app.conf"), 0o777))
	erofs("truncate", os.Truncate(filepath.Join(dir, "etc/app/app.conf"), 0))
	erofs("symlink", os.Symlink("x", filepath.Join(dir, "sl")))
	erofs("chtimes", os.Chtimes(filepath.Join(dir, "etc"), time.Now(), time.Now()))
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat of a missing name: %v", err)
	}

	// busy: an open file keeps it mounted, and Unmount says why
	f, err := os.Open(filepath.Join(dir, "data/big.bin"))
	must(t, err)
	if err := m.Unmount(); !errors.Is(err, syscall.EBUSY) {
		f.Close()
		t.Fatalf("unmount with an open file: %v, want EBUSY", err)
	}
	must(t, f.Close())
	t0 = time.Now()
	must(t, m.Unmount())
	t.Logf("mount took %v, unmount %v", mountTime.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Unmount")
	}
	assertClean(t, dir)
	must(t, m.Unmount()) // twice is fine
}

// TestMountUnmountFromOutside: 'raksha umount' (Unmount) and fusermount3
// -u end the serving; Unmount refuses what is not a raksha mount.
func TestMountUnmountFromOutside(t *testing.T) {
	needFUSE(t)
	watchdog(t, 2*time.Minute)
	staging := stage(t)
	r, diskID, _ := backedUp(t, staging, "32M")
	ctx := context.Background()
	d, err := r.OpenDisk(ctx, diskID, repo.ReaderOptions{})
	must(t, err)
	x, err := filerestore.Open(d, d.Size())
	must(t, err)

	dir := t.TempDir()
	if err := Unmount(ctx, dir, false); !errors.Is(err, ErrNotMounted) || !strings.Contains(err.Error(), "not a mount point") {
		t.Fatalf("unmount of a plain directory: %v", err)
	}
	if err := Unmount(ctx, "/proc", false); !errors.Is(err, ErrNotMounted) || !strings.Contains(err.Error(), "proc mount") {
		t.Fatalf("unmount of /proc: %v", err)
	}

	for _, how := range []string{"Unmount", "fusermount", "lazy"} {
		m, err := MountExt4(dir, x, Options{})
		must(t, err)
		if _, err := MountExt4(dir, x, Options{}); err == nil || !strings.Contains(err.Error(), "already a mount point") {
			t.Fatalf("second mount on the same directory: %v", err)
		}
		if how == "Unmount" {
			// busy first: a process with its working directory inside
			cmd := startInside(t, filepath.Join(dir, "data"))
			if err := Unmount(ctx, dir, false); !errors.Is(err, syscall.EBUSY) {
				t.Fatalf("unmount while busy: %v", err)
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			must(t, Unmount(ctx, dir, false))
		} else if how == "lazy" {
			// busy, detached at once; served until the last user is gone
			cmd := startInside(t, filepath.Join(dir, "data"))
			must(t, Unmount(ctx, dir, true))
			if mi, err := mounted(dir); err != nil || mi != nil {
				t.Fatalf("lazy unmount left %+v (%v)", mi, err)
			}
			select {
			case <-m.Done():
				t.Fatal("lazily unmounted file system stopped while still in use")
			case <-time.After(200 * time.Millisecond):
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		} else {
			bin, err := fusermount()
			must(t, err)
			if out, err := exec.Command(bin, "-u", dir).CombinedOutput(); err != nil {
				t.Fatalf("%s -u: %v\n%s", bin, err, out)
			}
		}
		select {
		case <-m.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: still serving 10 s after the unmount", how)
		}
		assertClean(t, dir)
	}
}

// TestStartInsideUnderCollections starts processes inside this process's
// own mount while garbage collections run back to back. Starting them with
// exec.Cmd.Dir inside the mount deadlocked on the first child this way (see
// startInside); the shell that changes directory after its exec must not.
func TestStartInsideUnderCollections(t *testing.T) {
	needFUSE(t)
	watchdog(t, 2*time.Minute)
	staging := stage(t)
	r, diskID, _ := backedUp(t, staging, "32M")
	d, err := r.OpenDisk(context.Background(), diskID, repo.ReaderOptions{})
	must(t, err)
	x, err := filerestore.Open(d, d.Size())
	must(t, err)
	dir := t.TempDir()
	m, err := MountExt4(dir, x, Options{})
	must(t, err)
	defer func() { must(t, m.Unmount()) }()
	stop := make(chan struct{})
	var collector sync.WaitGroup
	collector.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				runtime.GC()
			}
		}
	})
	start := time.Now()
	for range 100 {
		cmd := startInside(t, filepath.Join(dir, "data"))
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	close(stop)
	collector.Wait()
	t.Logf("100 processes started inside the mount in %v", time.Since(start).Round(time.Millisecond))
}

// TestMountRaw serves the disk image and its partitions as files.
func TestMountRaw(t *testing.T) {
	needFUSE(t)
	need(t, "sfdisk", "fdisk")
	need(t, "mkfs.ext4", "e2fsprogs")
	img := filepath.Join(t.TempDir(), "disk.img")
	must(t, os.WriteFile(img, nil, 0o600))
	must(t, os.Truncate(img, 48<<20))
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=10240, size=81920, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	staging := stage(t)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "offset=5242880", "-d", staging, img, "40M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	r, diskID, _ := backUp(t, img)
	ctx := context.Background()
	d, err := r.OpenDisk(ctx, diskID, repo.ReaderOptions{})
	must(t, err)
	tbl, err := filerestore.ReadTable(d, d.Size())
	must(t, err)
	files := []RawFile{{Name: "disk.img", R: d, Size: d.Size()}}
	for _, p := range tbl.Partitions {
		files = append(files, RawFile{Name: fmt.Sprintf("part%d.img", p.Number), R: io.NewSectionReader(d, p.Start, p.Size), Size: p.Size})
	}
	dir := t.TempDir()
	m, err := MountRaw(dir, files, Options{})
	must(t, err)
	t.Cleanup(func() { _ = m.Unmount() })
	ents, err := os.ReadDir(dir)
	must(t, err)
	if len(ents) != 3 || ents[0].Name() != "disk.img" || ents[1].Name() != "part1.img" || ents[2].Name() != "part2.img" {
		t.Fatalf("raw mount lists %v", ents)
	}
	if sum(t, filepath.Join(dir, "disk.img")) != sum(t, img) {
		t.Fatal("disk.img differs from the image backed up")
	}
	fi, err := os.Stat(filepath.Join(dir, "part2.img"))
	must(t, err)
	if fi.Size() != 40<<20 || fi.Mode() != 0o444 {
		t.Fatalf("part2.img: %v %v", fi.Size(), fi.Mode())
	}
	// the partition file holds the file system: read it back through it
	pf, err := os.Open(filepath.Join(dir, "part2.img"))
	must(t, err)
	defer pf.Close()
	dest := filepath.Join(t.TempDir(), "out")
	_, err = filerestore.Extract(ctx, pf, fi.Size(), "/etc/app/app.conf", dest, filerestore.ExtractOptions{})
	must(t, err)
	if sum(t, filepath.Join(dest, "app.conf")) != sum(t, filepath.Join(staging, "etc/app/app.conf")) {
		t.Fatal("app.conf through part2.img differs")
	}
	if _, err := os.OpenFile(filepath.Join(dir, "disk.img"), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("open disk.img for writing: %v", err)
	}
	must(t, pf.Close())
	must(t, m.Unmount())
	assertClean(t, dir)
}

// TestMountConcurrentReaders reads every file from 8 goroutines at once.
func TestMountConcurrentReaders(t *testing.T) {
	needFUSE(t)
	staging := stage(t)
	r, diskID, _ := backedUp(t, staging, "64M")
	d, err := r.OpenDisk(context.Background(), diskID, repo.ReaderOptions{CacheChunks: 2})
	must(t, err)
	x, err := filerestore.Open(d, d.Size())
	must(t, err)
	dir := t.TempDir()
	m, err := MountExt4(dir, x, Options{})
	must(t, err)
	t.Cleanup(func() { _ = m.Unmount() })
	var files []string
	must(t, filepath.WalkDir(staging, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			rel, _ := filepath.Rel(staging, p)
			files = append(files, rel)
		}
		return err
	}))
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 60 {
				rel := files[rng.IntN(len(files))]
				want, err := os.ReadFile(filepath.Join(staging, rel))
				if err != nil {
					errs <- err
					return
				}
				got, err := os.ReadFile(filepath.Join(dir, rel))
				if err != nil || string(got) != string(want) {
					errs <- fmt.Errorf("%s: %d bytes, %v", rel, len(got), err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		must(t, <-errs)
	}
	must(t, m.Unmount())
	assertClean(t, dir)
}

// TestMountMissingChunk: a chunk gone from the repository reads as EIO,
// and the log says which disk offset and why; the mount stays usable.
func TestMountMissingChunk(t *testing.T) {
	needFUSE(t)
	staging := stage(t)
	need(t, "mkfs.ext4", "e2fsprogs")
	img := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", staging, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	repoDir := filepath.Join(t.TempDir(), "repo")
	r, diskID, _ := backUpTo(t, img, repoDir)
	d, err := r.OpenDisk(context.Background(), diskID, repo.ReaderOptions{CacheChunks: 1})
	must(t, err)
	x, err := filerestore.Open(d, d.Size())
	must(t, err)
	var logs syncBuf
	dir := t.TempDir()
	m, err := MountExt4(dir, x, Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	must(t, err)
	t.Cleanup(func() { _ = m.Unmount() })
	// metadata first, then every chunk goes
	if _, err := os.Stat(filepath.Join(dir, "data/big.bin")); err != nil {
		t.Fatal(err)
	}
	must(t, os.RemoveAll(filepath.Join(repoDir, "chunks")))
	_, err = os.ReadFile(filepath.Join(dir, "data/big.bin"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with the chunks gone: %v, want EIO", err)
	}
	if l := logs.String(); !strings.Contains(l, "read from the backup failed") || !strings.Contains(l, "not found") || !strings.Contains(l, "/data/big.bin (inode") {
		t.Fatalf("log: %s", l)
	}
	t.Logf("log: %s", strings.TrimSpace(logs.String()))
	must(t, m.Unmount())
	assertClean(t, dir)
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMountCraftedNames patches directory entries into names with "/" and
// NUL and a second "..": the listing leaves them out (and logs them), the
// rest of the directory is served.
func TestMountCraftedNames(t *testing.T) {
	needFUSE(t)
	need(t, "mkfs.ext4", "e2fsprogs")
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(filepath.Join(staging, "d"), 0o755))
	for _, name := range []string{"QQQQQQQQQQ", "WW", "ZZZZ", "ok"} {
		must(t, os.WriteFile(filepath.Join(staging, "d", name), []byte(strings.ToLower(name)), 0o644))
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", staging, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	data, err := os.ReadFile(img)
	must(t, err)
	for from, to := range map[string]string{"QQQQQQQQQQ": "evil/pwned", "WW": "..", "ZZZZ": "a\x00/b"} {
		k := strings.Index(string(data), from)
		if k < 8 || int(data[k-2]) != len(from) || strings.Contains(string(data[k+1:]), from) {
			t.Fatalf("directory entry %q not found exactly once", from)
		}
		copy(data[k:], to)
	}
	must(t, os.WriteFile(img, data, 0o600))
	r, diskID, _ := backUp(t, img)
	d, err := r.OpenDisk(context.Background(), diskID, repo.ReaderOptions{})
	must(t, err)
	x, err := filerestore.Open(d, d.Size())
	must(t, err)
	var logs syncBuf
	dir := t.TempDir()
	m, err := MountExt4(dir, x, Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	must(t, err)
	t.Cleanup(func() { _ = m.Unmount() })
	ents, err := os.ReadDir(filepath.Join(dir, "d"))
	must(t, err)
	if len(ents) != 1 || ents[0].Name() != "ok" {
		t.Fatalf("listing: %v", ents)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "d/ok")); err != nil || string(got) != "ok" {
		t.Fatalf("d/ok: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "d/evil")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("d/evil: %v", err)
	}
	if l := logs.String(); !strings.Contains(l, `evil/pwned`) || !strings.Contains(l, `a\\x00/b`) {
		t.Fatalf("log: %s", l)
	}
	must(t, m.Unmount())
	assertClean(t, dir)
}

// startInside starts a process whose working directory is dir, a directory
// in a mount this test process serves, and returns once the process is in
// it. It never lets exec.Cmd change into dir itself: Go starts children with
// vfork, and a child that changes into this process's FUSE mount between the
// vfork and its exec waits for this process's FUSE server, while the parent
// thread waits for the child without being preemptible; a garbage
// collection that starts then waits for that thread forever and the
// world never restarts (the 100% CPU hang of TestMountUnmountFromOutside in
// CI). A shell started outside changes into dir after its exec instead.
func startInside(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sh", "-c", `cd "$1" && echo in && exec sleep 30`, "sh", dir)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	line := make([]byte, 3)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "in\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("a shell changing into %s: %q, %v", dir, line, err)
	}
	return cmd
}

// watchdog ends a test that hangs on its own FUSE mount: after d it aborts
// the FUSE connection of every raksha mount under the test's temporary
// directories (through fusectl, without touching the mounts, which may not
// answer), so that no thread stays in D state holding go test's output, and
// panics with every goroutine's stack. It cannot end a hang in which the
// world is stopped (see startInside), since its timer needs the scheduler.
func watchdog(t *testing.T, d time.Duration) {
	name, under := t.Name(), filepath.Dir(t.TempDir())+string(filepath.Separator)
	timer := time.AfterFunc(d, func() {
		debug.SetTraceback("all")
		aborted := abortRakshaFUSE(under)
		panic(fmt.Sprintf("%s hung for %v; aborted FUSE connections %v", name, d, aborted))
	})
	t.Cleanup(func() { timer.Stop() })
}

// abortRakshaFUSE aborts the FUSE connections of the raksha mounts whose
// mount point starts with under (other tests' mounts in the same mount
// namespace are left alone), read from /proc/self/mountinfo (FUSE's
// connection id is the mount's device number: major 0, the minor).
func abortRakshaFUSE(under string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	const ctl = "/sys/fs/fuse/connections"
	if _, err := os.Stat(ctl + "/."); err == nil {
		_ = syscall.Mount("none", ctl, "fusectl", 0, "") // EBUSY when mounted already
	}
	var aborted []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		i := slices.Index(f, "-")
		if i < 0 || i+1 >= len(f) || f[i+1] != FSType || len(f) < 5 || !strings.HasPrefix(unescape(f[4]), under) {
			continue
		}
		_, minor, ok := strings.Cut(f[2], ":")
		if !ok {
			continue
		}
		if os.WriteFile(filepath.Join(ctl, minor, "abort"), []byte("1"), 0o200) == nil {
			aborted = append(aborted, unescape(f[4]))
		}
	}
	return aborted
}

// TestWatchdogAbortsMounts checks the watchdog's escape hatch: aborting the
// FUSE connection of a live mount makes it answer ENOTCONN at once, and
// the mount can still be unmounted.
func TestWatchdogAbortsMounts(t *testing.T) {
	needFUSE(t)
	staging := stage(t)
	r, diskID, _ := backedUp(t, staging, "32M")
	ctx := context.Background()
	d, err := r.OpenDisk(ctx, diskID, repo.ReaderOptions{})
	must(t, err)
	x, err := filerestore.Open(d, d.Size())
	must(t, err)
	dir := t.TempDir()
	m, err := MountExt4(dir, x, Options{})
	must(t, err)
	aborted := abortRakshaFUSE(dir)
	if !slices.Equal(aborted, []string{dir}) {
		t.Fatalf("aborted %v, want %s among them", aborted, dir)
	}
	if _, err := os.ReadDir(dir); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("read of an aborted mount: %v, want ENOTCONN", err)
	}
	must(t, Unmount(ctx, dir, false))
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the aborted file system is still served")
	}
	if mi, err := mounted(dir); err != nil || mi != nil {
		t.Errorf("after unmount: %+v %v", mi, err)
	}
}
