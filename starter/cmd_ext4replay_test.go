package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/loopfs/ext4test"
	"github.com/raksha-backup/raksha/internal/loopfs/xfstest"
	"github.com/raksha-backup/raksha/internal/mountfs"
)

// dirtyExt4Backup makes a crash-consistent ext4 disk dirty.img
// (etc/app/app.conf "v1" checkpointed, then rewritten as "v2" and
// recent.bin written, both fsynced into the journal only; copied while
// mounted), backs it up and returns the backup id and recent.bin's
// contents (the repository exists). how "broken-journal": a journal the
// kernel refuses; "gpt": the file system is partition 2 of gpt.img, after
// an EFI partition.
func dirtyExt4Backup(t *testing.T, c *cli, how string) (string, []byte) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "dirty.img")
	recent := bytes.Repeat([]byte("written and fsynced just before the snapshot\n"), 20000)
	ext4test.DirtyImage(t, img, 64<<20,
		func(dir string) {
			if err := os.MkdirAll(filepath.Join(dir, "etc/app"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "etc/app/app.conf"), []byte("v1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		func(dir string) {
			ext4test.WriteSynced(t, filepath.Join(dir, "etc/app/app.conf"), []byte("v2\n"), 0o644)
			ext4test.WriteSynced(t, filepath.Join(dir, "etc/app/recent.bin"), recent, 0o600)
		})
	switch how {
	case "broken-journal":
		ext4test.BreakJournalChecksum(t, img)
	case "gpt":
		if _, err := exec.LookPath("sfdisk"); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("sfdisk missing in CI: run make test-deps (Debian package fdisk)")
			}
			t.Skip("SKIPPED: sfdisk (fdisk) not installed: run make test-deps")
		}
		gpt := filepath.Join(filepath.Dir(img), "gpt.img")
		const start, sectors = 10240, 64 << 20 / 512 // after a 4 MiB EFI partition
		if err := os.WriteFile(gpt, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(gpt, (start+sectors+2048)*512); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sfdisk", "-q", gpt)
		cmd.Stdin = strings.NewReader(fmt.Sprintf("label: gpt\n"+
			"start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"efi\"\n"+
			"start=%d, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"data\"\n", start, sectors))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sfdisk: %v\n%s", err, out)
		}
		xfstest.CopyInto(t, gpt, start*512, img)
		img = gpt
	}
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	return b.ID, recent
}

