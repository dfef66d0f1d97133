// Package hosttest is the shared suite every host.Driver implementation
// passes against a real guest: the agent answers through the driver;
// a checkpoint is a point in time (writes after it do not show in its
// exports); a first read is full and says why; after a commit the next job
// is incremental and its changed extents cover every write since, and
// little more; an aborted job leaves the base usable; a driver made anew
// (a restarted worker) finds a job and ends it; errors name what is wrong
// by type; nothing of a job stays on the host after it ends.
package hosttest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host"
	"github.com/raksha-backup/raksha/internal/repo"
)

// Harness is one implementation's running guest for the suite.
type Harness struct {
	// Driver is the driver under test; NewDriver makes another on the same
	// host, as a restarted worker does.
	Driver    host.Driver
	NewDriver func(t *testing.T) host.Driver
	// Instance names the guest as the driver's requests do.
	Instance string
	// Refs are two blank data disks of the guest, as the driver names them
	// (host.Disk.Ref), DiskSize bytes each (at least 64 MiB, persistent
	// dirty bitmaps possible); Devices are the same disks in the guest.
	Refs, Devices []string
	DiskSize      int64
	// Clean fails the test if the host keeps anything of an ended job.
	Clean func(t *testing.T)
}

const mib = 1 << 20

// BlankDisks creates n blank qcow2 images of size bytes in a directory of
// the test's and returns their paths, for a harness's guest.
func BlankDisks(t *testing.T, n int, size int64) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("disk%d.qcow2", i))
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", p, fmt.Sprint(size)).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create %s: %v: %s", p, err, out)
		}
		paths = append(paths, p)
	}
	return paths
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if len(h.Refs) != 2 || len(h.Devices) != 2 || h.DiskSize < 64*mib {
		t.Fatalf("hosttest: the harness needs two disks of at least 64 MiB, has %v (%d bytes)", h.Refs, h.DiskSize)
	}
	d := h.Driver
	id1, id2, id3, id4 := newID(1), newID(2), newID(3), newID(4)
	disks := func(base *repo.Checkpoint) []host.Disk {
		var out []host.Disk
		for _, r := range h.Refs {
			dk := host.Disk{Ref: r}
			if base != nil {
				dk.Base, dk.BaseSize = base, h.DiskSize
			}
			out = append(out, dk)
		}
		return out
	}

	// The agent answers through the driver.
	ag, err := d.Agent(ctx, h.Instance, guest.Options{Owner: "hosttest"})
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	if err := ag.Ping(ctx); err != nil {
		t.Fatalf("agent ping: %v", err)
	}
	ag.Close()

	// 1. A first job reads in full, says why, and is a point in time.
	write(ctx, t, d, h, 0, 8*mib)
	want0 := guestHash(ctx, t, d, h, 0)
	req1 := host.Request{Instance: h.Instance, BackupID: id1, Disks: disks(nil)}
	name1, err := d.Begin(ctx, req1)
	if err != nil || name1 == "" {
		t.Fatalf("begin %s: %q, %v", id1, name1, err)
	}
	write(ctx, t, d, h, 0, 16*mib) // after the checkpoint: not in the export
	var rec1 repo.Checkpoint
	for i, r := range h.Refs {
		e, err := d.Open(ctx, req1, r)
		if err != nil {
			t.Fatalf("open %s: %v", r, err)
		}
		if e.Known || e.Record.Mode != "full" || e.Record.Reason == "" || e.Record.Kind == "" || e.Record.Name != name1 {
			t.Errorf("first job, disk %s: known %v, record %+v; want a full read saying why, of checkpoint %s", r, e.Known, e.Record, name1)
		}
		if got := size(t, e.Source); got != h.DiskSize {
			t.Errorf("first job, disk %s: export of %d bytes, disk %d", r, got, h.DiskSize)
		}
		if i == 0 {
			if got := exportHash(t, e.Source); got != want0 {
				t.Errorf("first job, disk %s: the export is not the disk at the checkpoint", r)
			}
			rec1 = e.Record
		}
	}
	if _, err := d.Open(ctx, req1, "no-such-disk"); !errors.Is(err, host.ErrInvalid) {
		t.Errorf("open of a disk not in the request: %v, want host.ErrInvalid", err)
	}
	if err := d.End(ctx, req1, host.Cleanup); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if err := d.End(ctx, req1, host.Commit); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if err := d.End(ctx, req1, host.Commit); err != nil {
		t.Errorf("a second commit: %v, want nil (idempotent)", err)
	}
	h.Clean(t)
	if _, err := d.Open(ctx, req1, h.Refs[0]); !errors.Is(err, host.ErrNoJob) {
		t.Errorf("open after the job ended: %v, want host.ErrNoJob", err)
	}

	// 2. The next job is incremental against the committed checkpoint; its
	// changed extents cover the writes since (16 and 32 MiB) and little
	// more; a new driver (a restarted worker) finds it; it is aborted.
	write(ctx, t, d, h, 0, 32*mib)
	want1 := guestHash(ctx, t, d, h, 0)
	req2 := host.Request{Instance: h.Instance, BackupID: id2, Disks: disks(&rec1)}
	if _, err := d.Begin(ctx, req2); err != nil {
		t.Fatalf("begin %s: %v", id2, err)
	}
	checkIncremental(ctx, t, d, req2, h.Refs[0], want1, []int64{16 * mib, 32 * mib})
	// The worker restarts: its driver closes, a new one finds the job.
	if err := d.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	d = h.NewDriver(t)
	checkIncremental(ctx, t, d, req2, h.Refs[0], want1, []int64{16 * mib, 32 * mib})
	if e, err := d.Open(ctx, req2, h.Refs[1]); err != nil || !e.Known || len(e.Changed) != 0 {
		t.Errorf("the untouched disk in the found job: %+v, %v; want known and no change", e, err)
	}
	if err := d.End(ctx, req2, host.Abort); err != nil {
		t.Fatalf("abort by the new driver: %v", err)
	}
	if err := d.End(ctx, req2, host.Cleanup); err != nil {
		t.Errorf("cleanup of an ended job: %v, want nil", err)
	}
	h.Clean(t)

	// 3. After the abort the committed checkpoint is still the base, and
	// covers every write since it.
	write(ctx, t, d, h, 0, 48*mib)
	want2 := guestHash(ctx, t, d, h, 0)
	req3 := host.Request{Instance: h.Instance, BackupID: id3, Disks: disks(&rec1)}
	if _, err := d.Begin(ctx, req3); err != nil {
		t.Fatalf("begin %s: %v", id3, err)
	}
	checkIncremental(ctx, t, d, req3, h.Refs[0], want2, []int64{16 * mib, 32 * mib, 48 * mib})
	if err := d.End(ctx, req3, host.Commit); err != nil {
		t.Fatalf("commit %s: %v", id3, err)
	}
	h.Clean(t)

	// 4. A base whose size is not the disk's is read in full, with the
	// reason; errors by type.
	req4 := host.Request{Instance: h.Instance, BackupID: id4, Disks: disks(&rec1)}
	for i := range req4.Disks {
		req4.Disks[i].BaseSize = h.DiskSize / 2
	}
	if d.Kind() == "libvirt" { // the socket layout's bitmaps have no size to check
		if _, err := d.Begin(ctx, req4); err != nil {
			t.Fatalf("begin %s: %v", id4, err)
		}
		e, err := d.Open(ctx, req4, h.Refs[0])
		if err != nil || e.Known || e.Record.Mode != "full" || !strings.Contains(e.Record.Reason, "size") {
			t.Errorf("a base of another size: %+v, %v; want a full read because of the size", e, err)
		}
		if err := d.End(ctx, req4, host.Abort); err != nil {
			t.Fatal(err)
		}
		h.Clean(t)
	}
	if _, err := d.Begin(ctx, host.Request{Instance: "../etc", BackupID: newID(5), Disks: disks(nil)}); !errors.Is(err, host.ErrInvalid) {
		t.Errorf("begin on a path as instance: %v, want host.ErrInvalid", err)
	}
	if _, _, err := d.DiskFile(ctx, h.Instance, "../disk"); !errors.Is(err, host.ErrInvalid) {
		t.Errorf("disk file ../disk: %v, want host.ErrInvalid", err)
	}
	if err := d.End(ctx, host.Request{Instance: h.Instance, BackupID: newID(6), Disks: disks(nil)}, host.Abort); err != nil {
		t.Errorf("end of a job never begun: %v, want nil", err)
	}
	h.Clean(t)
}

