package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
