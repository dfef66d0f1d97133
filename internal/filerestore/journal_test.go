package filerestore

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/loopfs/ext4test"
)

// patchSB rewrites the superblock of img with fn.
func patchSB(t *testing.T, img string, fn func(sb []byte)) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	fn(sb)
	if _, err := f.WriteAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
}

// journalSBOffset finds the internal journal's superblock (the jbd2 magic
// at a block boundary) in img.
func journalSBOffset(t *testing.T, img string) int64 {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for off := 4096; off+4 <= len(b); off += 1024 {
		if binary.BigEndian.Uint32(b[off:]) == jbd2Magic && binary.BigEndian.Uint32(b[off+4:]) >= 3 { // a superblock, v1 or v2
			return int64(off)
		}
	}
	t.Fatal("no journal superblock in the image")
	return 0
}

// TestJournalFlags: what the superblock says of the journal, on images
// patched as a crash-consistent backup would have them (no root needed).
func TestJournalFlags(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(filepath.Join(staging, "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(staging, "etc/app.conf"), []byte("v1\n"), 0o644))
	le := binary.LittleEndian

	clean := mkfs(t, staging, "16M", false)
	r, size := openImage(t, clean)
	j, err := ReadJournal(r, size)
	if err != nil || j.Kind != "internal" || j.Inode != 8 || j.RecoverFlag || j.NeedsRecovery || j.Warning() != "" {
		t.Fatalf("clean: %+v %v", j, err)
	}
	st, err := Extract(context.Background(), r, size, "/etc", t.TempDir(), ExtractOptions{})
	if err != nil || st.Journal != "internal" || st.NeedsRecovery || len(st.Warnings) > 0 {
		t.Fatalf("clean extract: %+v %v", st, err)
	}

	// needs_recovery set, journal empty (mounted, nothing committed yet):
	// nothing to replay
	patchSB(t, clean, func(sb []byte) { le.PutUint32(sb[0x60:], le.Uint32(sb[0x60:])|incompatRecover) })
	j, err = ReadJournal(r, size)
	if err != nil || !j.RecoverFlag || j.Start != 0 || j.NeedsRecovery {
		t.Fatalf("flag, empty journal: %+v %v", j, err)
	}

	// and transactions in the journal (s_start != 0)
	jsb := journalSBOffset(t, clean)
	f, err := os.OpenFile(clean, os.O_RDWR, 0)
	must(t, err)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], 1)
	_, err = f.WriteAt(b[:], jsb+0x1C)
	must(t, err)
	must(t, f.Close())
	j, err = ReadJournal(r, size)
	if err != nil || !j.NeedsRecovery || j.Start != 1 || !strings.Contains(j.Warning(), "internal journal was NOT replayed") {
		t.Fatalf("flag, journal with transactions: %+v %v", j, err)
	}
	st, err = Extract(context.Background(), r, size, "/etc/app.conf", t.TempDir(), ExtractOptions{})
	if err != nil || !st.NeedsRecovery || st.Journal != "internal" || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "application-consistent backup") {
		t.Fatalf("extract: %+v %v", st, err)
	}

	// an external journal (no inode; a device and a UUID)
	ext := mkfs(t, staging, "16M", false)
	patchSB(t, ext, func(sb []byte) {
		le.PutUint32(sb[0x60:], le.Uint32(sb[0x60:])|incompatRecover)
		le.PutUint32(sb[sbJournalInum:], 0)
		le.PutUint32(sb[sbJournalDev:], 0x0811) // 8:17
		copy(sb[sbJournalUUID:], "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10")
	})
	r, size = openImage(t, ext)
	j, err = ReadJournal(r, size)
	if err != nil || j.Kind != "external" || !j.NeedsRecovery || j.UUID != "01020304-0506-0708-090a-0b0c0d0e0f10" ||
		!strings.Contains(j.Warning(), "external journal (device 8:17") {
		t.Fatalf("external: %+v %v %s", j, err, j.Warning())
	}
	// ext2: no journal
	ext2 := filepath.Join(t.TempDir(), "ext2.img")
	if out, err := exec.Command("mkfs.ext2", "-q", "-F", "-d", staging, ext2, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext2: %v\n%s", err, out)
	} else {
		r, size = openImage(t, ext2)
		if j, err := ReadJournal(r, size); err != nil || j.Kind != "" || j.NeedsRecovery {
			t.Fatalf("ext2: %+v %v", j, err)
		}
	}
}

// TestJournalNeedsRecoveryRealImage: a copy of a live ext4 taken after an
// fsync: the reader sees the needs_recovery flag and a journal with
// transactions, warns, and (not replaying it) misses the file that exists
// only in the journal.
func TestJournalNeedsRecoveryRealImage(t *testing.T) {
	img := filepath.Join(t.TempDir(), "dirty.img")
	recent := randomBytes(7, 300<<10+5)
	ext4test.DirtyImage(t, img, 64<<20,
		func(dir string) {
			must(t, os.MkdirAll(filepath.Join(dir, "etc/app"), 0o755))
			must(t, os.WriteFile(filepath.Join(dir, "etc/app/app.conf"), []byte("v1\n"), 0o644))
		},
		func(dir string) {
			ext4test.WriteSynced(t, filepath.Join(dir, "etc/app/recent.bin"), recent, 0o600)
		})
	r, size := openImage(t, img)
	j, err := ReadJournal(r, size)
	if err != nil || j.Kind != "internal" || !j.RecoverFlag || j.Start == 0 || !j.NeedsRecovery {
		t.Fatalf("journal: %+v %v", j, err)
	}
	to := t.TempDir()
	st, err := Extract(context.Background(), r, size, "/etc/app", to, ExtractOptions{})
	if err != nil || !st.NeedsRecovery || len(st.Warnings) != 1 || st.Files != 1 {
		t.Fatalf("extract: %+v %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(to, "app/recent.bin")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("recent.bin, which only the journal holds, read without replay: %v", err)
	}
	t.Logf("journal %+v; warning: %s", j, st.Warnings[0])
}
