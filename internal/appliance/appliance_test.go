package appliance

import (
	"context"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs/ext4test"
	"github.com/raksha-backup/raksha/internal/loopfs/xfstest"
)

// needImage builds the appliance once per test binary (cached on disk by
// the script) or fails under CI and skips loudly elsewhere when QEMU or
// the build's inputs are missing.
var imageOnce = sync.OnceValues(func() (Image, error) {
	if err := Check(); err != nil {
		return Image{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	return BuildImage(ctx, BuildOptions{})
})

func needImage(t *testing.T) Image {
	t.Helper()
	img, err := imageOnce()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip("SKIPPED: the appliance cannot run here: " + err.Error())
	}
	return img
}

// tree is what the test file systems hold: etc/app/{app.conf, big.bin,
// suid (setuid), hard1 and hard2 (one file), link -> app.conf, fifo,
// sub/deep.txt}.
func tree(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	app := filepath.Join(dir, "etc/app")
	if err := os.MkdirAll(filepath.Join(app, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3<<20+11)
	for i := range big {
		big[i] = byte(i*131>>7) ^ byte(i>>13)
	}
	files := map[string][]byte{"app.conf": []byte("port = 8080\n"), "big.bin": big, "suid": []byte("#!/bin/sh\nid\n"), "hard1": []byte("one file, two names\n"), "sub/deep.txt": []byte("deep\n")}
	sums := map[string][32]byte{}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(app, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[n] = sha256.Sum256(b)
	}
	sums["hard2"] = sums["hard1"]
	if err := os.Chmod(filepath.Join(app, "suid"), fs.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(app, "hard1"), filepath.Join(app, "hard2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("app.conf", filepath.Join(app, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(app, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	return sums
}

// checkTree checks what an extraction of /etc/app wrote under to.
func checkTree(t *testing.T, to string, sums map[string][32]byte, st filerestore.Stats) {
	t.Helper()
	for n, want := range sums {
		b, err := os.ReadFile(filepath.Join(to, "app", n))
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != want {
			t.Errorf("%s: SHA-256 differs from what was written", n)
		}
	}
	fi, err := os.Stat(filepath.Join(to, "app/suid"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSetuid != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("suid: mode %v, want 0755 without setuid", fi.Mode())
	}
	a, _ := os.Stat(filepath.Join(to, "app/hard1"))
	b, _ := os.Stat(filepath.Join(to, "app/hard2"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Errorf("hard1 and hard2 are not one file in the target")
	}
	if l, err := os.Readlink(filepath.Join(to, "app/link")); err != nil || l != "app.conf" {
		t.Errorf("link: %q, %v", l, err)
	}
	if _, err := os.Lstat(filepath.Join(to, "app/fifo")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("fifo restored: %v", err)
	}
	if st.Files != 5 || st.Hardlinks != 1 || st.Symlinks != 1 || st.Dirs != 2 || st.SpecialBitsStripped != 1 {
		t.Errorf("stats %+v", st)
	}
	if len(st.Skipped) != 1 || !strings.Contains(st.Skipped[0], "fifo") {
		t.Errorf("skipped %q, want the FIFO", st.Skipped)
	}
}

// noLeftovers checks that the appliance's private directories are gone
// from TMPDIR.
func noLeftovers(t *testing.T, tmp string) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(tmp, "raksha-appliance-*"))
	if len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func privateTmp(t *testing.T) string {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	return tmp
}

// TestXFS restores a tree out of a dirty XFS image (a copy of a mounted
// one: its log needs recovery) through the appliance, then checks that the
// budget stops it, that a missing path is named, and that nothing is left.
func TestXFS(t *testing.T) {
	img := needImage(t)
	xfstest.Need(t)
	diskImg := filepath.Join(t.TempDir(), "xfs.img")
	var sums map[string][32]byte
	xfstest.DirtyImage(t, diskImg, xfstest.MinSize, func(dir string) { sums = tree(t, dir) })
	before := fileSum(t, diskImg)
	tmp := privateTmp(t)
	ctx := context.Background()

	to := filepath.Join(t.TempDir(), "out")
	var con strings.Builder
	res, err := Extract(ctx, img, diskImg, "xfs", "/etc/app", to, Options{Console: &con})
	t.Logf("console:\n%s", con.String())
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, to, sums, res.Stats)
	t.Logf("accel %s, boot %v, total %v, QEMU peak RSS %d MiB, options %s, replayed %d bytes",
		res.Accel, res.Boot.Round(time.Millisecond), res.Duration.Round(time.Millisecond), res.PeakRSS>>20, res.Options, res.Replayed)
	if res.Replayed == 0 {
		t.Errorf("a dirty XFS log: nothing replayed")
	}
	if fileSum(t, diskImg) != before {
		t.Errorf("the disk image changed")
	}

	_, err = Extract(ctx, img, diskImg, "xfs", "/etc/app", t.TempDir(), Options{Extract: filerestore.ExtractOptions{MaxBytes: 1 << 20}})
	var ae *Error
	if !errors.Is(err, filerestore.ErrBudget) || !errors.As(err, &ae) || ae.Stage != "unpack" {
		t.Errorf("byte budget: %v", err)
	}
	_, err = Extract(ctx, img, diskImg, "xfs", "/etc/app", t.TempDir(), Options{Extract: filerestore.ExtractOptions{MaxEntries: 3}})
	if !errors.Is(err, filerestore.ErrBudget) {
		t.Errorf("entry budget: %v", err)
	}
	_, err = Extract(ctx, img, diskImg, "xfs", "/etc/nope", t.TempDir(), Options{})
	if !errors.Is(err, filerestore.ErrNotFound) || !errors.As(err, &ae) || ae.Stage != "path" || !strings.Contains(err.Error(), "console") {
		t.Errorf("missing path: %v", err)
	}
	noLeftovers(t, tmp)
}

// TestExt4DirtyJournal restores files that live only in the journal of a
// crash-consistent ext4 image: the appliance's kernel replays it into the
// snapshot overlay.
func TestExt4DirtyJournal(t *testing.T) {
	img := needImage(t)
	ext4test.Need(t)
	diskImg := filepath.Join(t.TempDir(), "dirty.img")
	var sums map[string][32]byte
	recent := []byte(strings.Repeat("written and fsynced just before the snapshot\n", 20000))
	ext4test.DirtyImage(t, diskImg, 64<<20,
		func(dir string) { sums = tree(t, dir) },
		func(dir string) {
			ext4test.WriteSynced(t, filepath.Join(dir, "etc/app/app.conf"), []byte("v2\n"), 0o644)
			ext4test.WriteSynced(t, filepath.Join(dir, "etc/app/recent.bin"), recent, 0o600)
		})
	sums["app.conf"] = sha256.Sum256([]byte("v2\n"))
	before := fileSum(t, diskImg)
	tmp := privateTmp(t)
	to := filepath.Join(t.TempDir(), "out")
	res, err := Extract(context.Background(), img, diskImg, "ext4", "/etc/app", to, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(to, "app/recent.bin"))
	if err != nil || sha256.Sum256(b) != sha256.Sum256(recent) {
		t.Fatalf("recent.bin (in the journal only) not restored intact: %v", err)
	}
	res.Stats.Files-- // recent.bin
	checkTree(t, to, sums, res.Stats)
	if res.Replayed == 0 || res.RecoveryErr != "" {
		t.Errorf("journal: replayed %d, recovery error %q", res.Replayed, res.RecoveryErr)
	}
	if fileSum(t, diskImg) != before {
		t.Errorf("the disk image changed")
	}
	t.Logf("accel %s, boot %v, total %v, QEMU peak RSS %d MiB, replayed %d bytes", res.Accel, res.Boot.Round(time.Millisecond), res.Duration.Round(time.Millisecond), res.PeakRSS>>20, res.Replayed)
	noLeftovers(t, tmp)
}

// TestNotAFileSystem: a disk the appliance cannot mount fails at "mount"
// with the kernel's words in the console tail.
func TestNotAFileSystem(t *testing.T) {
	img := needImage(t)
	tmp := privateTmp(t)
	junk := filepath.Join(t.TempDir(), "junk.img")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a file system ", 1<<16)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Extract(context.Background(), img, junk, "xfs", "/", t.TempDir(), Options{})
	var ae *Error
	if !errors.As(err, &ae) || ae.Stage != "mount" {
		t.Fatalf("got %v, want a mount failure", err)
	}
	t.Logf("error: %v", err)
	noLeftovers(t, tmp)
}

// TestBootTimeout: an appliance that does not answer in time is killed
// and named.
func TestBootTimeout(t *testing.T) {
	img := needImage(t)
	tmp := privateTmp(t)
	junk := filepath.Join(t.TempDir(), "junk.img")
	if err := os.WriteFile(junk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := Extract(context.Background(), img, junk, "xfs", "/", t.TempDir(), Options{BootTimeout: 50 * time.Millisecond})
	var ae *Error
	if !errors.As(err, &ae) || ae.Stage != "boot" || !strings.Contains(err.Error(), "boot timeout") {
		t.Fatalf("got %v, want a boot timeout", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %v", d)
	}
	noLeftovers(t, tmp)
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
