package loopfs_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/loopfs/xfstest"
	"github.com/raksha-backup/raksha/internal/mountfs"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
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

// populate writes the test tree into dir (an XFS mount) and returns the
// sha256 of its regular files by path.
func populate(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	app := filepath.Join(dir, "etc/app")
	must(t, os.MkdirAll(app, 0o755))
	rng := rand.New(rand.NewPCG(7, 7))
	big := make([]byte, 3<<20+123)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	must(t, os.WriteFile(filepath.Join(app, "app.conf"), []byte("port = 8080\n"), 0o640))
	must(t, os.WriteFile(filepath.Join(app, "big.bin"), big, 0o600))
	// sparse: 1 MiB of data after an 8 MiB hole
	sp, err := os.Create(filepath.Join(app, "sparse.bin"))
	must(t, err)
	_, err = sp.WriteAt(big[:1<<20], 8<<20)
	must(t, err)
	must(t, sp.Close())
	must(t, os.Symlink("app.conf", filepath.Join(app, "link")))
	// hostile links: written as links, never followed
	must(t, os.Symlink("/etc/shadow", filepath.Join(app, "abs-link")))
	must(t, os.Symlink("../../../../../../../../tmp", filepath.Join(app, "escape")))
	must(t, syscall.Mkfifo(filepath.Join(app, "fifo"), 0o644))
	// a directory symlink in a path: followed inside the file system
	must(t, os.Symlink("/etc/app", filepath.Join(dir, "conf")))
	must(t, os.Chmod(app, 0o750))
	stamp := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	must(t, os.Chtimes(filepath.Join(app, "app.conf"), stamp, stamp))
	sums := map[string][32]byte{}
	for _, n := range []string{"app.conf", "big.bin", "sparse.bin"} {
		sums[n] = sum(t, filepath.Join(app, n))
	}
	return sums
}

// backUp backs img up into a file:// repository (1 MiB chunks) and opens
// the disk for reading.
func backUp(t *testing.T, img string) *repo.DiskReader {
	t.Helper()
	r := repotest.NewLocal(t, "", 1<<20)
	m := repotest.BackUpFile(t, r, img, "local", "disk")
	d, err := r.OpenDisk(context.Background(), m.ID, repo.ReaderOptions{})
	must(t, err)
	return d
}

