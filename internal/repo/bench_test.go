package repo

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// BenchmarkBackupRandom measures a full backup of 256 MiB of random data into
// a local repository with default settings (4 MiB chunks, zstd, encryption).
func BenchmarkBackupRandom(b *testing.B) {
	dir := b.TempDir()
	img := filepath.Join(dir, "img")
	im := &image{rng: newImage(&testing.T{}, 1).rng}
	if err := os.WriteFile(img, im.random(256<<20), 0o600); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(256 << 20)
	for b.Loop() {
		be, err := local.Open(filepath.Join(b.TempDir(), "repo"))
		if err != nil {
			b.Fatal(err)
		}
		r, err := Init(context.Background(), be, InitOptions{Password: "pw", KDF: cheapKDF}, Options{Log: quietLog()})
		if err != nil {
			b.Fatal(err)
		}
		src, err := file.Open(img)
		if err != nil {
			b.Fatal(err)
		}
		s, err := r.StartBackup(context.Background(), BackupSpec{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.BackupDisk(context.Background(), "v", "d", src, DiskOptions{}); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Commit(context.Background()); err != nil {
			b.Fatal(err)
		}
		src.Close()
	}
}

// BenchmarkRestore measures restoring 256 MiB (half random, half text) from a
// local repository with default settings into a sparse file.
func BenchmarkRestore(b *testing.B) {
	dir := b.TempDir()
	img := filepath.Join(dir, "img")
	im := &image{rng: newImage(&testing.T{}, 2).rng}
	data := im.random(256 << 20)
	text := []byte("the quick brown fox jumps over the lazy dog, again and again; ")
	for i := 128 << 20; i < len(data); i += len(text) {
		copy(data[i:], text)
	}
	if err := os.WriteFile(img, data, 0o600); err != nil {
		b.Fatal(err)
	}
	be, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := Init(context.Background(), be, InitOptions{Password: "pw", KDF: cheapKDF}, Options{Log: quietLog()})
	if err != nil {
		b.Fatal(err)
	}
	src, err := file.Open(img)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	s, _ := r.StartBackup(context.Background(), BackupSpec{})
	m, err := s.BackupDisk(context.Background(), "v", "d", src, DiskOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Commit(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(256 << 20)
	for b.Loop() {
		f, err := os.Create(filepath.Join(dir, "out"))
		if err != nil {
			b.Fatal(err)
		}
		f.Truncate(m.Size)
		if _, err := r.RestoreDisk(context.Background(), m.ID, f, RestoreOptions{}); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}