// TestCLIRestoreFilesExt4Replay: restore files from a crash-consistent ext4
// backup whose journal holds the last writes: the kernel replays it (the
// file has the right bytes), also in a GPT partition; with --no-replay
// raksha's reader warns, naming the disk, and the file is missing; a
// journal the kernel refuses is mounted with noload, with a warning;
// nothing is left mounted or attached.
func TestCLIRestoreFilesExt4Replay(t *testing.T) {
	ext4test.Need(t)
	needFUSE(t)
	tmp := xfstest.PrivateTmp(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	id, recent := dirtyExt4Backup(t, c, "")
	want := sumBytes(recent)

	// replayed by the kernel: the whole directory, JSON
	to := filepath.Join(t.TempDir(), "out")
	out, errs, err := c.run("restore", "files", "--mount-in", "host", id, "--path", "/etc/app/", "--to", to, "-f", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errs)
	}
	var res restoreFilesResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.FSType != "ext" || res.Replay != "kernel" || res.OverlayBytes == 0 || !res.NeedsRecovery || res.Journal != "internal" || res.Files != 2 || strings.Contains(errs, "warning") {
		t.Fatalf("json: %s\nstderr: %s", out, errs)
	}
	if sum(t, filepath.Join(to, "app/recent.bin")) != want {
		t.Fatal("recent.bin differs after the replay")
	}
	if b, err := os.ReadFile(filepath.Join(to, "app/app.conf")); err != nil || string(b) != "v2\n" {
		t.Fatalf("app.conf after the replay: %q %v", b, err)
	}
	xfstest.AssertNoLeftovers(t, tmp)

	// one file, text output
	to = filepath.Join(t.TempDir(), "one")
	out, errs, err = c.run("restore", "files", "--mount-in", "host", id, "--path", "/etc/app/recent.bin", "--to", to)
	if err != nil || !strings.Contains(out, "1 files") || !strings.Contains(out, "the ext4 journal needed recovery: replayed by the kernel into a private overlay (") ||
		strings.Contains(errs, "warning") || sum(t, filepath.Join(to, "recent.bin")) != want {
		t.Fatalf("%v\n%s\n%s", err, out, errs)
	}
	t.Logf("replayed: %s", strings.TrimSpace(out))
	xfstest.AssertNoLeftovers(t, tmp)

	// --no-replay: raksha's reader, a warning naming the disk, the file
	// that only the journal holds missing, app.conf stale
	to = filepath.Join(t.TempDir(), "noreplay")
	out, errs, err = c.run("restore", "files", "--mount-in", "host", id, "--no-replay", "--path", "/etc/app/", "--to", to, "-f", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errs)
	}
	for _, w := range []string{"warning: restore files from backup " + id + " vm local disk dirty.img: the ext4 file system needs journal recovery",
		"files written shortly before the backup may be missing or stale", "an application-consistent backup", "not replayed: --no-replay given"} {
		if !strings.Contains(errs, w) {
			t.Fatalf("stderr lacks %q:\n%s", w, errs)
		}
	}
	res = restoreFilesResult{}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.Replay != "skipped" || !res.NeedsRecovery || len(res.Warnings) != 1 || res.Files != 1 {
		t.Fatalf("json: %s", out)
	}
	if _, err := os.Stat(filepath.Join(to, "app/recent.bin")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("recent.bin without replay: %v", err)
	}
	t.Logf("--no-replay: %s", strings.TrimSpace(errs))
	xfstest.AssertNoLeftovers(t, tmp)

	// a journal the kernel refuses: mounted with noload, a warning
	bad, _ := dirtyExt4Backup(t, c, "broken-journal")
	to = filepath.Join(t.TempDir(), "bad")
	out, errs, err = c.run("restore", "files", "--mount-in", "host", bad, "--path", "/etc/app/", "--to", to, "-f", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errs)
	}
	res = restoreFilesResult{}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.Replay != "failed" || !strings.Contains(res.ReplayNote, "(ro,errors=remount-ro) at ") || res.Files != 1 ||
		!strings.Contains(errs, "warning: restore files from backup "+bad+" vm local disk dirty.img: the ext4 file system needs journal recovery") ||
		!strings.Contains(errs, "not replayed: mounting with it failed: mount ") {
		t.Fatalf("json: %s\nstderr: %s", out, errs)
	}
	t.Logf("journal refused: %s", strings.TrimSpace(errs))
	xfstest.AssertNoLeftovers(t, tmp)

	// the file system in a GPT partition: replayed there too
	part, _ := dirtyExt4Backup(t, c, "gpt")
	to = filepath.Join(t.TempDir(), "gpt")
	out, errs, err = c.run("restore", "files", "--mount-in", "host", part, "--path", "/etc/app/recent.bin", "--to", to, "-f", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errs)
	}
	res = restoreFilesResult{}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.Replay != "kernel" || res.Partition == nil || res.Partition.Number != 2 || sum(t, filepath.Join(to, "recent.bin")) != want {
		t.Fatalf("gpt: %s\nstderr: %s", out, errs)
	}
	xfstest.AssertNoLeftovers(t, tmp)
}

func sumBytes(b []byte) [32]byte { return sha256.Sum256(b) }

// TestReplayBlocker: why a journal that needs recovery is not replayed.
func TestReplayBlocker(t *testing.T) {
	ok := func(string) error { return nil }
	no := func(fstype string) error { return fmt.Errorf("%w: an EXT4 mount needs root", loopfs.ErrUnavailable) }
	in := filerestore.Journal{Kind: "internal", NeedsRecovery: true}
	for _, tc := range []struct {
		j        filerestore.Journal
		noReplay bool
		check    func(string) error
		want     string
	}{
		{in, false, ok, ""},
		{in, true, ok, "--no-replay given"},
		{in, false, no, "kernel loop mounts are not available here: an EXT4 mount needs root"},
		{filerestore.Journal{Kind: "external", NeedsRecovery: true}, false, ok, "the journal is on an external device, which is not in the backup"},
	} {
		if got := replayBlocker(tc.j, tc.noReplay, tc.check); got != tc.want {
			t.Errorf("%+v %v: %q, want %q", tc.j, tc.noReplay, got, tc.want)
		}
	}
}

