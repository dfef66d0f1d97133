// Package ext4test makes real ext4 images for tests, among them what a
// crash-consistent backup of a live ext4 file system holds: a journal that
// needs recovery, with files that exist only in its transactions. Where
// that cannot work (no e2fsprogs, not root, no loop devices, no ext4 in the
// kernel) tests fail under CI (env CI set) and are skipped loudly
// elsewhere.
package ext4test

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Need fails under CI and skips loudly elsewhere unless ext4 images can be
// made and loop-mounted here.
func Need(t testing.TB) {
	t.Helper()
	var missing []string
	for tool, pkg := range map[string]string{"mkfs.ext4": "e2fsprogs", "dumpe2fs": "e2fsprogs", "mount": "mount", "umount": "mount", "losetup": "mount", "cp": "coreutils"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" (Debian package "+pkg+")")
		}
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root (loop mounts need CAP_SYS_ADMIN)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		missing = append(missing, "the loop driver (/dev/loop-control)")
	}
	if b, err := os.ReadFile("/proc/filesystems"); err != nil || !regexp.MustCompile(`(?m)\sext4$`).Match(b) {
		missing = append(missing, "ext4 in the kernel (/proc/filesystems)")
	}
	if len(missing) == 0 {
		return
	}
	msg := "ext4 loop mounts cannot work here: " + strings.Join(missing, "; ") + " (make test-deps installs e2fsprogs; run as root with loop devices)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED: " + msg)
}

// WriteSynced writes data to the file p (created or truncated, mode perm)
// and fsyncs it and its directory: on ext4 (data=ordered) the data reaches
// its blocks and the metadata a committed journal transaction, but not yet
// the inode tables and directory blocks of the main area.
func WriteSynced(t testing.TB, p string, data []byte, perm os.FileMode) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(filepath.Dir(p))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
}

// DirtyImage makes in img what a crash-consistent backup of a live ext4
// file system of size bytes holds. An ext4 file system (4 KiB blocks,
// label "data") is made in a file of the test's and loop-mounted with
// commit=600 (no periodic commit); base fills it, and syncfs writes all of
// that to the main area; then recent writes more, syncing files with
// WriteSynced (fsync commits to the journal, which is not checkpointed).
// The file is copied to img while still mounted, then unmounted. The copy
// is checked with dumpe2fs: needs_recovery set and a journal that is not
// empty, so what recent wrote lives in the journal only.
func DirtyImage(t testing.TB, img string, size int64, base, recent func(dir string)) {
	t.Helper()
	Need(t)
	live := filepath.Join(t.TempDir(), "live.img")
	if err := os.WriteFile(live, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(live, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "data", live).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "loop,commit=600", live, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop %s: %v\n%s", live, err, out)
	}
	mounted := true
	unmount := func() {
		if mounted {
			mounted = false
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v\n%s", dir, err, out)
			}
		}
	}
	defer unmount()
	if base != nil {
		base(dir)
	}
	// syncfs: base's metadata committed and written back in place
	if out, err := exec.Command("sync", "-f", dir).CombinedOutput(); err != nil {
		t.Fatalf("sync -f: %v\n%s", err, out)
	}
	recent(dir)
	// the copy: what a snapshot of the running guest's disk holds
	if out, err := exec.Command("cp", "--sparse=always", live, img).CombinedOutput(); err != nil {
		t.Fatalf("copy the live image: %v\n%s", err, out)
	}
	unmount()
	out, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v\n%s", img, err, out)
	}
	if !regexp.MustCompile(`(?m)^Filesystem features:.*\bneeds_recovery\b`).Match(out) {
		t.Fatalf("the copy of a mounted ext4 has no needs_recovery flag:\n%s", out)
	}
	if m := regexp.MustCompile(`(?m)^Journal start:\s+(\d+)`).FindSubmatch(out); m == nil || bytes.Equal(m[1], []byte("0")) {
		t.Fatalf("the copy of a mounted ext4 has an empty journal (its writes were checkpointed before the copy):\n%s", out)
	}
}

// BreakJournalChecksum flips a byte of the internal journal's superblock
// checksum in the ext4 image img (made by DirtyImage: metadata_csum), so
// that the kernel refuses to load, and so to replay, the journal.
func BreakJournalChecksum(t testing.TB, img string) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 12)
	for off := int64(4096); ; off += 4096 {
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatalf("no journal superblock in %s: %v", img, err)
		}
		// the jbd2 magic and block type 3 or 4: a journal superblock
		if typ := binary.BigEndian.Uint32(b[4:]); binary.BigEndian.Uint32(b) == 0xC03B3998 && (typ == 3 || typ == 4) {
			c := make([]byte, 1)
			if _, err := f.ReadAt(c, off+0xFC); err != nil { // s_checksum
				t.Fatal(err)
			}
			c[0] ^= 0xFF
			if _, err := f.WriteAt(c, off+0xFC); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}
