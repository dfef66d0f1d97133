package qemu_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/vm"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/mem"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

// checkpointWithReference freezes the guest, has QEMU copy the whole disk
// (blockdev-backup sync=full) into ref and waits for it, runs the checkpoint
// transaction, and thaws: the guest is frozen throughout, so the reference
// and the checkpoint are of the same instant. (QEMU 7.2 refuses two backup
// jobs on one node in one transaction: their copy-before-write filters
// conflict.)
func checkpointWithReference(t *testing.T, ctx context.Context, mon *qemu.Monitor, ag *guest.Client, b *qemu.Backup, bitmap, node, ref string, size int64) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", ref, fmt.Sprint(size)).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	refNode := "ref-" + bitmap
	if err := mon.Run(ctx, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": refNode,
		"file": map[string]any{"driver": "file", "filename": ref}}, nil); err != nil {
		t.Fatal(err)
	}
	h, err := ag.Freeze(ctx, guest.FreezeOptions{Timeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	job := "refjob-" + bitmap
	if err := mon.Run(ctx, "blockdev-backup", map[string]any{"job-id": job, "device": node, "target": refNode, "sync": "full"}, nil); err != nil {
		h.Thaw(ctx)
		t.Fatal(err)
	}
	for deadline := time.Now().Add(50 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var jobs []struct {
			ID string `json:"id"`
		}
		if err := mon.Run(ctx, "query-jobs", nil, &jobs); err != nil {
			h.Thaw(ctx)
			t.Fatal(err)
		}
		running := false
		for _, j := range jobs {
			running = running || j.ID == job
		}
		if !running {
			break
		}
		if time.Now().After(deadline) {
			h.Thaw(ctx)
			t.Fatal("reference copy did not finish")
		}
	}
	err = b.Checkpoint(ctx, bitmap)
	rep, terr := h.Thaw(ctx)
	if err != nil || terr != nil || rep.GuardThawed {
		t.Fatalf("checkpoint: %v, thaw: %v, guard fired: %v", err, terr, rep != nil && rep.GuardThawed)
	}
	t.Logf("frozen %v for the reference copy and the checkpoint", rep.Window.Round(time.Millisecond))
	if err := mon.Run(ctx, "blockdev-del", map[string]any{"node-name": refNode}, nil); err != nil {
		t.Fatal(err)
	}
}

func rawHash(t *testing.T, img string) [32]byte {
	t.Helper()
	raw := img + ".raw"
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	defer os.Remove(raw)
	f, _ := os.Open(raw)
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// TestIncrementalOfARunningGuestEqualsReferenceCopy backs up the data disk of
// a real guest whose writer keeps appending records: a full backup, then an
// incremental from the dirty bitmap; each is compared with a sync=full copy
// QEMU made of the same instant (same transaction). The restored disk passes
// e2fsck -fn and the record checker finds no torn record.
func TestIncrementalOfARunningGuestEqualsReferenceCopy(t *testing.T) {
	img := vmtest.Image(t)
	lab := vmtest.LabDir(t)
	ctx := context.Background()
	// Started, not Booted: the guest is stopped (and its slot freed) before the
	// checker's guest boots, so this test never holds two of the machine's
	// guest slots at once.
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	v, stopGuest, err := vmtest.Start(bctx, img, vmtest.Spec{LabDir: lab, Instance: "cbt-1", Labels: []string{"data"}})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			stopGuest()
		}
	}()
	mon, err := qemu.DialMonitor(ctx, v.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	ag, err := v.Agent(ctx, guest.Options{Owner: "cbt test"})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	node := v.Disks[0].NodeName
	var size int64
	{
		var nodes []struct {
			Name  string `json:"node-name"`
			Image struct {
				VirtualSize int64 `json:"virtual-size"`
			} `json:"image"`
		}
		mon.Run(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes)
		for _, n := range nodes {
			if n.Name == node {
				size = n.Image.VirtualSize
			}
		}
	}
	r := repotest.New(t, mem.New(), 1<<20)
	work := t.TempDir()
	var base *repo.DiskManifest
	prev, last := "", ""
	for round := 1; round <= 2; round++ {
		time.Sleep(2 * time.Second) // the writer appends records meanwhile
		b, err := qemu.Prepare(ctx, mon, work, fmt.Sprintf("r%d", round), []qemu.Drive{{Node: node, Prev: prev}}, quiet())
		if err != nil {
			t.Fatal(err)
		}
		bitmap := fmt.Sprintf("raksha-r%d", round)
		ref := filepath.Join(work, fmt.Sprintf("ref%d.qcow2", round))
		checkpointWithReference(t, ctx, mon, ag, b, bitmap, node, ref, size)
		srcs, err := b.Export(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		var changed []disk.Extent
		known := false
		baseID := ""
		if base != nil {
			changed, err = srcs[0].Changed()
			if err != nil {
				t.Fatal(err)
			}
			known, baseID = true, base.ID
			var n int64
			for _, e := range changed {
				if e.Offset%(64<<10) != 0 || e.Length%(64<<10) != 0 && e.End() != size {
					t.Errorf("changed extent %+v is not on the bitmap's 64 KiB granularity", e)
				}
				n += e.Length
			}
			t.Logf("changed since the last checkpoint: %d extents, %d KiB of a %d MiB disk", len(changed), n>>10, size>>20)
			if n == 0 || n > size/4 {
				t.Errorf("changed extents cover %d bytes: the writer's appends should dirty some, not most, of the disk", n)
			}
		}
		m := backupSource(t, r, srcs[0], baseID, changed, known)
		srcs[0].Close()
		if err := b.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		if base != nil {
			if _, err := qemu.Release(ctx, mon, node, bitmap); err != nil {
				t.Fatal(err)
			}
		}
		restored := restoreBytes(t, r, m)
		if sha256.Sum256(restored) != rawHash(t, ref) {
			t.Fatalf("round %d: restored disk differs from QEMU's reference copy of the same instant", round)
		}
		out := filepath.Join(work, fmt.Sprintf("restored%d.raw", round))
		os.WriteFile(out, restored, 0o600)
		if o, err := exec.Command("e2fsck", "-fn", out).CombinedOutput(); err != nil {
			t.Errorf("round %d: e2fsck -fn: %v\n%s", round, err, o)
		}
		reps, err := guestapp.CheckImage(ctx, out, guestapp.CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, rep := range reps {
			if !rep.OK() || rep.Good == 0 {
				t.Errorf("round %d: %s", round, rep)
			}
		}
		t.Logf("round %d: read %d KiB, %d new chunks; equals the reference; %d record files intact", round, m.Stats.BytesRead>>10, m.Stats.ChunksNew, len(reps))
		base, prev = m, bitmap
		last = out
	}

	// The in-guest checker, in a fresh guest with the restored disk attached
	// (its own writer off, so it checks only what the backup holds).
	mon.Close()
	ag.Close()
	if err := stopGuest(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	fresh := vmtest.Boot(t, img, vmtest.Spec{LabDir: lab, Instance: "cbt-check", Configure: func(c *vm.Config) {
		c.Disks = append(c.Disks, vm.Disk{Path: last, Format: "raw"})
		c.NoWriter = true
	}})
	fag, err := fresh.Agent(ctx, guest.Options{Owner: "cbt test check"})
	if err != nil {
		t.Fatal(err)
	}
	defer fag.Close()
	res, err := fag.Run(ctx, guest.ExecRequest{Path: "/bin/guestapp", Args: []string{"check", "-json", "/data/data"}, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	var reports []guestapp.Report
	if err := json.Unmarshal(res.Stdout, &reports); err != nil || res.ExitCode != 0 || len(reports) == 0 {
		t.Fatalf("in-guest check: exit %d, %v\n%s\n%s", res.ExitCode, err, res.Stdout, res.Stderr)
	}
	for _, rep := range reports {
		if !rep.OK() || rep.Good == 0 {
			t.Errorf("in-guest check of the restored disk: %s", rep.String())
		}
	}
	t.Logf("in-guest checker on the restored disk in a fresh guest: %d record files, %d good records, none torn", len(reports), reports[0].Good)
}
