package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

const testCS = 64 << 10 // chunk size used by tests

var cheapKDF = KDFParams{Time: 1, Memory: 1024, Threads: 1}

func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testOptions() Options {
	return Options{Workers: 3, Transfers: 4, Log: quietLog(), KDF: cheapKDF}
}

// newLocalRepo makes an encrypted, compressed repository in a temp dir.
func newLocalRepo(t *testing.T) (*Repository, string) {
	t.Helper()
	dir := t.TempDir()
	be, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return newRepoOn(t, be, InitOptions{ChunkSize: testCS, Password: "secret", KDF: cheapKDF}), dir
}

func newRepoOn(t *testing.T, be backend.Backend, io InitOptions) *Repository {
	t.Helper()
	r, err := Init(context.Background(), be, io, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// image builds test disk images with a seeded generator.
type image struct {
	t    *testing.T
	path string
	rng  *rand.Rand
}

func newImage(t *testing.T, seed uint64) *image {
	return &image{t: t, path: filepath.Join(t.TempDir(), "disk.img"), rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (im *image) random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := im.rng.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(im.rng.Uint32())
	}
	return b
}

// create makes a sparse file of size bytes with the given data at offsets.
func (im *image) create(size int64, writes map[int64][]byte) {
	im.t.Helper()
	f, err := os.Create(im.path)
	if err != nil {
		im.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		im.t.Fatal(err)
	}
	for off, data := range writes {
		if _, err := f.WriteAt(data, off); err != nil {
			im.t.Fatal(err)
		}
	}
}

func (im *image) write(off int64, data []byte) {
	im.t.Helper()
	f, err := os.OpenFile(im.path, os.O_WRONLY, 0)
	if err != nil {
		im.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		im.t.Fatal(err)
	}
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// countingSource counts bytes read from a source.
type countingSource struct {
	disk.Source
	read int64
}

func (c *countingSource) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.Source.ReadAt(p, off)
	// ReadAt runs concurrently; count under the race-free atomic below.
	addInt64(&c.read, int64(n))
	return n, err
}

type backupResult struct {
	backup *Backup
	disk   *DiskManifest
	read   int64 // bytes the source saw read
}

// backupFile backs up path as vm/disk "local"/"disk" with opts.
func backupFile(t *testing.T, r *Repository, path string, labels map[string]string, o DiskOptions) backupResult {
	t.Helper()
	ctx := context.Background()
	src, err := file.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cnt := &countingSource{Source: src}
	s, err := r.StartBackup(ctx, BackupSpec{Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.BackupDisk(ctx, "local", "disk", cnt, o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return backupResult{backup: b, disk: m, read: cnt.read}
}

// restoreFile restores a disk manifest to a new sparse file and returns its path.
func restoreFile(t *testing.T, r *Repository, diskID string) string {
	t.Helper()
	m, err := r.LoadManifest(context.Background(), diskID)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "restored.img")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(m.Size); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RestoreDisk(context.Background(), diskID, f, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	return out
}

// snapshotObjects returns name → sha256 of every object in be.
func snapshotObjects(t *testing.T, be backend.Backend) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := be.List(context.Background(), "", func(in backend.Info) error {
		data, err := be.Load(context.Background(), in.Name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		out[in.Name] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func countObjects(t *testing.T, be backend.Backend, prefix string) int {
	t.Helper()
	n := 0
	if err := be.List(context.Background(), prefix, func(backend.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func openFile(path string) (*file.Source, error) { return file.Open(path) }

func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	src, err := file.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	exts, known, err := src.Allocated()
	if err != nil || !known {
		t.Fatalf("allocated ranges of %s: known %v, %v", path, known, err)
	}
	var n int64
	for _, e := range exts {
		n += e.Length
	}
	return n
}
