//go:build ceph

package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/disk/rbd"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
)

func TestMain(m *testing.M) { cephlab.Main(m) }

const (
	rbdMiB       = 1 << 20
	rbdChunk     = rbdMiB // the repository's chunk size in this test
	rbdImageSize = 32 * rbdMiB
)

func rbdWrite(t *testing.T, c *rbd.Conn, image string, rng *rand.Rand, n int, offsets ...int64) {
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

func rbdSnapSum(t *testing.T, c *rbd.Conn, image, snap string) [32]byte {
	t.Helper()
	src, err := c.OpenSnapshot(context.Background(), "rbd", image, snap)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(src, 0, src.Size())); err != nil {
		t.Fatal(err)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// allocatedInChunks sums the allocated bytes of image@snap inside the chunks
// that the extents changed since base touch (all chunks if base is "").
func allocatedInChunks(t *testing.T, c *rbd.Conn, image, snap, base string) int64 {
	t.Helper()
	src, err := c.OpenSnapshot(context.Background(), "rbd", image, snap)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	all := base == ""
	changed, err := src.Changed(base)
	if err != nil && !all {
		t.Fatal(err)
	}
	touched := map[int64]bool{}
	for _, e := range changed {
		for ch := e.Offset / rbdChunk; ch <= (e.End()-1)/rbdChunk; ch++ {
			touched[ch] = true
		}
	}
	alloc, _, err := src.Allocated()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range alloc {
		for off := e.Offset; off < e.End(); {
			ch := off / rbdChunk
			end := min(e.End(), (ch+1)*rbdChunk)
			if all || touched[ch] {
				n += end - off
			}
			off = end
		}
	}
	return n
}

func TestCLIRBDBackupIncrementalRestore(t *testing.T) {
	cl := cephlab.Require(t)
	ctx := context.Background()
	conn, err := rbd.Connect(ctx, rbd.Config{CephConf: cl.CephConf})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	image := cephlab.UniqueName("clivol")
	tgt, err := conn.CreateImage(ctx, "rbd", image, rbdImageSize)
	if err != nil {
		t.Fatal(err)
	}
	tgt.Close()
	rng := rand.New(rand.NewPCG(7, 8))
	rbdWrite(t, conn, image, rng, 2*rbdMiB, 0, 10*rbdMiB, 25*rbdMiB)
	if err := conn.CreateSnapshot(ctx, "rbd", image, "raksha-1"); err != nil {
		t.Fatal(err)
	}

	c := newCLI(t)
	c.env["CEPH_CONF"] = cl.CephConf
	c.must("repo", "init", "--chunk-size", "1MiB")
	var full diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", "rbd:rbd/"+image+"@raksha-1")), &full); err != nil {
		t.Fatal(err)
	}
	if alloc := allocatedInChunks(t, conn, image, "raksha-1", ""); full.Base != "" || full.Stats.BytesRead != alloc || alloc < 6*rbdMiB {
		t.Fatalf("full backup: base %q, read %d bytes, want no base and the %d allocated (at least the 6 MiB written)", full.Base, full.Stats.BytesRead, alloc)
	}

	// 8 scattered 4 KiB writes inside chunks that held data, and one into a hole.
	var offsets []int64
	for i := range 8 {
		offsets = append(offsets, int64(i%3)*10*rbdMiB+int64(i)*128*1024+4096)
	}
	offsets = append(offsets, 18*rbdMiB+8192)
	rbdWrite(t, conn, image, rng, 4096, offsets...)
	if err := conn.CreateSnapshot(ctx, "rbd", image, "raksha-2"); err != nil {
		t.Fatal(err)
	}
	var inc diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", "--base-snapshot", "raksha-1", "rbd:rbd/"+image+"@raksha-2")), &inc); err != nil {
		t.Fatal(err)
	}
	want := allocatedInChunks(t, conn, image, "raksha-2", "raksha-1")
	if inc.Base != full.Disk || inc.Stats.BytesRead != want {
		t.Fatalf("incremental: base %q (want %q), read %d bytes, want %d (the allocated part of the touched chunks)",
			inc.Base, full.Disk, inc.Stats.BytesRead, want)
	}
	t.Logf("incremental read %d bytes, %d new chunks", inc.Stats.BytesRead, inc.Stats.ChunksNew)

	// A base snapshot that is not the base backup's: full read, with a warning.
	conn.CreateSnapshot(ctx, "rbd", image, "raksha-3")
	_, errs, err := c.run("disk", "backup", "-f", "json", "--base-snapshot", "raksha-2", "--base", full.ID, "rbd:rbd/"+image+"@raksha-3")
	if err != nil || !strings.Contains(errs, "not taken from --base-snapshot") {
		t.Errorf("mismatched base: err %v, stderr %s", err, errs)
	}

	// Restore into a new image: identical to the snapshot.
	restored := image + "-restored"
	c.must("disk", "restore", inc.ID, "rbd:rbd/"+restored)
	if err := conn.CreateSnapshot(ctx, "rbd", restored, "check"); err != nil {
		t.Fatal(err)
	}
	if rbdSnapSum(t, conn, restored, "check") != rbdSnapSum(t, conn, image, "raksha-2") {
		t.Fatal("the restored image differs from the snapshot")
	}
	// An existing image is refused without --overwrite; with it, restored in place.
	if _, _, err := c.run("disk", "restore", full.ID, "rbd:rbd/"+restored); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("restore onto an existing image: %v", err)
	}
	rbdWrite(t, conn, restored, rng, rbdMiB, 18*rbdMiB, 30*rbdMiB)
	c.must("disk", "restore", "--overwrite", full.ID, "rbd:rbd/"+restored)
	conn.CreateSnapshot(ctx, "rbd", restored, "check2")
	if rbdSnapSum(t, conn, restored, "check2") != rbdSnapSum(t, conn, image, "raksha-1") {
		t.Fatal("the in-place restore differs from the first snapshot")
	}
	if _, _, err := c.run("disk", "backup", "rbd:rbd/"+image); err == nil || !strings.Contains(err.Error(), "snapshot") {
		t.Errorf("backup without a snapshot: %v", err)
	}
}