// TestCLIMountExt4Replay: raksha mount of a crash-consistent ext4 backup
// is a kernel loop mount with the journal replayed (the file that only the
// journal held reads right); with --no-replay it is raksha's FUSE view,
// with a warning, and the file is missing; nothing is left.
func TestCLIMountExt4Replay(t *testing.T) {
	ext4test.Need(t)
	needFUSE(t)
	tmp := xfstest.PrivateTmp(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	id, recent := dirtyExt4Backup(t, c, "")
	dir := t.TempDir()

	bg := c.start("mount", "-f", "json", id, dir)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if mi, err := mountfs.MountedAt(dir); err == nil && mi != nil && mi.FSType == "ext4" {
			break
		}
		select {
		case err := <-bg.done:
			t.Fatalf("the mount command ended before mounting: %v\n%s", err, bg.errb.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not loop-mounted after 30 s\n%s", dir, bg.errb.String())
		}
	}
	if sum(t, filepath.Join(dir, "etc/app/recent.bin")) != sumBytes(recent) {
		t.Fatal("recent.bin differs through the replayed mount")
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write: %v", err)
	}
	c.must("umount", dir)
	if err := bg.wait(t); err != nil {
		t.Fatalf("%v\n%s", err, bg.errb.String())
	}
	var res mountResult
	if err := json.Unmarshal([]byte(bg.out.String()), &res); err != nil {
		t.Fatalf("%v: %s", err, bg.out.String())
	}
	if res.FSType != "ext" || !res.NeedsRecovery || res.Replay != "kernel" || res.OverlayBytes == 0 || strings.Contains(bg.errb.String(), "warning") {
		t.Fatalf("json: %s\nstderr: %s", bg.out.String(), bg.errb.String())
	}
	xfstest.AssertNoLeftovers(t, tmp, dir)

	// --no-replay: the FUSE view, a warning, recent.bin missing
	bg = c.start("mount", "--no-replay", id, dir)
	waitMounted(t, dir, bg.done)
	if got := listDir(t, filepath.Join(dir, "etc/app")); got != "app.conf" {
		t.Fatalf("listing without replay: %q", got)
	}
	c.must("umount", dir)
	if err := bg.wait(t); err != nil {
		t.Fatalf("%v\n%s", err, bg.errb.String())
	}
	if errs := bg.errb.String(); !strings.Contains(errs, "warning: mount backup "+id+" vm local disk dirty.img: the ext4 file system needs journal recovery") ||
		!strings.Contains(errs, "not replayed: --no-replay given") {
		t.Fatalf("stderr: %s", errs)
	}
	assertUnmounted(t, dir)
	xfstest.AssertNoLeftovers(t, tmp, dir)
}

// TestCLIRestoreFilesExt4NoLoopMounts: where loop mounts cannot work (the
// raksha binary run as an unprivileged user), restore files of a
// crash-consistent ext4 backup goes on with raksha's reader and warns,
// naming the disk and what is missing.
func TestCLIRestoreFilesExt4NoLoopMounts(t *testing.T) {
	ext4test.Need(t)
	// a directory the unprivileged user can reach (t.TempDir's parents are 0700)
	base, err := os.MkdirTemp("", "raksha-noloop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	c := &cli{t: t, env: map[string]string{"RAKSHA_PASSWORD": "pw", "RAKSHA_REPO": "file://" + filepath.Join(base, "repo")}}
	c.must("repo", "init", "--chunk-size", "1MiB")
	id, _ := dirtyExt4Backup(t, c, "")
	bin := filepath.Join(base, "raksha")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const nobody = 65534
	if err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, nobody, nobody)
	}); err != nil {
		t.Fatal(err)
	}
	to := filepath.Join(base, "out")
	cmd := exec.Command(bin, "restore", "files", "--mount-in", "host", id, "--path", "/etc/app/", "--to", to, "-f", "json")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + base, "RAKSHA_PASSWORD=pw", "RAKSHA_REPO=" + c.env["RAKSHA_REPO"]}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out.String(), errb.String())
	}
	errs := errb.String()
	for _, w := range []string{"warning: restore files from backup " + id + " vm local disk dirty.img: the ext4 file system needs journal recovery",
		"may be missing or stale", "an application-consistent backup", "(not replayed: kernel loop mounts are not available here: an EXT4 mount needs root"} {
		if !strings.Contains(errs, w) {
			t.Fatalf("stderr lacks %q:\n%s", w, errs)
		}
	}
	var res restoreFilesResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if res.Replay != "skipped" || !strings.Contains(res.ReplayNote, "needs root") || !res.NeedsRecovery || res.Files != 1 {
		t.Fatalf("json: %s", out.String())
	}
	t.Logf("unprivileged: %s", strings.TrimSpace(errs))
}
