package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/mountfs"
	"github.com/raksha-backup/raksha/internal/repo"
)

// needFUSE fails under CI and skips loudly elsewhere when FUSE mounts
// cannot work here.
func needFUSE(t *testing.T) {
	t.Helper()
	if err := mountfs.Check(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v: under CI the mount tests must run (make test-deps installs fuse3)", err)
		}
		t.Skipf("SKIPPED: %v: run make test-deps (Debian package fuse3) on a machine with /dev/fuse", err)
	}
}

// background runs raksha in a goroutine with a context the test cancels.
type background struct {
	out, errb syncBuffer
	cancel    context.CancelFunc
	done      chan error // receives the command's error once
	finished  chan struct{}
}

// syncBuffer is a bytes.Buffer safe to read while the command writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (c *cli) start(args ...string) *background {
	ctx, cancel := context.WithCancel(context.Background())
	bg := &background{cancel: cancel, done: make(chan error, 1), finished: make(chan struct{})}
	a := newApp(&bg.out, &bg.errb, func(k string) string { return c.env[k] })
	cmd := a.root()
	cmd.SetArgs(append([]string{"--progress", "none"}, args...))
	go func() {
		bg.done <- cmd.ExecuteContext(ctx)
		close(bg.finished)
	}()
	c.t.Cleanup(func() {
		cancel()
		select {
		case <-bg.finished:
		case <-time.After(10 * time.Second):
		}
	})
	return bg
}

// wait returns the command's error, failing the test after 20 s.
func (bg *background) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-bg.done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("the command did not end\nstdout: %s\nstderr: %s", bg.out.String(), bg.errb.String())
		return nil
	}
}

