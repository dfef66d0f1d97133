package main

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/loopfs/xfstest"
	"github.com/raksha-backup/raksha/internal/mountfs"
)

// xfsTree fills dir (a mounted XFS file system) with etc/app/{app.conf,
// big.bin, link, evil, fifo} and a symlink conf -> /etc/app.
func xfsTree(t *testing.T, dir string) {
	t.Helper()
	app := filepath.Join(dir, "etc/app")
	if err := os.MkdirAll(app, 0o755); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 2<<20+77)
	for i := range big {
		big[i] = byte(i * 131 >> 7)
	}
	for name, data := range map[string][]byte{"app.conf": []byte("port = 8080 on xfs\n"), "big.bin": big} {
		if err := os.WriteFile(filepath.Join(app, name), data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"link": "app.conf", "evil": "../../../../../../../../etc/passwd", filepath.Join(dir, "conf"): "/etc/app"} {
		if !filepath.IsAbs(link) {
			link = filepath.Join(app, link)
		}
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(app, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// xfsDisks makes a whole-disk XFS image and a GPT disk with an EFI and an
// XFS partition (sfdisk), both holding xfsTree, and returns their paths
// and a copy of the tree to compare with.
func xfsDisks(t *testing.T) (whole, gpt, staging string) {
	t.Helper()
	xfstest.Need(t)
	if _, err := exec.LookPath("sfdisk"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("sfdisk missing in CI: run make test-deps (Debian package fdisk)")
		}
		t.Skip("SKIPPED: sfdisk (fdisk) not installed: run make test-deps")
	}
	dir := t.TempDir()
	staging = filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	xfsTree(t, staging)
	whole = filepath.Join(dir, "xfs.img")
	xfstest.Image(t, whole, xfstest.MinSize, func(mnt string) { xfsTree(t, mnt) })
	gpt = filepath.Join(dir, "gpt.img")
	if err := os.WriteFile(gpt, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const start = 10240 // sectors: after a 4 MiB EFI partition
	if err := os.Truncate(gpt, (start+xfstest.MinSize/512+2048)*512); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "-q", gpt)
	cmd.Stdin = strings.NewReader(fmt.Sprintf("label: gpt\n"+
		"start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"efi\"\n"+
		"start=%d, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"data\"\n", start, xfstest.MinSize/512))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	xfstest.CopyInto(t, gpt, start*512, whole)
	return whole, gpt, staging
}

// TestCLIRestoreFilesXFS: files out of backed-up XFS disks (whole disk and
// a GPT partition) compared by sha256; links written as links, the fifo
// skipped; the JSON result; nothing left mounted or attached; cancels at
// different moments leave nothing either.
func TestCLIRestoreFilesXFS(t *testing.T) {
	tmp := xfstest.PrivateTmp(t)
	whole, gpt, staging := xfsDisks(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	ids := map[string]string{}
	for _, img := range []string{whole, gpt} {
		var b diskBackupResult
		if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
			t.Fatal(err)
		}
		ids[img] = b.ID
	}
	for _, img := range []string{whole, gpt} {
		to := filepath.Join(t.TempDir(), "out")
		out, errs, err := c.run("restore", "files", "--mount-in", "host", ids[img], "--path", "/etc/app/", "--to", to)
		if err != nil {
			t.Fatalf("%s: %v\n%s", filepath.Base(img), err, errs)
		}
		if !strings.Contains(out, "2 files") || !strings.Contains(out, "2 symlinks") || !strings.Contains(out, ", 1 skipped") ||
			!strings.Contains(errs, "skipped /etc/app/fifo: special file (mode 010600) not restored") {
			t.Fatalf("%s: output %s\nstderr %s", filepath.Base(img), out, errs)
		}
		for _, name := range []string{"app.conf", "big.bin"} {
			if sum(t, filepath.Join(to, "app", name)) != sum(t, filepath.Join(staging, "etc/app", name)) {
				t.Fatalf("%s: %s differs", filepath.Base(img), name)
			}
		}
		for link, want := range map[string]string{"link": "app.conf", "evil": "../../../../../../../../etc/passwd"} {
			if target, err := os.Readlink(filepath.Join(to, "app", link)); err != nil || target != want {
				t.Fatalf("%s: %s: %q %v", filepath.Base(img), link, target, err)
			}
		}
		if fi, err := os.Stat(filepath.Join(to, "app", "big.bin")); err != nil || fi.Mode() != 0o640 {
			t.Fatalf("big.bin: %v %v", fi, err)
		}
		t.Logf("%s: %s", filepath.Base(img), strings.TrimSpace(out))
		xfstest.AssertNoLeftovers(t, tmp)
	}

	// one file, through a symlink to an absolute path inside the backup; JSON
	var res restoreFilesResult
	t0 := time.Now()
	js := c.must("restore", "files", "--mount-in", "host", ids[gpt], "--path", "/conf/app.conf", "--to", filepath.Join(t.TempDir(), "one"), "-f", "json")
	took := time.Since(t0)
	if err := json.Unmarshal([]byte(js), &res); err != nil {
		t.Fatalf("%v: %s", err, js)
	}
	if res.FSType != "xfs" || res.Files != 1 || res.Partition == nil || res.Partition.Number != 2 || res.Fetch.ChunksFetched == 0 || res.Fetch.ChunksFetched > 8 {
		t.Fatalf("json: %s", js)
	}
	if sum(t, filepath.Join(res.To, "app.conf")) != sum(t, filepath.Join(staging, "etc/app/app.conf")) {
		t.Fatal("app.conf differs")
	}
	t.Logf("one file from the XFS partition of a %d MiB disk: %v, %d of %d chunks fetched (%d bytes)",
		res.DiskSize>>20, took.Round(time.Millisecond), res.Fetch.ChunksFetched, res.DiskChunks, res.Fetch.BytesFetched)
	xfstest.AssertNoLeftovers(t, tmp)

	// a crash-consistent copy of a live XFS (dirty log; the same file
	// system still mounted here): the log is replayed into the overlay
	dirty := filepath.Join(t.TempDir(), "dirty.img")
	xfstest.DirtyImage(t, dirty, xfstest.MinSize, func(mnt string) { xfsTree(t, mnt) })
	var db diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", dirty)), &db); err != nil {
		t.Fatal(err)
	}
	to := filepath.Join(t.TempDir(), "dirty")
	out, errs, err := c.run("restore", "files", "--mount-in", "host", db.ID, "--path", "/etc/app/big.bin", "--to", to)
	if err != nil || strings.Contains(errs, "warning") || sum(t, filepath.Join(to, "big.bin")) != sum(t, filepath.Join(staging, "etc/app/big.bin")) {
		t.Fatalf("dirty log: %v\n%s\n%s", err, out, errs)
	}
	xfstest.AssertNoLeftovers(t, tmp)

	// errors name the backup and the path; nothing left
	_, _, err = c.run("restore", "files", "--mount-in", "host", ids[whole], "--path", "/etc/nope", "--to", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no such file or directory in the backup: /etc/nope") || !strings.Contains(err.Error(), ids[whole]) {
		t.Fatalf("missing path: %v", err)
	}
	xfstest.AssertNoLeftovers(t, tmp)

	// a cancel (Ctrl-C and SIGTERM cancel the command's context) at any
	// moment: the command ends and nothing is left
	for _, delay := range []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond, 40 * time.Millisecond, 150 * time.Millisecond} {
		bg := c.start("restore", "files", "--mount-in", "host", ids[gpt], "--path", "/", "--to", filepath.Join(t.TempDir(), "cancel"))
		time.Sleep(delay)
		bg.cancel()
		err := bg.wait(t)
		if err != nil && !errors.Is(err, errCanceled) && !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("cancel after %v: %v", delay, err)
		}
		xfstest.AssertNoLeftovers(t, tmp)
	}
}

