package target_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/internal/repo/backend/mem"
	"github.com/raksha-backup/raksha/internal/target"
)

func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-nbd", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s not found (Debian package qemu-utils; run `make test-deps`)", tool)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip("SKIPPED: " + msg)
		}
	}
}

func run(t testing.TB, name string, args ...string) []byte {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		if t == nil {
			panic(fmt.Sprintf("%s %v: %v", name, args, err))
		}
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

// rawHash converts img to raw with qemu-img and hashes it.
func rawHash(t *testing.T, img string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	run(t, "qemu-img", "convert", "-O", "raw", img, raw)
	data, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(data))
}

// allocated is the number of data bytes qemu-img map reports.
func allocated(t *testing.T, img string) int64 {
	t.Helper()
	var m []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Zero   bool  `json:"zero"`
	}
	if err := json.Unmarshal(run(t, "qemu-img", "map", "--output=json", img), &m); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range m {
		if e.Data && !e.Zero {
			n += e.Length
		}
	}
	return n
}

// TestRestoreIntoUsedQcow2 restores a backup into a qcow2 image that holds
// other data (a formatted volume, or the volume rolled back in place): the
// image must read exactly as the backup, and the backup's zero ranges must
// be unallocated clusters, not written bytes.
func TestRestoreIntoUsedQcow2(t *testing.T) {
	requireTools(t)
	ctx := context.Background()
	dir := t.TempDir()
	const size = 64 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, size)
	for _, r := range [][2]int{{0, 1 << 20}, {5<<20 + 512, 3 << 20}, {40 << 20, 4096}, {size - 8192, 8192}} {
		for i := r[0]; i < r[0]+r[1]; i++ {
			src[i] = byte(rng.Uint32())
		}
	}
	srcPath := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(srcPath, src, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(ctx, mem.New(), repo.InitOptions{Password: "pw", ChunkSize: 1 << 20}, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.StartBackup(ctx, repo.BackupSpec{})
	if err != nil {
		t.Fatal(err)
	}
	fs, err := file.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.BackupDisk(ctx, "vm", "disk", fs, repo.DiskOptions{})
	fs.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// The target: a qcow2 image full of other bytes.
	img := filepath.Join(dir, "vol.qcow2")
	junk := bytes.Repeat([]byte("junk"), size/4)
	junkPath := filepath.Join(dir, "junk.raw")
	os.WriteFile(junkPath, junk, 0o644)
	run(t, "qemu-img", "convert", "-O", "qcow2", junkPath, img)

	im, err := target.OpenImage(ctx, img, target.ImageOptions{Conns: benchConns()})
	if err != nil {
		t.Fatal(err)
	}
	if im.Size() != size {
		t.Fatalf("image size %d, want %d", im.Size(), size)
	}
	// While qemu-nbd holds the image, a second writer is refused by type.
	if _, err := target.OpenImage(ctx, img, target.ImageOptions{}); !errors.Is(err, target.ErrInUse) {
		t.Errorf("second open of an image in use: %v, want ErrInUse", err)
	}
	st, err := r.RestoreDisk(ctx, m.ID, im, repo.RestoreOptions{ZeroHoles: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := rawHash(t, img), fmt.Sprintf("%x", sha256.Sum256(src)); got != want {
		t.Fatalf("restored image hash %s, want %s", got, want)
	}
	// Data: 1 + 3(+1 partial) + 1 + 1 chunks of 1 MiB hold non-zero bytes;
	// within them, only 64 KiB blocks with data are allocated.
	if a := allocated(t, img); a > 5<<20 || a < 4<<20 {
		t.Errorf("allocated %d bytes after the restore, want 4-5 MiB (zero ranges unallocated)", a)
	}
	t.Logf("restored %d MiB (fetched %d MiB, %d holes) into a used qcow2; %d KiB allocated", st.BytesWritten>>20, st.BytesFetched>>20, st.Holes, allocated(t, img)>>10)
}

func TestOpenImageErrors(t *testing.T) {
	requireTools(t)
	ctx := context.Background()
	if _, err := target.OpenImage(ctx, filepath.Join(t.TempDir(), "missing.qcow2"), target.ImageOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing image: %v", err)
	}
	p := filepath.Join(t.TempDir(), "x.img")
	os.WriteFile(p, make([]byte, 1<<20), 0o644)
	if _, err := target.OpenImage(ctx, p, target.ImageOptions{Format: "vmdk"}); err == nil || !bytes.Contains([]byte(err.Error()), []byte(`unsupported format "vmdk"`)) {
		t.Errorf("bad format: %v", err)
	}
	im, err := target.OpenImage(ctx, p, target.ImageOptions{Conns: benchConns()})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if _, err := im.WriteAt([]byte("x"), 1<<20); err == nil {
		t.Error("a write past the end succeeded")
	}
}

// BenchmarkRestoreIntoQcow2 restores a 256 MiB disk (3/4 data, 1/4 zeros)
// from a local repository into a fresh qcow2 image through qemu-nbd, and
// into a raw sparse file for comparison; MB/s is of disk size.
func BenchmarkRestoreIntoQcow2(b *testing.B) {
	for _, tool := range []string{"qemu-nbd", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skip("SKIPPED: " + tool + " not found (Debian package qemu-utils)")
		}
	}
	ctx := context.Background()
	dir := b.TempDir()
	const size = 256 << 20
	src := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < size*3/4; i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			src[i+k] = byte(v >> (8 * k))
		}
	}
	srcPath := filepath.Join(dir, "src.raw")
	os.WriteFile(srcPath, src, 0o644)
	be, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := repo.Init(ctx, be, repo.InitOptions{Password: "pw"}, repo.Options{})
	if err != nil {
		b.Fatal(err)
	}
	s, _ := r.StartBackup(ctx, repo.BackupSpec{})
	fs, _ := file.Open(srcPath)
	m, err := s.BackupDisk(ctx, "vm", "disk", fs, repo.DiskOptions{})
	fs.Close()
	if err != nil {
		b.Fatal(err)
	}
	s.Commit(ctx)
	b.Run("qcow2-qemu-nbd", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			img := filepath.Join(dir, "vol.qcow2")
			os.Remove(img)
			run(nil, "qemu-img", "create", "-q", "-f", "qcow2", img, "256M")
			im, err := target.OpenImage(ctx, img, target.ImageOptions{Conns: benchConns()})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := r.RestoreDisk(ctx, m.ID, im, repo.RestoreOptions{ZeroHoles: true}); err != nil {
				b.Fatal(err)
			}
			if err := im.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-file", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			p := filepath.Join(dir, "vol.raw")
			os.Remove(p)
			f, _ := os.Create(p)
			f.Truncate(size)
			if _, err := r.RestoreDisk(ctx, m.ID, f, repo.RestoreOptions{}); err != nil {
				b.Fatal(err)
			}
			f.Sync()
			f.Close()
		}
	})
}

// benchConns is BENCH_NBD_CONNS (0: the default), to compare connection counts.
func benchConns() int {
	n, _ := strconv.Atoi(os.Getenv("BENCH_NBD_CONNS"))
	return n
}
