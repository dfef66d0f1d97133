//go:build ceph

package rbd_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/rbd"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

func TestMain(m *testing.M) { cephlab.Main(m) }

const (
	mib       = 1 << 20
	imageSize = 64 * mib
	cs        = 1 * mib // repository chunk size in these tests
)

func connect(t *testing.T) *rbd.Conn {
	t.Helper()
	cl := cephlab.Require(t)
	c, err := rbd.Connect(context.Background(), rbd.Config{CephConf: cl.CephConf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newRepo(t *testing.T) *repo.Repository {
	t.Helper()
	return repotest.NewLocal(t, "", cs)
}

// write puts n random bytes at each offset of image (live, not a snapshot).
func write(t *testing.T, c *rbd.Conn, image string, rng *rand.Rand, n int, offsets ...int64) {
	t.Helper()
	tgt, err := c.OpenTarget(context.Background(), "rbd", image)
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	buf := make([]byte, n)
	for _, off := range offsets {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := tgt.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

// hashSource returns the sha256 of every byte a source reads.
func hashSource(t *testing.T, src io.ReaderAt, size int64) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(src, 0, size)); err != nil {
		t.Fatal(err)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// counting counts the bytes read from a source.
type counting struct {
	*rbd.Source
	n int64
}

func (c *counting) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.Source.ReadAt(p, off)
	addCount(&c.n, n)
	return n, err
}

// allocatedIn sums the allocated bytes of src inside the given chunks (all if nil).
func allocatedIn(t *testing.T, src *rbd.Source, chunks map[int64]bool) int64 {
	t.Helper()
	exts, known, err := src.Allocated()
	if err != nil || !known {
		t.Fatalf("allocated: %v %v", known, err)
	}
	var n int64
	for _, e := range exts {
		for off := e.Offset; off < e.End(); {
			ch := off / cs
			end := min(e.End(), (ch+1)*cs)
			if chunks == nil || chunks[ch] {
				n += end - off
			}
			off = end
		}
	}
	return n
}

func backup(t *testing.T, r *repo.Repository, src *rbd.Source, base string, changed []disk.Extent, known bool) (*repo.DiskManifest, int64) {
	t.Helper()
	ctx := context.Background()
	s, err := r.StartBackup(ctx, repo.BackupSpec{Labels: map[string]string{"image": "vol"}})
	if err != nil {
		t.Fatal(err)
	}
	cnt := &counting{Source: src}
	m, err := s.BackupDisk(ctx, "vm", "vol", cnt, repo.DiskOptions{Base: base, Changed: changed, ChangedKnown: known,
		Checkpoint: &repo.Checkpoint{Kind: "rbd-snapshot", Name: src.Name()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return m, cnt.n
}

func TestIncrementalReadsOnlyTheDiffAndRestoresIdentically(t *testing.T) {
	c := connect(t)
	ctx := context.Background()
	image := cephlab.UniqueName("vol")
	rng := rand.New(rand.NewPCG(1, 2))
	tgt, err := c.CreateImage(ctx, "rbd", image, imageSize)
	if err != nil {
		t.Fatal(err)
	}
	tgt.Close()
	write(t, c, image, rng, 3*mib, 0, 20*mib, 50*mib)
	if err := c.CreateSnapshot(ctx, "rbd", image, "raksha-1"); err != nil {
		t.Fatal(err)
	}
	r := newRepo(t)
	src1, err := c.OpenSnapshot(ctx, "rbd", image, "raksha-1")
	if err != nil {
		t.Fatal(err)
	}
	defer src1.Close()
	full, read := backup(t, r, src1, "", nil, false)
	if want := allocatedIn(t, src1, nil); read != want || read < 9*mib {
		t.Errorf("full backup read %d bytes, want the %d allocated (at least the 9 MiB written)", read, want)
	}
	// Change 16 scattered 4 KiB blocks, all inside chunks that already held data.
	offsets := []int64{}
	for i := range 16 {
		offsets = append(offsets, int64(i%3)*20*mib+int64(i)*64*1024+4096)
	}
	write(t, c, image, rng, 4096, offsets...)
	if err := c.CreateSnapshot(ctx, "rbd", image, "raksha-2"); err != nil {
		t.Fatal(err)
	}
	src2, err := c.OpenSnapshot(ctx, "rbd", image, "raksha-2")
	if err != nil {
		t.Fatal(err)
	}
	defer src2.Close()
	changed, err := src2.Changed("raksha-1")
	if err != nil {
		t.Fatal(err)
	}
	var diffBytes int64
	touched := map[int64]bool{}
	for _, e := range changed {
		diffBytes += e.Length
		for ch := e.Offset / cs; ch <= (e.End()-1)/cs; ch++ {
			touched[ch] = true
		}
	}
	if diffBytes < 16*4096 {
		t.Fatalf("diff covers %d bytes, less than the %d written", diffBytes, 16*4096)
	}
	t.Logf("16 writes of 4 KiB: RBD diff reports %d extents, %d bytes, touching %d of %d chunks", len(changed), diffBytes, len(touched), imageSize/cs)
	inc, read := backup(t, r, src2, full.ID, changed, true)
	// Touched chunks are read whole, less what is unallocated in them.
	if want := allocatedIn(t, src2, touched); read != want || read > int64(len(touched))*cs {
		t.Errorf("incremental read %d bytes, want the %d allocated bytes of the %d touched chunks", read, want, len(touched))
	}
	if inc.Stats.ChunksNew != int64(len(touched)) {
		t.Errorf("incremental stored %d new chunks, want %d", inc.Stats.ChunksNew, len(touched))
	}
	// Restore into a new image, byte-identical to the snapshot.
	restored := image + "-restored"
	out, err := c.CreateImage(ctx, "rbd", restored, inc.Size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RestoreDisk(ctx, inc.ID, out, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	c.CreateSnapshot(ctx, "rbd", restored, "check")
	rs, err := c.OpenSnapshot(ctx, "rbd", restored, "check")
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if hashSource(t, rs, inc.Size) != hashSource(t, src2, inc.Size) {
		t.Fatal("restored image differs from the snapshot")
	}
	// The restore was sparse: only chunks with data were written.
	if got, orig := allocatedIn(t, rs, nil), allocatedIn(t, src2, nil); got > orig+cs {
		t.Errorf("restored image has %d bytes allocated, the original %d: the restore was not sparse", got, orig)
	}

	// In-place restore: overwrite the restored image and roll it back to raksha-1's content.
	write(t, c, restored, rng, 2*mib, 0, 30*mib)
	inPlace, err := c.OpenTarget(ctx, "rbd", restored)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RestoreDisk(ctx, full.ID, inPlace, repo.RestoreOptions{ZeroHoles: true}); err != nil {
		t.Fatal(err)
	}
	inPlace.Close()
	c.CreateSnapshot(ctx, "rbd", restored, "check2")
	rs2, _ := c.OpenSnapshot(ctx, "rbd", restored, "check2")
	defer rs2.Close()
	if hashSource(t, rs2, imageSize) != hashSource(t, src1, imageSize) {
		t.Fatal("in-place restore does not equal the first snapshot")
	}
}

func TestMissingBaseFallsBackToFullRead(t *testing.T) {
	c := connect(t)
	ctx := context.Background()
	image := cephlab.UniqueName("vol")
	tgt, err := c.CreateImage(ctx, "rbd", image, 8*mib)
	if err != nil {
		t.Fatal(err)
	}
	tgt.Close()
	write(t, c, image, rand.New(rand.NewPCG(3, 4)), mib, 0)
	c.CreateSnapshot(ctx, "rbd", image, "raksha-2")
	src, err := c.OpenSnapshot(ctx, "rbd", image, "raksha-2")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.Changed("raksha-1"); !errors.Is(err, rbd.ErrNoBase) {
		t.Fatalf("Changed with a missing base: %v, want ErrNoBase", err)
	}
	c.CreateSnapshot(ctx, "rbd", image, "raksha-3")
	if _, err := src.Changed("raksha-3"); !errors.Is(err, rbd.ErrNoBase) {
		t.Fatalf("Changed with a newer base: %v, want ErrNoBase", err)
	}
}

func TestReleaseKeepsOneBaseAndLeaksAreReported(t *testing.T) {
	c := connect(t)
	ctx := context.Background()
	image := cephlab.UniqueName("vol")
	tgt, err := c.CreateImage(ctx, "rbd", image, 4*mib)
	if err != nil {
		t.Fatal(err)
	}
	tgt.Close()
	for _, s := range []string{"operator-snap", "raksha-a", "raksha-b", "raksha-c"} {
		if err := c.CreateSnapshot(ctx, "rbd", image, s); err != nil {
			t.Fatal(err)
		}
	}
	leaks, err := c.LeakedSnapshots(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range leaks {
		if l.Image == image {
			found = len(l.Snapshots) == 3
		}
	}
	if !found {
		t.Errorf("leaked snapshots %+v do not report %s with 3 Raksha snapshots", leaks, image)
	}
	if _, err := c.ReleaseSnapshots(ctx, "rbd", image, "raksha-missing"); err == nil {
		t.Error("release with a missing base to keep succeeded")
	}
	deleted, err := c.ReleaseSnapshots(ctx, "rbd", image, "raksha-c")
	if err != nil {
		t.Fatal(err)
	}
	if len(deleted) != 2 {
		t.Errorf("deleted %v, want raksha-a and raksha-b", deleted)
	}
	snaps, _ := c.Snapshots(ctx, "rbd", image)
	var names []string
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	if len(names) != 2 || names[0] != "operator-snap" || names[1] != "raksha-c" {
		t.Errorf("snapshots after release: %v, want [operator-snap raksha-c]", names)
	}
	leaks, _ = c.LeakedSnapshots(ctx, "rbd")
	for _, l := range leaks {
		if l.Image == image {
			t.Errorf("%s still reported as leaking: %v", image, l.Snapshots)
		}
	}
}

// TestReleaseTrashedRemovesOnlyImagesRakshaPins is what Cinder's RBD driver
// (Zed) leaves when it deletes a volume under backup: the image moved to the
// trash with Raksha's base snapshot on it. ReleaseTrashed drops the snapshot
// and removes the image; a trashed image with another snapshot, or with a
// deferment still running, stays.
func TestReleaseTrashedRemovesOnlyImagesRakshaPins(t *testing.T) {
	c := connect(t)
	cl := cephlab.Require(t)
	ctx := context.Background()
	rbdCLI := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("rbd", append([]string{"--conf", cl.CephConf}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("rbd %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	pinned, other, deferred := cephlab.UniqueName("vol"), cephlab.UniqueName("vol"), cephlab.UniqueName("vol")
	for img, snaps := range map[string][]string{pinned: {"raksha-a"}, other: {"raksha-a", "operator-snap"}, deferred: {"raksha-a"}} {
		tgt, err := c.CreateImage(ctx, "rbd", img, 4*mib)
		if err != nil {
			t.Fatal(err)
		}
		tgt.Close()
		for _, s := range snaps {
			if err := c.CreateSnapshot(ctx, "rbd", img, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Cinder's trash_move(..., delay=0); the deferred one as `rbd trash mv
	// --expires-at` would leave it.
	rbdCLI("trash", "mv", "rbd/"+pinned)
	rbdCLI("trash", "mv", "rbd/"+other)
	rbdCLI("trash", "mv", "--expires-at", "2099-01-01", "rbd/"+deferred)
	got, err := c.ReleaseTrashed(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != pinned || !got[0].Removed || len(got[0].Snapshots) != 1 {
		t.Errorf("released %+v, want only %s (its snapshot raksha-a, removed)", got, pinned)
	}
	trash := rbdCLI("trash", "ls", "rbd")
	if strings.Contains(trash, pinned) || !strings.Contains(trash, other) || !strings.Contains(trash, deferred) {
		t.Errorf("trash after the release:\n%s\nwant %s gone, %s and %s kept", trash, pinned, other, deferred)
	}
}
