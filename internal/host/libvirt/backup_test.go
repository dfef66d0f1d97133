package libvirt_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// cycle is one backup of the test domain: freeze, Begin, thaw; the
// exports' full images (and the changed extents of incremental disks)
// read; End. No checkpoint metadata and no job remain after it.
type cycle struct {
	bk     *libvirt.Backup
	images map[string][]byte
	change map[string][]disk.Extent
	read   map[string]int64 // bytes read from the changed extents
}

func backupCycle(t *testing.T, c *libvirt.Conn, d *libvirttest.Domain, a *guest.Client, name string, base *libvirt.Checkpoint) *cycle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h, err := a.Freeze(ctx, guest.FreezeOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	bk, err := libvirt.Begin(ctx, c, d.Dom, libvirt.BeginOptions{Name: name, Disks: []string{"vda", "vdb"}, Base: base, WorkDir: filepath.Join(d.Dir, "work")})
	if _, terr := h.Thaw(ctx); terr != nil {
		t.Fatal(terr)
	}
	if err != nil {
		t.Fatal(err)
	}
	cy := &cycle{bk: bk, images: map[string][]byte{}, change: map[string][]disk.Extent{}, read: map[string]int64{}}
	for _, m := range bk.Modes {
		src, err := bk.Open(ctx, m.Target, 2)
		if err != nil {
			t.Fatal(err)
		}
		img := make([]byte, src.Size())
		if _, err := src.ReadAt(img, 0); err != nil {
			t.Fatalf("read export of %s: %v", m.Target, err)
		}
		cy.images[m.Target] = img
		if m.Mode == "incremental" {
			exts, err := src.Changed()
			if err != nil {
				t.Fatalf("changed extents of %s: %v", m.Target, err)
			}
			cy.change[m.Target] = exts
		} else if _, err := src.Changed(); err != qemu.ErrNoBitmap {
			t.Fatalf("a full read of %s has changed extents (err %v), want ErrNoBitmap", m.Target, err)
		}
		src.Close()
	}
	if err := bk.End(ctx); err != nil {
		t.Fatal(err)
	}
	// The job's record stays until Forget (after the release that follows
	// the commit), so that a restarted worker finds what to release.
	re, err := libvirt.Attach(ctx, c, d.Dom, filepath.Join(d.Dir, "work"))
	if err != nil || re.Checkpoint.Name != name || (base != nil && (re.Base == nil || re.Base.Name != base.Name)) {
		t.Fatalf("attach after End: %+v, %v", re, err)
	}
	if err := re.Forget(); err != nil {
		t.Fatal(err)
	}
	if _, err := libvirt.Attach(ctx, c, d.Dom, filepath.Join(d.Dir, "work")); !errors.Is(err, libvirt.ErrNoJobState) {
		t.Fatalf("attach after Forget: err = %v, want ErrNoJobState", err)
	}
	assertClean(t, c, d)
	return cy
}

// assertClean: no checkpoint metadata, no job, no scratch file of the
// test's domain.
func assertClean(t *testing.T, c *libvirt.Conn, d *libvirttest.Domain) {
	t.Helper()
	ctx := context.Background()
	if names, err := c.CheckpointNames(ctx, d.Dom); err != nil || len(names) > 0 {
		t.Fatalf("checkpoint metadata left: %v, %v", names, err)
	}
	if active, err := c.JobActive(ctx, d.Dom); err != nil || active {
		t.Fatalf("job left: %v, %v", active, err)
	}
	if left, _ := filepath.Glob(filepath.Join(d.Dir, "work", "*")); len(left) > 0 {
		t.Fatalf("files left in the work directory: %v", left)
	}
}

func mode(t *testing.T, bk *libvirt.Backup, target string) libvirt.DiskMode {
	t.Helper()
	for _, m := range bk.Modes {
		if m.Target == target {
			return m
		}
	}
	t.Fatalf("no mode for %s in %+v", target, bk.Modes)
	return libvirt.DiskMode{}
}

// assertRebuilds checks that target's image in base, overwritten with the
// changed extents of next taken from next's image, is next's image, and
// returns how many bytes changed.
func assertRebuilds(t *testing.T, target string, base, next *cycle) int64 {
	t.Helper()
	rebuilt := bytes.Clone(base.images[target])
	var n int64
	for _, e := range next.change[target] {
		copy(rebuilt[e.Offset:e.End()], next.images[target][e.Offset:e.End()])
		n += e.Length
	}
	if !bytes.Equal(rebuilt, next.images[target]) {
		t.Fatalf("%s: base + %d changed bytes (%s) != the new point in time (%s)", target, n, sum(rebuilt), sum(next.images[target]))
	}
	return n
}

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:8]) }

