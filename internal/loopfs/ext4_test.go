package loopfs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/loopfs/ext4test"
	"github.com/raksha-backup/raksha/internal/loopfs/xfstest"
)

// dirtyExt4 makes a crash-consistent ext4 image: etc/app/app.conf "v1"
// written back in place, then rewritten as "v2", and recent.bin written,
// both fsynced into the journal only. It returns the image and recent.bin's
// contents.
func dirtyExt4(t *testing.T) (string, []byte) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "dirty-ext4.img")
	recent := bytes.Repeat([]byte("journal only\n"), 50000)
	ext4test.DirtyImage(t, img, 64<<20,
		func(dir string) {
			must(t, os.MkdirAll(filepath.Join(dir, "etc/app"), 0o755))
			must(t, os.WriteFile(filepath.Join(dir, "etc/app/app.conf"), []byte("v1\n"), 0o644))
		},
		func(dir string) {
			ext4test.WriteSynced(t, filepath.Join(dir, "etc/app/app.conf"), []byte("v2, after the last checkpoint\n"), 0o644)
			ext4test.WriteSynced(t, filepath.Join(dir, "etc/app/recent.bin"), recent, 0o600)
		})
	return img, recent
}

// TestExt4JournalReplay: a backed-up copy of a live ext4 whose journal
// holds the last writes: the kernel replays it into the private overlay
// (mounted "ro,errors=remount-ro", not noload), the files written just before the copy are
// there with their bytes, the backup reads the same afterwards, and
// nothing is left.
func TestExt4JournalReplay(t *testing.T) {
	ext4test.Need(t)
	tmp := xfstest.PrivateTmp(t)
	img, recent := dirtyExt4(t)
	d := backUp(t, img)
	j, err := filerestore.ReadJournal(d, d.Size())
	if err != nil || !j.NeedsRecovery || j.Kind != "internal" {
		t.Fatalf("journal: %+v %v", j, err)
	}
	before := readAll(t, d)
	must(t, loopfs.Check("ext4"))
	m, err := loopfs.Open(d, d.Size(), "ext4", "", loopfs.Options{Source: "raksha:dirty-ext4"})
	must(t, err)
	t.Cleanup(func() { _ = m.Close() })
	if m.RecoveryErr != nil || m.Options != "ro,errors=remount-ro" || m.Replayed == 0 {
		t.Fatalf("options %q, replayed %d, recovery error %v", m.Options, m.Replayed, m.RecoveryErr)
	}
	dest := filepath.Join(t.TempDir(), "out")
	st, err := loopfs.Extract(context.Background(), m.Dir, "/etc/app", dest, filerestore.ExtractOptions{})
	must(t, err)
	if got, err := os.ReadFile(filepath.Join(dest, "app/recent.bin")); err != nil || !bytes.Equal(got, recent) {
		t.Fatalf("recent.bin after replay: %d bytes, %v (%+v)", len(got), err, st)
	}
	if got, err := os.ReadFile(filepath.Join(dest, "app/app.conf")); err != nil || string(got) != "v2, after the last checkpoint\n" {
		t.Fatalf("app.conf after replay: %q %v", got, err)
	}
	must(t, m.Close())
	xfstest.AssertNoLeftovers(t, tmp)
	if readAll(t, d) != before {
		t.Fatal("the backup's disk reads differently after the replay")
	}
	// the Go reader, which does not replay, misses recent.bin and warns
	st, err = filerestore.Extract(context.Background(), d, d.Size(), "/etc/app", filepath.Join(t.TempDir(), "go"), filerestore.ExtractOptions{})
	must(t, err)
	if !st.NeedsRecovery || len(st.Warnings) != 1 || st.Files != 1 {
		t.Fatalf("Go reader: %+v", st)
	}
	t.Logf("journal replay wrote %d KiB into the overlay; journal %+v", m.Replayed>>10, j)
}

// TestExt4ReplayFailsNoload: a journal the kernel refuses to replay (its
// superblock checksum broken): the file system is mounted with noload on a
// read-only device, RecoveryErr says why, the files are read as the main
// area holds them, and nothing is left.
func TestExt4ReplayFailsNoload(t *testing.T) {
	ext4test.Need(t)
	tmp := xfstest.PrivateTmp(t)
	img, _ := dirtyExt4(t)
	ext4test.BreakJournalChecksum(t, img)
	d := backUp(t, img)
	m, err := loopfs.Open(d, d.Size(), "ext4", "", loopfs.Options{Source: "raksha:bad-journal"})
	must(t, err)
	t.Cleanup(func() { _ = m.Close() })
	if m.RecoveryErr == nil || m.Options != "ro,noload,errors=remount-ro" || m.Replayed != 0 {
		t.Fatalf("options %q, replayed %d, recovery error %v", m.Options, m.Replayed, m.RecoveryErr)
	}
	dest := filepath.Join(t.TempDir(), "out")
	st, err := loopfs.Extract(context.Background(), m.Dir, "/etc/app", dest, filerestore.ExtractOptions{})
	must(t, err)
	if _, err := os.Stat(filepath.Join(dest, "app/recent.bin")); err == nil || st.Files != 1 {
		t.Fatalf("without replay: %+v %v", st, err)
	}
	must(t, m.Close())
	xfstest.AssertNoLeftovers(t, tmp)
	t.Logf("recovery error: %v", m.RecoveryErr)
}