// waitMounted waits until dir is a raksha mount, or done ends first.
func waitMounted(t *testing.T, dir string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if ok, err := mountfs.IsMounted(dir); err == nil && ok {
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

func assertUnmounted(t *testing.T, dir string) {
	t.Helper()
	if ok, err := mountfs.IsMounted(dir); ok || err != nil {
		t.Fatalf("%s still mounted (%v)", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 0 {
		t.Fatalf("mount point after unmount: %v, %v", ents, err)
	}
}

func listDir(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// TestCLIMount: raksha mount of a backed-up ext4 disk, files compared by
// sha256, writes refused, raksha umount; then -f json ended by a cancel.
func TestCLIMount(t *testing.T) {
	needFUSE(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	img, staging := ext4Image(t)
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t0 := time.Now()
	bg := c.start("mount", b.ID, "--vm", "local", "--disk", "root.img", dir)
	waitMounted(t, dir, bg.done)
	t.Logf("mounted in %v", time.Since(t0).Round(time.Millisecond))

	if got := listDir(t, filepath.Join(dir, "etc/app")); got != "app.conf big.bin link" {
		t.Fatalf("etc/app lists %q", got)
	}
	for _, name := range []string{"app.conf", "big.bin", "link"} {
		if sum(t, filepath.Join(dir, "etc/app", name)) != sum(t, filepath.Join(staging, "etc/app", name)) {
			t.Fatalf("%s differs", name)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "etc/app/link")); err != nil || target != "app.conf" {
		t.Fatalf("link: %q %v", target, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/app/app.conf"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write: %v, want EROFS", err)
	}

	t0 = time.Now()
	if out := c.must("umount", dir); !strings.Contains(out, "unmounted "+dir) {
		t.Fatalf("umount says %q", out)
	}
	if err := bg.wait(t); err != nil {
		t.Fatalf("mount: %v\n%s", err, bg.errb.String())
	}
	t.Logf("umount and exit in %v", time.Since(t0).Round(time.Millisecond))
	assertUnmounted(t, dir)
	out := bg.out.String()
	if !strings.Contains(out, "mounted backup "+b.ID+" vm local disk root.img read-only at "+dir) ||
		!strings.Contains(out, "unmounted "+dir) || !strings.Contains(out, "of 64 chunks") {
		t.Fatalf("output:\n%s", out)
	}
	t.Logf("output:\n%s", out)

	// -f json, one small file read, ended by cancelling the context
	bg = c.start("mount", "-f", "json", b.ID, dir)
	waitMounted(t, dir, bg.done)
	data, err := os.ReadFile(filepath.Join(dir, "etc/app/app.conf"))
	if err != nil || string(data) != "port = 8080\n" {
		t.Fatalf("app.conf: %q %v", data, err)
	}
	bg.cancel()
	if err := bg.wait(t); err != nil {
		t.Fatal(err)
	}
	assertUnmounted(t, dir)
	var res mountResult
	if err := json.Unmarshal([]byte(bg.out.String()), &res); err != nil {
		t.Fatalf("%v: %s", err, bg.out.String())
	}
	if res.Disk != b.ID+"/local/root.img" || res.DiskChunks != 64 || res.Fetch.ChunksFetched == 0 || res.Fetch.ChunksFetched > 4 || res.Raw {
		t.Fatalf("json: %+v", res)
	}
	t.Logf("cat of one file through the mount: %d of %d chunks fetched; mount took %.3f s", res.Fetch.ChunksFetched, res.DiskChunks, res.MountSeconds)
}

// TestCLIMountRaw serves the disk image as a file.
func TestCLIMountRaw(t *testing.T) {
	needFUSE(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "256KiB")
	img, _ := ext4Image(t)
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bg := c.start("mount", "--raw", b.ID, dir)
	waitMounted(t, dir, bg.done)
	if got := listDir(t, dir); got != "disk.img" {
		t.Fatalf("raw mount lists %q", got)
	}
	if sum(t, filepath.Join(dir, "disk.img")) != sum(t, img) {
		t.Fatal("disk.img differs")
	}
	c.must("umount", dir)
	if err := bg.wait(t); err != nil {
		t.Fatal(err)
	}
	assertUnmounted(t, dir)
}

// partitionedImage makes a GPT disk with an EFI partition and two ext4
// partitions; the second holds etc/app/app.conf.
func partitionedImage(t *testing.T) string {
	t.Helper()
	for tool, pkg := range map[string]string{"sfdisk": "fdisk", "mkfs.ext4": "e2fsprogs"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s missing in CI: run make test-deps (Debian package %s)", tool, pkg)
			}
			t.Skipf("SKIPPED: %s (%s) not installed: run make test-deps", tool, pkg)
		}
	}
	img := filepath.Join(t.TempDir(), "vda.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader("label: gpt\n" +
		"start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"efi\"\n" +
		"start=10240, size=40960, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n" +
		"start=51200, size=40960, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"srv\"\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	staging := filepath.Join(t.TempDir(), "staging")
	if err := os.MkdirAll(filepath.Join(staging, "etc/app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "etc/app/app.conf"), []byte("on partition 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		sector  int
		staging string
	}{{10240, ""}, {51200, staging}} {
		args := []string{"-q", "-F", "-E", fmt.Sprintf("offset=%d", f.sector*512)}
		if f.staging != "" {
			args = append(args, "-d", f.staging)
		}
		if out, err := exec.Command("mkfs.ext4", append(args, img, "20M")...).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v\n%s", err, out)
		}
	}
	return img
}

// TestCLIPartitions: restore files and mount on a partitioned disk, with
// --partition, and the errors that list the partitions.
func TestCLIPartitions(t *testing.T) {
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	img := partitionedImage(t)
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	to := t.TempDir()

	_, _, err := c.run("restore", "files", b.ID, "--path", "/etc/app/app.conf", "--to", to)
	want := "restore files from backup " + b.ID + " vm local disk vda.img: choose a partition: the disk has a GPT partition table with 2 Linux file-system partitions; " +
		`GPT partitions: 1 (EFI System "efi", 4 MiB at 1 MiB), 2 (Linux filesystem "root", 20 MiB at 5 MiB, ext4), 3 (Linux filesystem "srv", 20 MiB at 25 MiB, ext4); give --partition N`
	if err == nil || err.Error() != want || exitCode(err) != 2 {
		t.Fatalf("no --partition:\n%v\nwant\n%s", err, want)
	}
	_, _, err = c.run("restore", "files", b.ID, "--partition", "7", "--path", "/", "--to", to)
	if err == nil || !strings.Contains(err.Error(), "disk vda.img: --partition 7: no such partition: the disk has no partition 7; GPT partitions: 1 (") || exitCode(err) != 2 {
		t.Fatalf("--partition 7: %v", err)
	}
	_, _, err = c.run("restore", "files", b.ID, "--partition", "1", "--path", "/", "--to", to)
	if err == nil || !strings.Contains(err.Error(), "disk vda.img partition 1: not an ext2/3/4 file system") || exitCode(err) != 1 {
		t.Fatalf("--partition 1 (EFI, empty): %v", err)
	}
	_, _, err = c.run("restore", "files", b.ID, "--partition", "-2", "--path", "/", "--to", to)
	if err == nil || exitCode(err) != 2 {
		t.Fatalf("--partition -2: %v", err)
	}
	var res restoreFilesResult
	js := c.must("restore", "files", b.ID, "--partition", "3", "--path", "/etc/app/app.conf", "--to", to, "-f", "json")
	if err := json.Unmarshal([]byte(js), &res); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(to, "app.conf")); err != nil || string(data) != "on partition 3\n" ||
		res.Partition == nil || res.Partition.Number != 3 || res.Partition.Name != "srv" {
		t.Fatalf("restored %q (%v); result %s", data, err, js)
	}

	needFUSE(t)
	dir := t.TempDir()
	_, _, err = c.run("mount", b.ID, dir)
	if err == nil || !strings.Contains(err.Error(), "backup "+b.ID+" vm local disk vda.img: choose a partition") || exitCode(err) != 2 {
		t.Fatalf("mount without --partition: %v", err)
	}
	_, _, err = c.run("mount", b.ID, "--partition", "4", dir)
	if err == nil || !strings.Contains(err.Error(), "no partition 4") || exitCode(err) != 2 {
		t.Fatalf("mount --partition 4: %v", err)
	}
	bg := c.start("mount", b.ID, "--partition", "3", dir)
	waitMounted(t, dir, bg.done)
	if data, err := os.ReadFile(filepath.Join(dir, "etc/app/app.conf")); err != nil || string(data) != "on partition 3\n" {
		t.Fatalf("app.conf through the mount: %q %v", data, err)
	}
	c.must("umount", dir)
	if err := bg.wait(t); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(bg.out.String(), "disk vda.img partition 3 read-only at") {
		t.Fatalf("output: %s", bg.out.String())
	}
	assertUnmounted(t, dir)

	// --raw: the image and each partition as files
	bg = c.start("mount", "--raw", b.ID, dir)
	waitMounted(t, dir, bg.done)
	if got := listDir(t, dir); got != "disk.img part1.img part2.img part3.img" {
		t.Fatalf("raw mount lists %q", got)
	}
	if sum(t, filepath.Join(dir, "disk.img")) != sum(t, img) {
		t.Fatal("disk.img differs")
	}
	c.must("umount", dir)
	if err := bg.wait(t); err != nil {
		t.Fatal(err)
	}
	assertUnmounted(t, dir)
}

// TestCLIMountErrors: bad input gets clear errors and mounts nothing.
func TestCLIMountErrors(t *testing.T) {
	needFUSE(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "64KiB")
	img := writeImage(t, 1<<20) // random bytes: no file system
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"mount", b.ID, dir}, "mount backup " + b.ID + " vm local disk vol.img: not an ext2/3/4 file system", 1},
		{[]string{"mount", "no-such-backup", dir}, "no such backup in the repository: no-such-backup", 1},
		{[]string{"mount", b.ID, "--vm", "web", dir}, `has no disk matching --vm "web"`, 2},
		{[]string{"mount", b.ID, "--disk", "vdb", dir}, `has no disk matching --vm "" --disk "vdb"`, 2},
		{[]string{"mount", b.ID, "--partition", "1", dir}, "--partition 1: no such partition: partition 1 asked for, but the disk has no partition table", 2},
		{[]string{"mount", b.ID, "--partition", "-1", dir}, "partitions are numbered from 1", 2},
		{[]string{"mount", b.ID, "--raw", "--partition", "1", dir}, "leave out --partition", 2},
		{[]string{"mount", b.ID, filepath.Join(dir, "missing")}, "mount point: stat", 2},
		{[]string{"mount", b.ID, img}, "not a directory", 2},
		{[]string{"mount", b.ID}, "accepts 2 arg(s)", 1},
		{[]string{"umount", dir}, "not a raksha mount: not a mount point", 2},
		{[]string{"umount", "/proc"}, "not a raksha mount: it is a proc mount", 2},
	} {
		_, _, err := c.run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || exitCode(err) != tc.code {
			t.Errorf("raksha %v: %v (exit %d), want %q (exit %d)", tc.args, err, exitCode(err), tc.want, tc.code)
		}
		if ok, _ := mountfs.IsMounted(dir); ok {
			t.Fatalf("raksha %v left a mount", tc.args)
		}
	}
	_, _, err := c.run("mount", "no-such-backup", dir)
	if !errors.Is(err, repo.ErrNoBackup) {
		t.Fatalf("missing backup: %v, want ErrNoBackup", err)
	}
}

// TestCLIMountSignals runs the raksha binary: SIGINT unmounts; with the
// mount point busy, SIGTERM leaves it mounted and says why, and the next
// SIGTERM after the file is closed unmounts.
func TestCLIMountSignals(t *testing.T) {
	needFUSE(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	img, staging := ext4Image(t)
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "raksha")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	run := func() (*exec.Cmd, *syncBuffer, *syncBuffer, chan error) {
		cmd := exec.Command(bin, "mount", b.ID, dir)
		cmd.Env = append(os.Environ(), "RAKSHA_PASSWORD="+c.env["RAKSHA_PASSWORD"], "RAKSHA_REPO="+c.env["RAKSHA_REPO"])
		var out, errb syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-done
			_ = exec.Command("fusermount3", "-u", dir).Run()
		})
		return cmd, &out, &errb, done
	}
	waitExit := func(done chan error, errb *syncBuffer) {
		t.Helper()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("raksha mount exited with %v\n%s", err, errb.String())
			}
			done <- nil
		case <-time.After(20 * time.Second):
			t.Fatalf("raksha mount still running 20 s after the signal\n%s", errb.String())
		}
	}

	// SIGINT
	cmd, out, errb, done := run()
	waitMounted(t, dir, done)
	if sum(t, filepath.Join(dir, "etc/app/big.bin")) != sum(t, filepath.Join(staging, "etc/app/big.bin")) {
		t.Fatal("big.bin differs")
	}
	t0 := time.Now()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	waitExit(done, errb)
	t.Logf("SIGINT to exit: %v; output:\n%s", time.Since(t0).Round(time.Millisecond), out.String())
	assertUnmounted(t, dir)

	// SIGTERM while busy, then again
	cmd, _, errb, done = run()
	waitMounted(t, dir, done)
	f, err := os.Open(filepath.Join(dir, "etc/app/app.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(errb.String(), "still mounted") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(errb.String(), "device or resource busy") || !strings.Contains(errb.String(), "press Ctrl-C again") {
		t.Fatalf("busy unmount says: %s", errb.String())
	}
	if ok, _ := mountfs.IsMounted(dir); !ok {
		t.Fatal("unmounted while a file was open")
	}
	// still served
	data := make([]byte, 4)
	if _, err := f.ReadAt(data, 0); err != nil || string(data) != "port" {
		t.Fatalf("read after the busy unmount: %q %v", data, err)
	}
	f.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(done, errb)
	assertUnmounted(t, dir)

	// SIGKILL leaves a dead mount: mount says so, umount clears it
	cmd, _, _, done = run()
	waitMounted(t, dir, done)
	_, _, err = c.run("mount", b.ID, dir)
	if err == nil || !strings.Contains(err.Error(), "already a mount point (fuse.raksha from raksha:"+b.ID+"/local/root.img): unmount it first") {
		t.Fatalf("mount over a mount: %v", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-done
	done <- nil
	_, _, err = c.run("mount", b.ID, dir)
	if err == nil || !strings.Contains(err.Error(), "a FUSE mount whose process has died: run 'raksha umount") || exitCode(err) != 2 {
		t.Fatalf("mount over a dead mount: %v", err)
	}
	c.must("umount", dir)
	assertUnmounted(t, dir)
}
