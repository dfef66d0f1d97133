package qemu_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/mem"
	"github.com/raksha-backup/raksha/internal/testenv/blockvm"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

const (
	mib  = 1 << 20
	size = 64 * mib
)

func readAll(t *testing.T, src disk.Source) []byte {
	t.Helper()
	buf := make([]byte, src.Size())
	if _, err := io.ReadFull(io.NewSectionReader(src, 0, src.Size()), buf); err != nil {
		t.Fatal(err)
	}
	return buf
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func backupSource(t *testing.T, r *repo.Repository, src disk.Source, base string, changed []disk.Extent, known bool) *repo.DiskManifest {
	t.Helper()
	ctx := context.Background()
	s, err := r.StartBackup(ctx, repo.BackupSpec{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.BackupDisk(ctx, "vm", "vda", src, repo.DiskOptions{Base: base, Changed: changed, ChangedKnown: known})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}

type memWriter struct{ b []byte }

func (w *memWriter) WriteAt(p []byte, off int64) (int, error) { return copy(w.b[off:], p), nil }

func restoreBytes(t *testing.T, r *repo.Repository, m *repo.DiskManifest) []byte {
	t.Helper()
	w := &memWriter{b: make([]byte, m.Size)}
	if _, err := r.RestoreDisk(context.Background(), m.ID, w, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	return w.b
}

func nodeNames(t *testing.T, mon *qemu.Monitor) []string {
	var nodes []struct {
		Name string `json:"node-name"`
	}
	if err := mon.Run(context.Background(), "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

func TestCheckpointExportIncrementalAbortRelease(t *testing.T) {
	blockvm.Require(t)
	ctx := context.Background()
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	blockvm.CreateImage(t, img, size)
	v := blockvm.Start(t, img, filepath.Join(dir, "qmp.sock"), make([]byte, size))
	v.Write(0x11, 0, 2*mib)
	v.Write(0x22, 10*mib, mib)

	r := repotest.New(t, mem.New(), mib)

	// Backup 1: no previous bitmap, a full read of the point in time.
	b1, err := qemu.Prepare(ctx, v.Mon, dir, "b1", []qemu.Drive{{Node: "data0"}}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Checkpoint(ctx, "raksha-b1"); err != nil {
		t.Fatal(err)
	}
	atCheckpoint1 := bytes.Clone(v.Model)
	v.Write(0x99, 0, mib) // after the checkpoint: must not show in backup 1
	srcs, err := b1.Export(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srcs[0].Changed(); !errors.Is(err, qemu.ErrNoBitmap) {
		t.Errorf("first backup Changed: %v, want qemu.ErrNoBitmap", err)
	}
	if got := readAll(t, srcs[0]); sha256.Sum256(got) != sha256.Sum256(atCheckpoint1) {
		t.Fatal("export does not read as the disk at the checkpoint (a write after it shows through)")
	}
	alloc, _, _ := srcs[0].Allocated()
	t.Logf("allocated extents at checkpoint 1: %v", alloc)
	m1 := backupSource(t, r, srcs[0], "", nil, false)
	srcs[0].Close()
	if err := b1.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodeNames(t, v.Mon) {
		if strings.HasPrefix(n, "fleece") {
			t.Errorf("node %s left behind", n)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "fleece-*")); len(m) != 0 {
		t.Errorf("temporary files left behind: %v", m)
	}

	// Backup 2: incremental against raksha-b1.
	v.Write(0x77, 30*mib, 4096)
	b2, err := qemu.Prepare(ctx, v.Mon, dir, "b2", []qemu.Drive{{Node: "data0", Prev: "raksha-b1"}}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Checkpoint(ctx, "raksha-b2"); err != nil {
		t.Fatal(err)
	}
	atCheckpoint2 := bytes.Clone(v.Model)
	v.Write(0x55, 40*mib, mib) // after checkpoint 2
	srcs, err = b2.Export(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	changed, err := srcs[0].Changed()
	if err != nil {
		t.Fatal(err)
	}
	want := []disk.Extent{{Offset: 0, Length: mib}, {Offset: 30 * mib, Length: 64 << 10}}
	if fmt.Sprint(changed) != fmt.Sprint(want) {
		t.Errorf("changed extents %v, want %v (bitmap granularity 64 KiB)", changed, want)
	}
	m2 := backupSource(t, r, srcs[0], m1.ID, changed, true)
	if m2.Stats.ChunksRead != 2 {
		t.Errorf("incremental read %d chunks, want 2", m2.Stats.ChunksRead)
	}
	srcs[0].Close()
	if err := b2.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := restoreBytes(t, r, m2); sha256.Sum256(got) != sha256.Sum256(atCheckpoint2) {
		t.Fatal("restored incremental differs from the disk at checkpoint 2")
	}
	if got := restoreBytes(t, r, m1); sha256.Sum256(got) != sha256.Sum256(atCheckpoint1) {
		t.Fatal("restored full backup differs from the disk at checkpoint 1")
	}
	removed, err := qemu.Release(ctx, v.Mon, "data0", "raksha-b2")
	if err != nil || fmt.Sprint(removed) != "[raksha-b1]" {
		t.Fatalf("release: %v %v", removed, err)
	}

	// Backup 3 fails after its checkpoint: Abort keeps raksha-b2 a complete base.
	b3, err := qemu.Prepare(ctx, v.Mon, dir, "b3", []qemu.Drive{{Node: "data0", Prev: "raksha-b2"}}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if err := b3.Checkpoint(ctx, "raksha-b3"); err != nil {
		t.Fatal(err)
	}
	v.Write(0x66, 50*mib, 4096) // after the failed checkpoint
	if err := b3.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b3.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	bms, _ := v.Mon.Bitmaps(ctx, "data0")
	if len(bms) != 1 || bms[0].Name != "raksha-b2" || !bms[0].Recording {
		t.Fatalf("after abort: bitmaps %+v, want only raksha-b2, recording", bms)
	}

	// The bitmap survives a QEMU restart.
	v.Quit()
	v = blockvm.Start(t, img, filepath.Join(dir, "qmp.sock"), v.Model)
	bms, _ = v.Mon.Bitmaps(ctx, "data0")
	if len(bms) != 1 || bms[0].Name != "raksha-b2" || !bms[0].Persistent {
		t.Fatalf("after restart: bitmaps %+v, want persistent raksha-b2", bms)
	}
	b4, err := qemu.Prepare(ctx, v.Mon, dir, "b4", []qemu.Drive{{Node: "data0", Prev: "raksha-b2"}}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if err := b4.Checkpoint(ctx, "raksha-b4"); err != nil {
		t.Fatal(err)
	}
	srcs, err = b4.Export(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	changed, _ = srcs[0].Changed()
	want = []disk.Extent{{Offset: 40 * mib, Length: mib}, {Offset: 50 * mib, Length: 64 << 10}}
	if fmt.Sprint(changed) != fmt.Sprint(want) {
		t.Errorf("changes since raksha-b2 across an aborted backup and a restart: %v, want %v", changed, want)
	}
	m4 := backupSource(t, r, srcs[0], m2.ID, changed, true)
	srcs[0].Close()
	if err := b4.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := restoreBytes(t, r, m4); sha256.Sum256(got) != sha256.Sum256(v.Model) {
		t.Fatal("restored backup 4 differs from the disk")
	}

	// A lost bitmap: no changed extents, never an incomplete backup.
	b5, err := qemu.Prepare(ctx, v.Mon, dir, "b5", []qemu.Drive{{Node: "data0", Prev: "raksha-gone"}}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer b5.Cleanup(ctx)
	if err := b5.Checkpoint(ctx, "raksha-b5"); err != nil {
		t.Fatal(err)
	}
	srcs, err = b5.Export(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer srcs[0].Close()
	if _, err := srcs[0].Changed(); !errors.Is(err, qemu.ErrNoBitmap) {
		t.Errorf("lost bitmap: %v, want qemu.ErrNoBitmap", err)
	}
}