var errCanceled = errors.New("context canceled")

// waitLoopMounted waits until dir is an XFS mount, or done ends first.
func waitLoopMounted(t *testing.T, dir string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if mi, err := mountfs.MountedAt(dir); err == nil && mi != nil && mi.FSType == "xfs" {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the mount command ended before mounting: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s not mounted after 30 s", dir)
}

// TestCLIMountXFS: raksha mount of a backed-up XFS partition: listing,
// reading (sha256), writes refused, raksha umount refusing while busy;
// then -f json ended by a cancel; nothing left mounted or attached.
func TestCLIMountXFS(t *testing.T) {
	tmp := xfstest.PrivateTmp(t)
	_, gpt, staging := xfsDisks(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", gpt)), &b); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t0 := time.Now()
	bg := c.start("mount", b.ID, dir)
	waitLoopMounted(t, dir, bg.done)
	mountTook := time.Since(t0)
	if got := listDir(t, filepath.Join(dir, "etc/app")); got != "app.conf big.bin evil fifo link" {
		t.Fatalf("listing: %q", got)
	}
	if got := listDir(t, dir); got != "conf etc" {
		t.Fatalf("root listing: %q", got)
	}
	if target, err := os.Readlink(filepath.Join(dir, "conf")); err != nil || target != "/etc/app" {
		t.Fatalf("conf: %q %v", target, err)
	}
	for _, name := range []string{"app.conf", "big.bin"} {
		if sum(t, filepath.Join(dir, "etc/app", name)) != sum(t, filepath.Join(staging, "etc/app", name)) {
			t.Fatalf("%s differs", name)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write: %v", err)
	}
	f, err := os.Open(filepath.Join(dir, "etc/app/app.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.run("umount", dir); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("umount while busy: %v", err)
	}
	f.Close()
	c.must("umount", dir)
	if err := bg.wait(t); err != nil {
		t.Fatalf("%v\n%s", err, bg.errb.String())
	}
	out := bg.out.String()
	if !strings.Contains(out, "XFS file system (300.0 MiB) on ") || !strings.Contains(out, "read-only, log recovered into a private overlay (") || !strings.Contains(out, "partition 2") || !strings.Contains(out, "'umount "+dir+"'") {
		t.Fatalf("output: %s", out)
	}
	xfstest.AssertNoLeftovers(t, tmp, dir)
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Fatalf("mount point after unmount: %v %v", ents, err)
	}
	t.Logf("mounted in %v; output:\n%s", mountTook.Round(time.Millisecond), out)

	// -f json, ended by a cancel (what Ctrl-C does)
	bg = c.start("mount", "-f", "json", b.ID, dir)
	waitLoopMounted(t, dir, bg.done)
	if sum(t, filepath.Join(dir, "etc/app/app.conf")) != sum(t, filepath.Join(staging, "etc/app/app.conf")) {
		t.Fatal("app.conf differs")
	}
	bg.cancel()
	if err := bg.wait(t); err != nil {
		t.Fatalf("%v\n%s", err, bg.errb.String())
	}
	var res mountResult
	if err := json.Unmarshal([]byte(bg.out.String()), &res); err != nil {
		t.Fatalf("%v: %s", err, bg.out.String())
	}
	if res.FSType != "xfs" || res.Partition == nil || res.Partition.Number != 2 || res.Fetch.ChunksFetched == 0 {
		t.Fatalf("json: %s", bg.out.String())
	}
	t.Logf("read one file through the XFS mount: %d of %d chunks fetched; mount took %.3f s", res.Fetch.ChunksFetched, res.DiskChunks, res.MountSeconds)
	xfstest.AssertNoLeftovers(t, tmp, dir)

	// --raw still serves the partition file for a manual loop mount
	bg = c.start("mount", "--raw", b.ID, dir)
	waitMounted(t, dir, bg.done)
	if got := listDir(t, dir); got != "disk.img part1.img part2.img" {
		t.Fatalf("raw listing: %q", got)
	}
	// (right after the listing the kernel has now and then still held the
	// FUSE mount point busy for a moment)
	for k := 0; ; k++ {
		_, _, err := c.run("umount", dir)
		if err == nil {
			break
		}
		if k == 20 || !strings.Contains(err.Error(), "busy") {
			t.Fatal(err)
		}
		t.Logf("umount: %v; again", err)
		time.Sleep(100 * time.Millisecond)
	}
	if err := bg.wait(t); err != nil {
		t.Fatal(err)
	}
	xfstest.AssertNoLeftovers(t, tmp, dir)
}

// TestCLIXFSSignals runs the raksha binary: SIGTERM ends an XFS mount,
// SIGINT a restore in the middle of a large file; either way nothing is
// left mounted or attached.
func TestCLIXFSSignals(t *testing.T) {
	xfstest.Need(t)
	tmp := xfstest.PrivateTmp(t)
	img := filepath.Join(t.TempDir(), "xfs.img")
	var largeSum [32]byte
	xfstest.Image(t, img, xfstest.MinSize, func(mnt string) {
		xfsTree(t, mnt)
		f, err := os.Create(filepath.Join(mnt, "large.bin"))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		h := sha256.New()
		defer func() { largeSum = [32]byte(h.Sum(nil)) }()
		for i := 0; i < 96; i++ {
			for k := range buf {
				buf[k] = byte(i*k>>3 + k*k>>11)
			}
			h.Write(buf)
			if _, err := f.Write(buf); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	})
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "raksha")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run := func(args ...string) (*exec.Cmd, *syncBuffer, chan error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "RAKSHA_PASSWORD="+c.env["RAKSHA_PASSWORD"], "RAKSHA_REPO="+c.env["RAKSHA_REPO"])
		var out, errb syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
		})
		return cmd, &errb, done
	}
	waitExit := func(done chan error, errb *syncBuffer) error {
		t.Helper()
		select {
		case err := <-done:
			done <- err
			return err
		case <-time.After(30 * time.Second):
			t.Fatalf("raksha still running 30 s after the signal\n%s", errb.String())
			return nil
		}
	}

	dir := t.TempDir()
	cmd, errb, done := run("mount", b.ID, dir)
	waitLoopMounted(t, dir, done)
	if got, err := os.ReadFile(filepath.Join(dir, "etc/app/app.conf")); err != nil || string(got) != "port = 8080 on xfs\n" {
		t.Fatalf("app.conf through the mount: %q %v", got, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(done, errb); err != nil {
		t.Fatalf("mount after SIGTERM: %v\n%s", err, errb.String())
	}
	xfstest.AssertNoLeftovers(t, tmp, dir)

	// a killed mount command: raksha umount cleans up its XFS mount, loop
	// device and FUSE view
	cmd, _, done = run("mount", b.ID, dir)
	waitLoopMounted(t, dir, done)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-done
	if left := xfstest.Leftovers(t, tmp); len(left) != 2 {
		t.Fatalf("after the kill: %q", left)
	}
	if _, errs, err := c.run("umount", dir); err != nil {
		t.Fatalf("umount after the kill: %v\n%s", err, errs)
	}
	xfstest.AssertNoLeftovers(t, tmp, dir)

	// the whole 96 MiB file, timed
	to := filepath.Join(t.TempDir(), "full")
	t0 := time.Now()
	js, errs, err := c.run("restore", "files", "--mount-in", "host", b.ID, "--path", "/large.bin", "--to", to, "-f", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errs)
	}
	took := time.Since(t0)
	var res restoreFilesResult
	if err := json.Unmarshal([]byte(js), &res); err != nil {
		t.Fatal(err)
	}
	if sum(t, filepath.Join(to, "large.bin")) != largeSum {
		t.Fatal("large.bin differs")
	}
	t.Logf("96 MiB file from XFS: %v (%.0f MiB/s), %d of %d chunks fetched", took.Round(time.Millisecond), 96/took.Seconds(), res.Fetch.ChunksFetched, res.DiskChunks)
	xfstest.AssertNoLeftovers(t, tmp)

	// SIGINT while the loop mount is set up, and once the copy has begun
	for _, early := range []bool{true, false} {
		to := filepath.Join(t.TempDir(), "out")
		cmd, errb, done = run("restore", "files", "--mount-in", "host", b.ID, "--path", "/large.bin", "--to", to)
		// early: once the loop mount is being set up
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
			if early {
				if ents, _ := filepath.Glob(filepath.Join(tmp, "raksha-loop-*")); len(ents) > 0 {
					break
				}
			} else if _, err := os.Stat(filepath.Join(to, "large.bin")); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the restore did not get there: %s", errb.String())
			}
		}
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		err := waitExit(done, errb)
		t.Logf("SIGINT (early %v): exit %v: %s", early, err, strings.TrimSpace(errb.String()))
		if err != nil && !strings.Contains(errb.String(), "context canceled") {
			t.Fatalf("restore after SIGINT: %v\n%s", err, errb.String())
		}
		xfstest.AssertNoLeftovers(t, tmp)
	}
}