// checkIncremental opens ref of the job: incremental, the export equal to
// the guest's content, every written MiB in the changed extents, and at
// most 4 MiB more.
func checkIncremental(ctx context.Context, t *testing.T, d host.Driver, req host.Request, ref, want string, written []int64) {
	t.Helper()
	e, err := d.Open(ctx, req, ref)
	if err != nil {
		t.Fatalf("open %s of %s: %v", ref, req.BackupID, err)
	}
	if !e.Known || e.Record.Mode != "incremental" {
		t.Fatalf("job %s, disk %s: known %v, record %+v; want incremental", req.BackupID, ref, e.Known, e.Record)
	}
	var total int64
	for _, x := range e.Changed {
		total += x.Length
	}
	for _, off := range written {
		if !covered(e.Changed, off, mib) {
			t.Errorf("job %s, disk %s: the write at %d MiB is not in the changed extents %v", req.BackupID, ref, off>>20, e.Changed)
		}
	}
	if limit := int64(len(written))*mib + 4*mib; total > limit {
		t.Errorf("job %s, disk %s: %d bytes changed for %d MiB written", req.BackupID, ref, total, len(written))
	}
	if got := exportHash(t, e.Source); got != want {
		t.Errorf("job %s, disk %s: the export is not the disk at the checkpoint", req.BackupID, ref)
	}
}

