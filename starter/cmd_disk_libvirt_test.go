package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestCLILibvirtBackupIncrementalRestore: `raksha disk backup
// libvirt:DOMAIN/vda` on a real libvirt guest: the first backup reads the
// disk in full (reason: no base), the second after a 2 MiB write in the
// guest is incremental and reads only the chunks the bitmap marks, no
// checkpoint metadata or job stays in libvirt, and the restore of the
// second equals the disk byte for byte once the domain is stopped.
func TestCLILibvirtBackupIncrementalRestore(t *testing.T) {
	conn := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, conn, img, libvirttest.Spec{Labels: []string{"d1"}, NoWriter: true})
	locks, work := t.TempDir(), t.TempDir()
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	backup := func(extra ...string) diskBackupResult {
		t.Helper()
		var r diskBackupResult
		args := append([]string{"disk", "backup", "-f", "json", "--lock-dir", locks, "--work-dir", work, "--label", "vm=" + d.Name}, extra...)
		out := c.must(append(args, "libvirt:"+d.Name+"/vda")...)
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		names, err := conn.CheckpointNames(context.Background(), d.Dom)
		if err != nil || len(names) > 0 {
			t.Fatalf("checkpoint metadata left in libvirt: %v, %v", names, err)
		}
		if active, err := conn.JobActive(context.Background(), d.Dom); err != nil || active {
			t.Fatalf("backup job left: %v, %v", active, err)
		}
		return r
	}
	full := backup()
	if full.Base != "" || full.Mode != "full" || !strings.Contains(full.Reason, "no base") {
		t.Fatalf("first backup: %+v, want full with the reason", full)
	}

	ag := libvirttest.Agent(t, conn, d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "dd if=/dev/urandom of=/data/d1/blob bs=64k count=32 conv=fsync 2>/dev/null && sync"}})
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("write in the guest: %v %+v", err, r)
	}
	// The test holds the guest frozen from before the second backup until
	// QEMU is stopped, so that the disk cannot change after the backup's
	// point in time (ext4 rewrites its superblock after a thaw); the CLI
	// then backs up --no-freeze.
	h, err := ag.Freeze(ctx, guest.FreezeOptions{Timeout: 3 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	inc := backup("--no-freeze")
	if inc.Base == "" || inc.Mode != "incremental" {
		t.Fatalf("second backup: %+v, want incremental on the first", inc)
	}
	// 2 MiB of file data plus ext4 metadata: at least 2 chunks, at most a few.
	if inc.Stats.BytesRead < 2<<20 || inc.Stats.BytesRead > 6<<20 {
		t.Fatalf("incremental read %d bytes for a 2 MiB write (1 MiB chunks)", inc.Stats.BytesRead)
	}
	t.Logf("full read %d bytes; incremental read %d bytes, new %d", full.Stats.BytesRead, inc.Stats.BytesRead, inc.Stats.BytesNew)

	// The disk as it is now (the guest idle since), read from its qcow2
	// with QEMU stopped, against the restore.
	if err := conn.Libvirt().DomainDestroy(d.Dom); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
		t.Fatal("the guest was thawed before QEMU stopped")
	default:
	}
	ag.Close() // its thaw fails: QEMU is gone
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", d.Disks[0].Path, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	restored := filepath.Join(t.TempDir(), "restored.img")
	c.must("disk", "restore", inc.ID, restored)
	if a, b := sum(t, raw), sum(t, restored); a != b {
		x, _ := os.ReadFile(raw)
		y, _ := os.ReadFile(restored)
		var diffs []int
		for i := 0; i < len(x) && len(diffs) < 20; i += 4096 {
			if string(x[i:i+4096]) != string(y[i:i+4096]) {
				diffs = append(diffs, i/4096)
			}
		}
		t.Fatalf("restore of the incremental (%x) differs from the disk (%x); 4 KiB blocks %v", b[:8], a[:8], diffs)
	}
	if fi, err := os.Stat(restored); err != nil || fi.Size() != 64<<20 {
		t.Fatalf("restored image: %v, %v", fi, err)
	}
}