// TestExtractXFS: a real XFS image backed up, loop-mounted from the
// repository, files copied out and compared by sha256; links not followed,
// the fifo skipped; everything cleaned up.
func TestExtractXFS(t *testing.T) {
	xfstest.Need(t)
	tmp := xfstest.PrivateTmp(t)
	img := filepath.Join(t.TempDir(), "xfs.img")
	var sums map[string][32]byte
	xfstest.Image(t, img, xfstest.MinSize, func(dir string) { sums = populate(t, dir) })
	d := backUp(t, img)
	if !filerestore.IsXFS(d) {
		t.Fatal("IsXFS false on an XFS image")
	}
	t0 := time.Now()
	m, err := loopfs.Open(d, d.Size(), "xfs", "", loopfs.Options{Source: "raksha:test"})
	must(t, err)
	t.Cleanup(func() { _ = m.Close() })
	mounted := time.Since(t0)
	dest := filepath.Join(t.TempDir(), "out")
	ctx := context.Background()
	st, err := loopfs.Extract(ctx, m.Dir, "/etc/app/app.conf", dest, filerestore.ExtractOptions{})
	must(t, err)
	one := time.Since(t0)
	oneChunks := d.Stats().ChunksFetched
	if st.Files != 1 || sum(t, filepath.Join(dest, "app.conf")) != sums["app.conf"] {
		t.Fatalf("one file: %+v", st)
	}
	fi, err := os.Stat(filepath.Join(dest, "app.conf"))
	must(t, err)
	if fi.Mode() != 0o640 || !fi.ModTime().Equal(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)) {
		t.Fatalf("app.conf: %v %v", fi.Mode(), fi.ModTime())
	}

	// a file reached through a symlink to an absolute path (inside the
	// backup, not the host's /etc)
	st, err = loopfs.Extract(ctx, m.Dir, "/conf/big.bin", filepath.Join(dest, "via"), filerestore.ExtractOptions{})
	must(t, err)
	if st.Files != 1 || sum(t, filepath.Join(dest, "via", "big.bin")) != sums["big.bin"] {
		t.Fatalf("through /conf: %+v", st)
	}
	// the directory
	st, err = loopfs.Extract(ctx, m.Dir, "/etc/app/", filepath.Join(dest, "tree"), filerestore.ExtractOptions{})
	must(t, err)
	if st.Files != 3 || st.Dirs != 1 || st.Symlinks != 3 || st.Bytes != 3<<20+123+9<<20+12 || len(st.Skipped) != 1 || st.Skipped[0] != "/etc/app/fifo: special file (mode 010644) not restored" {
		t.Fatalf("tree: %+v", st)
	}
	got := filepath.Join(dest, "tree", "app")
	for n, s := range sums {
		if sum(t, filepath.Join(got, n)) != s {
			t.Fatalf("%s differs", n)
		}
	}
	if fi, err := os.Stat(got); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("directory mode: %v %v", fi, err)
	}
	for link, want := range map[string]string{"link": "app.conf", "abs-link": "/etc/shadow", "escape": "../../../../../../../../tmp"} {
		if target, err := os.Readlink(filepath.Join(got, link)); err != nil || target != want {
			t.Fatalf("%s: %q %v", link, target, err)
		}
	}
	var sst syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(got, "sparse.bin"), &sst))
	if sst.Blocks*512 > 2<<20 {
		t.Fatalf("sparse.bin takes %d bytes", sst.Blocks*512)
	}
	// the last component is not followed: /conf is restored as the link
	st, err = loopfs.Extract(ctx, m.Dir, "/conf", filepath.Join(dest, "link"), filerestore.ExtractOptions{})
	must(t, err)
	if target, err := os.Readlink(filepath.Join(dest, "link", "conf")); st.Symlinks != 1 || err != nil || target != "/etc/app" {
		t.Fatalf("/conf: %+v %q %v", st, target, err)
	}
	// restoring onto what is there fails, never overwrites; missing paths
	if _, err := loopfs.Extract(ctx, m.Dir, "/etc/app/app.conf", dest, filerestore.ExtractOptions{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("over an existing file: %v", err)
	}
	if _, err := loopfs.Extract(ctx, m.Dir, "/etc/nope", dest, filerestore.ExtractOptions{}); !errors.Is(err, filerestore.ErrNotFound) || err.Error() != "no such file or directory in the backup: /etc/nope" {
		t.Fatalf("missing: %v", err)
	}
	if _, err := loopfs.Extract(ctx, m.Dir, "/etc/app/app.conf/x", dest, filerestore.ExtractOptions{}); err == nil || !strings.Contains(err.Error(), "not a directory in the backup: /etc/app/app.conf") {
		t.Fatalf("file as directory: %v", err)
	}
	// a path through the hostile link stays inside the backup: /tmp is not in it
	if _, err := loopfs.Extract(ctx, m.Dir, "/etc/app/escape/x", dest, filerestore.ExtractOptions{}); !errors.Is(err, filerestore.ErrNotFound) {
		t.Fatalf("through escape: %v", err)
	}
	must(t, m.Close())
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	xfstest.AssertNoLeftovers(t, tmp)
	st2 := d.Stats()
	t.Logf("mounted in %v; one file in %v with %d of %d chunks fetched; all done with %d chunks (%d bytes)",
		mounted.Round(time.Millisecond), one.Round(time.Millisecond), oneChunks, d.Manifest().Chunks, st2.ChunksFetched, st2.BytesFetched)
}

