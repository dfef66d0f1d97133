package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/open"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
)

// smallFS mounts a file system of size bytes and returns its mount point:
// ext4 on a loop device (mkfs.ext4, mount -o loop), else tmpfs; unmounted
// by t.Cleanup. It skips t, loudly, if neither can be mounted (not root, no
// loop devices and no tmpfs).
func smallFS(t *testing.T, size int64) (dir, kind string) {
	t.Helper()
	base := t.TempDir()
	dir = filepath.Join(base, "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(base, "fs.img")
	var errs []string
	run := func(name string, args ...string) error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out))))
		}
		return err
	}
	mounted := false
	if f, err := os.Create(img); err == nil {
		err = f.Truncate(size)
		f.Close()
		if err == nil && run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", img) == nil &&
			run("mount", "-o", "loop", img, dir) == nil {
			mounted, kind = true, "ext4 on a loop device"
		}
	}
	if !mounted && run("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir) == nil {
		mounted, kind = true, "tmpfs"
	}
	if !mounted {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI: cannot mount a small file system (%s)", strings.Join(errs, "; "))
		}
		t.Skipf("SKIPPED, NOT TESTED: cannot mount a small file system (%s)", strings.Join(errs, "; "))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir, kind
}

// freeBytes is the space left for files in the file system of dir.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fill allocates a file in dir so that about leave bytes stay free, and
// returns its path.
func fill(t *testing.T, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := freeBytes(t, dir) - leave
	for n > 0 {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err == nil {
			break
		} else if !errors.Is(err, unix.ENOSPC) {
			t.Fatalf("fallocate %s: %v", path, err)
		}
		n -= 64 << 10
	}
	return path
}