// TestCLILibvirtBackupKilledWhileFrozen: `raksha disk backup libvirt:…`
// (its own process) is SIGKILLed, with its whole process group, while the
// guest is frozen (stopped the moment it logs that the freeze took, killed
// once the guest is seen frozen). Nothing restarts it: the watchdog it
// started thaws the guest at the freeze deadline recorded on disk, removes
// the record, and says so in its log; a new backup of the disk then works.
func TestCLILibvirtBackupKilledWhileFrozen(t *testing.T) {
	conn := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, conn, img, libvirttest.Spec{Labels: []string{"d1"}, NoWriter: true})
	locks, work := t.TempDir(), t.TempDir()
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	ag := libvirttest.Agent(t, conn, d)
	ctx := context.Background()
	const freezeTimeout = 8 * time.Second
	recs := filepath.Join(work, "freezes")
	var killed time.Time
	var deadline time.Time
	for attempt := 1; killed.IsZero(); attempt++ {
		if attempt > 3 {
			t.Fatal("in 3 attempts the backup was never caught with its guest frozen (it logs \"ready to begin\" right after the freeze, before the checkpoint and the thaw)")
		}
		cmd := exec.Command(os.Args[0], "--progress", "none", "--log-level", "debug", "disk", "backup", "--lock-dir", locks, "--work-dir", work,
			"--freeze-timeout", freezeTimeout.String(), "libvirt:"+d.Name+"/vda")
		cmd.Env = append(os.Environ(), cliMainEnv+"=1", "RAKSHA_PASSWORD="+c.env["RAKSHA_PASSWORD"], "RAKSHA_REPO="+c.env["RAKSHA_REPO"])
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stderr)
		var log []string
		for sc.Scan() {
			line := sc.Text()
			log = append(log, line)
			if strings.Contains(line, "ready to begin") && strings.Contains(line, "frozen=true") {
				syscall.Kill(cmd.Process.Pid, syscall.SIGSTOP)
				st, err := ag.FsfreezeStatus(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if st == "frozen" {
					deadline = recordDeadline(t, recs)
					syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					killed = time.Now()
				} else {
					t.Logf("attempt %d: the guest was %s when the backup stopped: it got past its thaw; letting it finish", attempt, st)
					syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
				}
				break
			}
		}
		go io.Copy(io.Discard, stderr)
		err = cmd.Wait()
		if killed.IsZero() && err != nil {
			t.Fatalf("attempt %d: the backup failed before its freeze: %v\n%s", attempt, err, strings.Join(log, "\n"))
		}
	}
	if st, err := ag.FsfreezeStatus(ctx); err != nil || st != "frozen" {
		t.Fatalf("right after the kill the guest is %q (%v), want frozen", st, err)
	}
	var thawed time.Time
	for end := deadline.Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if st, err := ag.FsfreezeStatus(ctx); err == nil && st == "thawed" {
			thawed = time.Now()
			break
		}
	}
	if thawed.IsZero() {
		t.Fatalf("the guest is still frozen 30 s past its freeze deadline %v, with the backup killed", deadline)
	}
	t.Logf("thawed by the watchdog %v after the kill, %v after the recorded deadline (freeze timeout %v)", thawed.Sub(killed).Round(time.Millisecond), thawed.Sub(deadline).Round(time.Millisecond), freezeTimeout)
	if thawed.Before(deadline) {
		t.Errorf("thawed %v before the freeze deadline: the freeze was cut short", deadline.Sub(thawed))
	}
	if wl, _ := os.ReadFile(filepath.Join(recs, "watchdog.log")); !strings.Contains(string(wl), "thaw") {
		t.Errorf("the watchdog's log does not tell of the thaw:\n%s", wl)
	}
	if keys, _ := filepath.Glob(filepath.Join(recs, "*.json")); len(keys) != 0 {
		t.Errorf("freeze records left after the watchdog's thaw: %v", keys)
	}
	// The killed backup left no record in the repository, and the disk
	// backs up again (its leftover libvirt job, if any, notwithstanding).
	var r diskBackupResult
	out := c.must("disk", "backup", "-f", "json", "--lock-dir", locks, "--work-dir", work, "libvirt:"+d.Name+"/vda")
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.ID == "" {
		t.Fatalf("backup after the kill: %s", out)
	}
	if active, err := conn.JobActive(ctx, d.Dom); err != nil || active {
		t.Errorf("a backup job is left on the domain: %v, %v", active, err)
	}
}

// recordDeadline reads the deadline of the one freeze record in dir.
func recordDeadline(t *testing.T, dir string) time.Time {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) != 1 {
		t.Fatalf("freeze records in %s: %v (%v), want one", dir, files, err)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Deadline time.Time `json:"deadline"`
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.Deadline.IsZero() {
		t.Fatalf("freeze record %s: %v: %s", files[0], err, data)
	}
	return rec.Deadline
}
