// Package xfstest makes real XFS images for tests: mkfs.xfs, populated
// through a loop mount. Where that cannot work (no xfsprogs, not root, no
// loop devices, no XFS in the kernel, no FUSE) tests fail under CI (env CI
// set) and are skipped loudly elsewhere.
package xfstest

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/mountfs"
)

// MinSize is the smallest file system mkfs.xfs makes (xfsprogs 5.19 on).
const MinSize = 300 << 20

// Need fails under CI and skips loudly elsewhere unless XFS images can be
// made and loop-mounted here.
func Need(t testing.TB) {
	t.Helper()
	var missing []string
	for tool, pkg := range map[string]string{"mkfs.xfs": "xfsprogs", "mount": "mount", "umount": "mount", "losetup": "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" (Debian package "+pkg+")")
		}
	}
	if err := loopfs.Check("xfs"); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) == 0 {
		return
	}
	msg := "XFS loop mounts cannot work here: " + strings.Join(missing, "; ") + " (make test-deps installs xfsprogs; run as root with loop devices)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED: " + msg)
}

// Image makes an XFS file system of size bytes (at least MinSize) in the
// file img (created or truncated) and calls populate with it mounted
// read-write, then unmounts it.
func Image(t testing.TB, img string, size int64, populate func(dir string)) {
	t.Helper()
	Need(t)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-f", "-L", "data", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "xfs", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop %s: %v\n%s", img, err, out)
	}
	mounted := true
	defer func() {
		if mounted {
			_ = exec.Command("umount", dir).Run()
		}
	}()
	populate(dir)
	if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v\n%s", dir, err, out)
	}
	mounted = false
}

// DirtyImage makes what a crash-consistent backup of a live XFS file
// system holds: an XFS file system is made in a file of the test's, mounted,
// populated and synced, and copied to img while still mounted, so that
// img's log holds changes not yet written back. The file system stays
// mounted (same UUID as img's) until the test ends.
func DirtyImage(t testing.TB, img string, size int64, populate func(dir string)) {
	t.Helper()
	Need(t)
	live := filepath.Join(t.TempDir(), "live.img")
	if err := os.WriteFile(live, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(live, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-f", "-L", "live", live).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "xfs", "-o", "loop", live, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop %s: %v\n%s", live, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	populate(dir)
	if out, err := exec.Command("sync", "-f", dir).CombinedOutput(); err != nil {
		t.Fatalf("sync: %v\n%s", err, out)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	CopyInto(t, img, 0, live)
}

// CopyInto writes the file src into dst at offset off, leaving src's holes
// as holes (dst must be at least off+size(src) bytes).
func CopyInto(t testing.TB, dst string, off int64, src string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	fi, err := in.Stat()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for pos := int64(0); pos < fi.Size(); {
		d, err := in.Seek(pos, 3) // SEEK_DATA
		if err != nil {
			break // no data after pos
		}
		h, err := in.Seek(d, 4) // SEEK_HOLE
		if err != nil {
			h = fi.Size()
		}
		for p := d; p < h; {
			n, err := in.ReadAt(buf[:min(int64(len(buf)), h-p)], p)
			if n > 0 {
				if _, err := out.WriteAt(buf[:n], off+p); err != nil {
					t.Fatal(err)
				}
				p += int64(n)
			}
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
		pos = h
	}
}

// PrivateTmp points os.TempDir at a directory of the test's (TMPDIR), so
// that AssertNoLeftovers finds what its loop mounts leave there, and
// returns it.
func PrivateTmp(t testing.TB) string {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	return tmp
}

// DetachWait bounds how long AssertNoLeftovers waits for what a test
// unmounted to go: an autoclear loop device detaches a moment after the
// last unmount of its file system, not during it.
const DetachWait = 10 * time.Second

// AssertNoLeftovers fails the test if anything of a loop mount remains
// under any of dirs (Leftovers) after waiting up to DetachWait for it to
// go, or a private raksha-loop-* directory in os.TempDir. Only what lies
// under dirs counts: other tests' loop devices and mounts, in this package
// or in another test binary running beside it, are not this test's.
func AssertNoLeftovers(t testing.TB, dirs ...string) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(DetachWait); ; time.Sleep(50 * time.Millisecond) {
		left = left[:0]
		for _, d := range dirs {
			left = append(left, Leftovers(t, d)...)
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Fatalf("left behind (still there after %v):\n%s", DetachWait, strings.Join(left, "\n"))
	}
	if ents, _ := filepath.Glob(filepath.Join(os.TempDir(), "raksha-loop-*")); len(ents) > 0 {
		t.Fatalf("private directories left: %v", ents)
	}
}

// Leftovers lists what remains of loop mounts under dir, now: mounts
// (/proc/self/mountinfo) whose mount point or source lies under dir, and
// attached loop devices whose backing file lies under dir (read from
// sysfs, which holds the whole path; losetup's listing may cut it).
func Leftovers(t testing.TB, dir string) []string {
	t.Helper()
	roots := []string{filepath.Clean(dir)}
	if real, err := filepath.EvalSymlinks(dir); err == nil && real != roots[0] {
		roots = append(roots, real)
	}
	under := func(p string) bool {
		for _, r := range roots {
			if p == r || strings.HasPrefix(p, r+string(filepath.Separator)) {
				return true
			}
		}
		return false
	}
	var left []string
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+2 >= len(f) {
			continue
		}
		if under(mountfs.Unescape(f[4])) || under(mountfs.Unescape(f[sep+2])) {
			left = append(left, "mount: "+line)
		}
	}
	devs, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		t.Fatal(err)
	}
	for _, bf := range devs {
		b, err := os.ReadFile(bf)
		if err != nil {
			continue // detached since the glob
		}
		backing := strings.TrimSuffix(strings.TrimRight(string(b), "\n"), " (deleted)")
		if under(backing) {
			dev := filepath.Base(filepath.Dir(filepath.Dir(bf)))
			left = append(left, "loop device: /dev/"+dev+": "+backing)
		}
	}
	return left
}