func run(t *testing.T, a *guest.Client, script string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := a.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", script}, Capture: true})
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("guest %q: %v %+v stderr %s", script, err, r, r.Stderr)
	}
}

// TestBackupChain: the changed-block chain through libvirt's checkpoints
// and pull backups on a real guest: a first backup reads every disk in
// full; after writes to one disk the next is incremental on both, its
// changed extents cover the writes, and base + changed extents equal the
// new point in time, byte for byte; a domain destroyed, undefined and
// defined again (Nova's hard reboot) keeps its chain; after QEMU is
// SIGKILLed the bitmaps do not validate and the disks are read in full,
// with the reason. No checkpoint metadata or job is left at any point, so
// the domain can always be undefined.
func TestBackupChain(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Labels: []string{"d1", "d2"}, NoWriter: true})
	a := libvirttest.Agent(t, c, d)

	// 1. full
	c1 := backupCycle(t, c, d, a, "raksha-b1", nil)
	for _, tg := range []string{"vda", "vdb"} {
		if m := mode(t, c1.bk, tg); m.Mode != "full" || !strings.Contains(m.Reason, "no base checkpoint") {
			t.Fatalf("first backup of %s: %+v, want full with the reason", tg, m)
		}
	}
	if got := c1.bk.Checkpoint; got.Name != "raksha-b1" || len(got.Disks) != 2 || !strings.Contains(got.XML, "raksha-b1") {
		t.Fatalf("checkpoint %+v", got)
	}

	// 2. writes to d1 only, then an incremental
	run(t, a, "dd if=/dev/urandom of=/data/d1/blob bs=64k count=32 conv=fsync 2>/dev/null && sync")
	base1 := c1.bk.Checkpoint
	c2 := backupCycle(t, c, d, a, "raksha-b2", &base1)
	for _, tg := range []string{"vda", "vdb"} {
		if m := mode(t, c2.bk, tg); m.Mode != "incremental" {
			t.Fatalf("second backup of %s: %+v, want incremental", tg, m)
		}
	}
	var changedA int64
	for _, e := range c2.change["vda"] {
		changedA += e.Length
	}
	if changedA < 2<<20 || changedA > 8<<20 {
		t.Fatalf("vda changed %d bytes for a 2 MiB write (extents %v)", changedA, c2.change["vda"])
	}
	for _, tg := range []string{"vda", "vdb"} {
		n := assertRebuilds(t, tg, c1, c2)
		t.Logf("%s: %d bytes changed of %d, base + changes = new image (%s)", tg, n, len(c2.images[tg]), sum(c2.images[tg]))
	}
	if err := libvirt.Release(context.Background(), c, d.Dom, base1); err != nil {
		t.Fatal(err)
	}
	assertClean(t, c, d)

	// 3. Nova's hard reboot: destroy, undefine, define, start. The
	// undefine works (no checkpoint metadata) and the chain holds.
	run(t, a, "dd if=/dev/urandom of=/data/d2/blob bs=64k count=8 conv=fsync 2>/dev/null && sync")
	a.Close()
	hardReboot(t, c, d)
	a = libvirttest.Agent(t, c, d)
	base2 := c2.bk.Checkpoint
	c3 := backupCycle(t, c, d, a, "raksha-b3", &base2)
	for _, tg := range []string{"vda", "vdb"} {
		if m := mode(t, c3.bk, tg); m.Mode != "incremental" {
			t.Fatalf("backup after a hard reboot, %s: %+v, want incremental", tg, m)
		}
	}
	if n := assertRebuilds(t, "vdb", c2, c3); n == 0 {
		t.Fatal("vdb after a hard reboot: no changed extents for the write")
	}
	if err := libvirt.Release(context.Background(), c, d.Dom, base2); err != nil {
		t.Fatal(err)
	}

	// 4. QEMU SIGKILLed: the bitmaps are not stored cleanly; the next
	// backup reads both disks in full and says why.
	a.Close()
	killQEMU(t, c, d)
	a = libvirttest.Agent(t, c, d)
	base3 := c3.bk.Checkpoint
	c4 := backupCycle(t, c, d, a, "raksha-b4", &base3)
	for _, tg := range []string{"vda", "vdb"} {
		m := mode(t, c4.bk, tg)
		if m.Mode != "full" || !strings.Contains(m.Reason, "does not validate") {
			t.Fatalf("backup after SIGKILL of QEMU, %s: %+v, want full because the base does not validate", tg, m)
		}
		t.Logf("after SIGKILL, %s: %s", tg, m.Reason)
	}
	// The next backup diffs against the fresh checkpoint again.
	run(t, a, "dd if=/dev/urandom of=/data/d1/blob2 bs=64k count=4 conv=fsync 2>/dev/null && sync")
	base4 := c4.bk.Checkpoint
	c5 := backupCycle(t, c, d, a, "raksha-b5", &base4)
	if m := mode(t, c5.bk, "vda"); m.Mode != "incremental" || len(c5.change["vda"]) == 0 {
		t.Fatalf("backup after the full one, vda: %+v with %d changed extents, want incremental", m, len(c5.change["vda"]))
	}
	if err := libvirt.Release(context.Background(), c, d.Dom, base3, base4); err != nil {
		t.Fatal(err)
	}
	assertClean(t, c, d)

	// 5. A backup job left by a process that died after its Begin: the
	// next Begin is refused unless the caller says it holds the guest and
	// runs no backup of it; then the dead job is ended and a full backup
	// (no base) runs.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	work := filepath.Join(d.Dir, "work")
	if _, err := libvirt.Begin(ctx, c, d.Dom, libvirt.BeginOptions{Name: "raksha-dead", Disks: []string{"vda"}, WorkDir: work}); err != nil {
		t.Fatal(err)
	}
	if _, err := libvirt.Begin(ctx, c, d.Dom, libvirt.BeginOptions{Name: "raksha-b6", Disks: []string{"vda"}, WorkDir: work}); !errors.Is(err, libvirt.ErrJobActive) {
		t.Fatalf("Begin over a dead backup's job: %v, want ErrJobActive", err)
	}
	bk, err := libvirt.Begin(ctx, c, d.Dom, libvirt.BeginOptions{Name: "raksha-b6", Disks: []string{"vda"}, WorkDir: work, EndStaleBackupJob: true})
	if err != nil {
		t.Fatalf("Begin ending a dead backup's job: %v", err)
	}
	if !bk.EndedStaleJob {
		t.Error("Begin ended the dead job but does not say so")
	}
	src, err := bk.Open(ctx, "vda", 2)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	if _, err := src.ReadAt(buf, 0); err != nil {
		t.Fatalf("read the new job's export: %v", err)
	}
	src.Close()
	if err := bk.End(ctx); err != nil {
		t.Fatal(err)
	}
	if err := libvirt.Release(ctx, c, d.Dom, bk.Checkpoint); err != nil {
		t.Fatal(err)
	}
	if active, err := c.JobActive(ctx, d.Dom); err != nil || active {
		t.Fatalf("a job is left: %v %v", active, err)
	}
	a.Close()
	if err := c.Libvirt().DomainDestroy(d.Dom); err != nil {
		t.Fatal(err)
	}
	if err := c.Libvirt().DomainUndefine(d.Dom); err != nil {
		t.Fatalf("undefine (as Nova's delete does) failed: %v", err)
	}
}