// tempFiles counts the temporary files of the local backend under dir.
func tempFiles(t *testing.T, dir string) (n int) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasPrefix(d.Name(), ".tmp-") {
			n++
			t.Logf("temporary file left: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// noSpace reports whether err says that the file system is full and names path.
func noSpace(err error, path string) bool {
	return err != nil && errors.Is(err, unix.ENOSPC) && strings.Contains(err.Error(), "no space left") &&
		strings.Contains(err.Error(), path)
}

// corruptChunks loads every stored chunk, checking its id, and counts those
// that do not decode.
func corruptChunks(ctx context.Context, t *testing.T, r *Repository) int {
	t.Helper()
	var ids []ChunkID
	err := r.be.List(ctx, "chunks/", func(in backend.Info) error {
		if id, ok := chunkFromName(in.Name); ok {
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for _, id := range ids {
		if _, err := r.loadChunk(ctx, id, true); err != nil {
			t.Errorf("stored chunk %s: %v", id, err)
			bad++
		}
	}
	return bad
}

// TestChaosENOSPC: a local repository on a small file system that fills up,
// and a restore target on one. Each round rewrites part of the disk and
// leaves a random amount of free space smaller than the new data: the backup
// fails with an error naming ENOSPC and the repository, leaves no backup, no
// manifests, no marker, no temporary file and no corrupt chunk, and once the
// space is freed the next backup commits and restores identically. A
// restore onto a target file system with less free space than the disk's
// data fails with an error naming the target and ENOSPC.
func TestChaosENOSPC(t *testing.T) {
	rng := chaos.NewRand(t)
	rounds := chaos.Rounds(t, 2)
	repoFS, kind := smallFS(t, 64<<20)
	ctx := context.Background()
	root := filepath.Join(repoFS, "repo")
	be, err := open.Open(ctx, "file://"+root, open.Options{Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	r := newRepoOn(t, be, InitOptions{ChunkSize: chaosCS, Password: "pw", KDF: cheapKDF})
	im := newChaosImage(t, rng, "")
	first := backupFile(t, r, im.path, nil, DiskOptions{})
	lastDisk := first.disk.ID

	row := chaos.Row{Scenario: "ENOSPC on the local repository", Rounds: rounds,
		Components: "local backend on a small " + kind + " (mounted by the test)"}
	for round := range rounds {
		n := 4 + rng.IntN(12)
		im.change(rng, n)
		want := fileHash(t, im.path)
		leave := rng.Int64N(int64(n) * chaosCS)
		filler := fill(t, repoFS, leave)

		id := NewBackupID(time.Now())
		s, err := r.StartBackup(ctx, BackupSpec{ID: id})
		if err == nil {
			src, ferr := openFile(im.path)
			if ferr != nil {
				t.Fatal(ferr)
			}
			_, err = s.BackupDisk(ctx, "vm", "disk", src, DiskOptions{Base: lastDisk})
			src.Close()
			if err == nil {
				_, err = s.Commit(ctx)
			}
		}
		t.Logf("round %d: %d chunks changed, %d bytes left free: %v", round, n, leave, err)
		clean := true
		if err == nil {
			row.Completed++
			lastDisk = id + "/vm/disk"
		} else {
			if !noSpace(err, root) {
				t.Errorf("round %d: backup on a full file system: %v; want an error naming ENOSPC and %s", round, err, root)
				clean = false
			}
			if s != nil {
				if aerr := s.Abort(ctx); aerr != nil { // on the still full file system
					t.Errorf("round %d: abort on the full file system: %v", round, aerr)
					clean = false
				}
			}
			if n, what := leftovers(ctx, t, r, id); n > 0 {
				t.Errorf("round %d: the failed backup left %v", round, what)
				row.Orphans += n
				clean = false
			}
			bs, lerr := r.ListBackups(ctx, Filter{})
			if lerr != nil || slices.ContainsFunc(bs, func(b *Backup) bool { return b.ID == id }) {
				t.Errorf("round %d: failed backup %s listed (%v)", round, id, lerr)
				row.WronglyGood++
				clean = false
			}
		}
		if n := tempFiles(t, root); n > 0 {
			row.Orphans += n
			clean = false
		}
		if bad := corruptChunks(ctx, t, r); bad > 0 {
			row.Orphans += bad
			clean = false
		}
		if rep, cerr := r.Check(ctx); cerr != nil {
			t.Errorf("round %d: check: %v (%v)", round, cerr, rep)
			clean = false
		}
		if err != nil && clean {
			row.FailedCleanly++
		}

		// Space freed: gc and the next backup work.
		t0 := time.Now()
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		if _, gerr := r.GC(ctx, GCOptions{}); gerr != nil {
			t.Errorf("round %d: gc after space was freed: %v", round, gerr)
		}
		if err != nil {
			res := backupFile(t, r, im.path, nil, DiskOptions{Base: lastDisk})
			lastDisk = res.disk.ID
		}
		if got, rerr := restoreTo(ctx, r, lastDisk, t.TempDir()); rerr != nil || got != want {
			t.Errorf("round %d: backup after space was freed does not restore identically: %v", round, rerr)
			row.BytesLost += im.size
		}
		row.Recover = max(row.Recover, time.Since(t0))
	}
	row.Notes = ("free space left per round: random, below the round's new data (1-4 MiB); failed backups aborted on the still full file system; every stored chunk re-read and hashed; recovery = space freed to gc done and the next backup committed and restored")
	chaos.Record(t, row)

	// A restore onto a full target.
	target, tkind := smallFS(t, 8<<20)
	m, err := r.LoadManifest(ctx, lastDisk)
	if err != nil {
		t.Fatal(err)
	}
	trow := chaos.Row{Scenario: "ENOSPC on a restore target", Rounds: rounds,
		Components: "restore through DirectWriter onto a small " + tkind + " (mounted by the test)"}
	for round := range rounds {
		leave := rng.Int64N(3 << 20) // the disk holds over 3 MiB of data
		filler := fill(t, target, leave)
		path := filepath.Join(target, "restored.img")
		t0 := time.Now()
		err := restoreOnto(ctx, r, m, path)
		took := time.Since(t0)
		t.Logf("round %d: restore with %d bytes free after %v: %v", round, leave, took.Round(time.Millisecond), err)
		switch {
		case err == nil:
			// It fit after all: then it must be identical.
			if got, herr := fileHashErr(path); herr != nil || got != fileHash(t, im.path) {
				t.Errorf("round %d: restore onto the nearly full target reported success with wrong bytes", round)
				trow.BytesLost += m.Size
			} else {
				trow.Completed++
			}
		case noSpace(err, path):
			trow.FailedCleanly++
		default:
			t.Errorf("round %d: restore onto a full target: %v; want an error naming ENOSPC and %s", round, err, path)
		}
		_ = os.Remove(path)
		t0 = time.Now()
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		// Space freed: the same restore completes identically.
		if err := restoreOnto(ctx, r, m, path); err != nil {
			t.Errorf("round %d: restore after space was freed: %v", round, err)
		} else if got, herr := fileHashErr(path); herr != nil || got != fileHash(t, im.path) {
			t.Errorf("round %d: restore after space was freed differs", round)
			trow.BytesLost += m.Size
		}
		trow.Recover = max(trow.Recover, time.Since(t0))
		_ = os.Remove(path)
	}
	trow.Notes = "free space left per round: random, below the disk's data; recovery = space freed to the same restore completed identically"
	chaos.Record(t, trow)
}

// restoreOnto restores m into a new file at path as the CLI does (sized,
// written through a DirectWriter, closed), returning the first error.
func restoreOnto(ctx context.Context, r *Repository, m *DiskManifest, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(m.Size); err != nil {
		f.Close()
		return err
	}
	dw := NewDirectWriter(f)
	_, err = r.RestoreDisk(ctx, m.ID, dw, RestoreOptions{})
	if cerr := dw.Close(); err == nil {
		err = cerr
	}
	if serr := f.Sync(); err == nil && serr != nil {
		err = fmt.Errorf("restore target %s: %w", path, serr)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