// TestMountAtDirUnmountFromOutside: a loop mount at a given directory,
// read, unmounted the way 'raksha umount' does (busy first), and cleaned up
// by the watcher.
func TestMountAtDirUnmountFromOutside(t *testing.T) {
	xfstest.Need(t)
	tmp := xfstest.PrivateTmp(t)
	img := filepath.Join(t.TempDir(), "xfs.img")
	var sums map[string][32]byte
	xfstest.Image(t, img, xfstest.MinSize, func(dir string) { sums = populate(t, dir) })
	d := backUp(t, img)
	dir := t.TempDir()
	m, err := loopfs.Open(d, d.Size(), "xfs", dir, loopfs.Options{Source: "raksha:test"})
	must(t, err)
	t.Cleanup(func() { _ = m.Close() })
	if sum(t, filepath.Join(dir, "etc/app/big.bin")) != sums["big.bin"] {
		t.Fatal("big.bin differs")
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write: %v", err)
	}
	if _, err := loopfs.Open(d, d.Size(), "xfs", dir, loopfs.Options{}); err == nil || !strings.Contains(err.Error(), "already a mount point (xfs from") {
		t.Fatalf("second mount: %v", err)
	}
	f, err := os.Open(filepath.Join(dir, "etc/app/app.conf"))
	must(t, err)
	if err := mountfs.Unmount(context.Background(), dir, false); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("busy unmount: %v", err)
	}
	if err := m.Unmount(); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("busy Unmount: %v", err)
	}
	f.Close()
	must(t, mountfs.Unmount(context.Background(), dir, false))
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("not cleaned up 10 s after the unmount from outside")
	}
	must(t, m.Err())
	xfstest.AssertNoLeftovers(t, tmp, dir)
	// other mounts are refused
	if err := mountfs.Unmount(context.Background(), "/proc", false); !errors.Is(err, mountfs.ErrNotMounted) {
		t.Fatalf("/proc: %v", err)
	}
}

// TestDirtyLog: a copy of a live XFS file system (its log holds changes not
// written back, and the same file system is still mounted here): the log
// is replayed into the private overlay, the files made just before the
// copy are there, and the backup is not written.
func TestDirtyLog(t *testing.T) {
	xfstest.Need(t)
	tmp := xfstest.PrivateTmp(t)
	img := filepath.Join(t.TempDir(), "dirty.img")
	var sums map[string][32]byte
	xfstest.DirtyImage(t, img, xfstest.MinSize, func(dir string) { sums = populate(t, dir) })
	d := backUp(t, img)
	before := readAll(t, d)
	m, err := loopfs.Open(d, d.Size(), "xfs", "", loopfs.Options{Source: "raksha:dirty"})
	must(t, err)
	t.Cleanup(func() { _ = m.Close() })
	if m.RecoveryErr != nil || m.Options != "ro,nouuid" || m.Replayed == 0 {
		t.Fatalf("options %q, replayed %d, recovery error %v", m.Options, m.Replayed, m.RecoveryErr)
	}
	dest := filepath.Join(t.TempDir(), "out")
	st, err := loopfs.Extract(context.Background(), m.Dir, "/etc/app", dest, filerestore.ExtractOptions{})
	must(t, err)
	for n, s := range sums {
		if sum(t, filepath.Join(dest, "app", n)) != s {
			t.Fatalf("%s differs (%+v)", n, st)
		}
	}
	must(t, m.Close())
	xfstest.AssertNoLeftovers(t, tmp)
	if readAll(t, d) != before {
		t.Fatal("the backup's disk reads differently after the recovery")
	}
	t.Logf("log replay wrote %d KiB into the overlay; %+v", m.Replayed>>10, st)
}

// TestNotMountable: an XFS signature over garbage fails both mounts (with
// and without recovery), clearly, and leaves nothing.
func TestNotMountable(t *testing.T) {
	xfstest.Need(t)
	tmp := xfstest.PrivateTmp(t)
	img := filepath.Join(t.TempDir(), "bad.img")
	b := make([]byte, 8<<20)
	for i := range b {
		b[i] = byte(i * 7)
	}
	copy(b, "XFSB")
	must(t, os.WriteFile(img, b, 0o600))
	d := backUp(t, img)
	_, err := loopfs.Open(d, d.Size(), "xfs", "", loopfs.Options{})
	if err == nil || !strings.Contains(err.Error(), "not a mountable xfs file system, or damaged") || !strings.Contains(err.Error(), "and without log recovery: mount") {
		t.Fatalf("%v", err)
	}
	xfstest.AssertNoLeftovers(t, tmp)
}

func readAll(t *testing.T, d *repo.DiskReader) [32]byte {
	t.Helper()
	h := sha256.New()
	_, err := io.Copy(h, io.NewSectionReader(d, 0, d.Size()))
	must(t, err)
	return [32]byte(h.Sum(nil))
}
