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