// hardReboot does what Nova's hard reboot does to a domain: destroy,
// undefine, define again from its XML, start.
func hardReboot(t *testing.T, c *libvirt.Conn, d *libvirttest.Domain) {
	t.Helper()
	l := c.Libvirt()
	x, err := l.DomainGetXMLDesc(d.Dom, lv.DomainXMLInactive)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.DomainDestroy(d.Dom); err != nil {
		t.Fatal(err)
	}
	if err := l.DomainUndefine(d.Dom); err != nil {
		t.Fatalf("undefine: %v", err)
	}
	dom, err := l.DomainDefineXMLFlags(x, 0)
	if err != nil {
		t.Fatal(err)
	}
	d.Dom = dom
	if err := l.DomainCreate(dom); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := libvirttest.WaitAgent(ctx, c, d); err != nil {
		t.Fatal(err)
	}
}

// killQEMU SIGKILLs the domain's QEMU process and starts the domain again.
func killQEMU(t *testing.T, c *libvirt.Conn, d *libvirttest.Domain) {
	t.Helper()
	libvirttest.KillQEMU(t, c, d.Dom)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.Command("qemu-img", "info", "-U", d.Disks[0].Path).CombinedOutput(); err == nil {
		t.Logf("after SIGKILL: %s", strings.TrimSpace(string(out)))
	}
	if err := c.Libvirt().DomainCreate(d.Dom); err != nil {
		t.Fatal(err)
	}
	if err := libvirttest.WaitAgent(ctx, c, d); err != nil {
		t.Fatal(err)
	}
}