func covered(exts []disk.Extent, off, n int64) bool {
	for p := off; p < off+n; {
		hit := false
		for _, x := range exts {
			if x.Offset <= p && p < x.Offset+x.Length {
				p, hit = x.Offset+x.Length, true
				break
			}
		}
		if !hit {
			return false
		}
	}
	return true
}

// write writes 1 MiB of random bytes at off on the guest's disk i and
// syncs it, so that the hypervisor has it.
func write(ctx context.Context, t *testing.T, d host.Driver, h Harness, i int, off int64) {
	t.Helper()
	run(ctx, t, d, h, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M seek=%d count=1 conv=fsync 2>&1", h.Devices[i], off>>20))
}

// guestHash is the SHA-256 of the guest's disk i, read in the guest.
func guestHash(ctx context.Context, t *testing.T, d host.Driver, h Harness, i int) string {
	t.Helper()
	out := run(ctx, t, d, h, fmt.Sprintf("dd if=%s bs=1M count=%d 2>/dev/null | sha256sum", h.Devices[i], h.DiskSize>>20))
	sum, _, _ := strings.Cut(strings.TrimSpace(out), " ")
	if len(sum) != 64 {
		t.Fatalf("sha256sum in the guest: %q", out)
	}
	return sum
}

func run(ctx context.Context, t *testing.T, d host.Driver, h Harness, script string) string {
	t.Helper()
	ag, err := d.Agent(ctx, h.Instance, guest.Options{Owner: "hosttest"})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	res, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", script}, Capture: true})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("in the guest: %s: %v, %+v", script, err, res)
	}
	return string(res.Stdout)
}

func size(t *testing.T, s disk.Source) int64 { t.Helper(); return s.Size() }

func exportHash(t *testing.T, s disk.Source) string {
	t.Helper()
	hs := sha256.New()
	if _, err := io.Copy(hs, io.NewSectionReader(s, 0, s.Size())); err != nil {
		t.Fatalf("read the export: %v", err)
	}
	return fmt.Sprintf("%x", hs.Sum(nil))
}

// newID is a backup id unique to this run (checkpoint names derive from
// it), in the shape of Raksha's.
func newID(n int) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return fmt.Sprintf("%s-%x%d", time.Now().UTC().Format("20060102-150405"), b, n)
}
