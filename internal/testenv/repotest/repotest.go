// Package repotest makes repositories for the tests of the packages that
// read or write backups: an encrypted repository with a cheap KDF, and a
// file backed up into it as one disk. Every helper fails the test on error.
package repotest

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// Password is the password of the repositories New makes.
const Password = "pw"

// CheapKDF is an argon2id cost for tests only (1 MiB, one pass, one lane):
// opening a repository costs about a millisecond instead of the default's
// tens.
var CheapKDF = repo.KDFParams{Time: 1, Memory: 1024, Threads: 1}

// New initialises an encrypted, zstd-compressed repository on be with the
// given chunk size, Password and CheapKDF, logging nowhere.
func New(t testing.TB, be backend.Backend, chunkSize int) *repo.Repository {
	t.Helper()
	r, err := repo.Init(context.Background(), be,
		repo.InitOptions{ChunkSize: chunkSize, Password: Password, KDF: CheapKDF},
		repo.Options{Log: slog.New(slog.DiscardHandler), KDF: CheapKDF})
	if err != nil {
		t.Fatalf("init test repository: %v", err)
	}
	return r
}

// NewLocal is New on a local repository in dir, or in a directory of the
// test's when dir is "".
func NewLocal(t testing.TB, dir string, chunkSize int) *repo.Repository {
	t.Helper()
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "repo")
	}
	be, err := local.Open(dir)
	if err != nil {
		t.Fatalf("open test repository: %v", err)
	}
	return New(t, be, chunkSize)
}

// BackUpFile backs the file at path up in full as disk of vm, in a backup
// of its own, commits it and returns the disk's manifest.
func BackUpFile(t testing.TB, r *repo.Repository, path, vm, disk string) *repo.DiskManifest {
	t.Helper()
	ctx := context.Background()
	src, err := file.Open(path)
	if err != nil {
		t.Fatalf("back up %s: %v", path, err)
	}
	defer src.Close()
	s, err := r.StartBackup(ctx, repo.BackupSpec{})
	if err != nil {
		t.Fatalf("back up %s: %v", path, err)
	}
	m, err := s.BackupDisk(ctx, vm, disk, src, repo.DiskOptions{})
	if err != nil {
		t.Fatalf("back up %s: %v", path, err)
	}
	if _, err := s.Commit(ctx); err != nil {
		t.Fatalf("back up %s: commit: %v", path, err)
	}
	return m
}
