package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for benchtool itself (incrFloor runs
// its own executable as `benchtool incrfloor-run`) when BENCHTOOL_AS_MAIN is
// set.
func TestMain(m *testing.M) {
	if os.Getenv("BENCHTOOL_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestIncrFloorOnce runs the floor's work in this process, on the checkout's
// own file system (a temporary directory may be tmpfs, which refuses
// O_DIRECT), and checks that it stored the 10 changed chunks sealed (each
// block differs from every chunk it could have been copied from), and timed
// its phases.
func TestIncrFloorOnce(t *testing.T) {
	dir, err := os.MkdirTemp(".", "incrfloor-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	src, out := filepath.Join(dir, "src"), filepath.Join(dir, "out")
	if err := writeFloorSource(src); err != nil {
		t.Fatal(err)
	}
	r, err := incrFloorOnce(time.Now(), src, out)
	if err != nil {
		t.Fatal(err)
	}
	if r.KDFS <= 0 || r.StoreS <= 0 || r.FlushS < 0 {
		t.Fatalf("phases %+v", r)
	}
	plain, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(plain) != floorReadChunks*floorChunk || len(sealed) != floorNewChunks*sealedChunkLen {
		t.Fatalf("source %d bytes, output %d bytes; want %d and %d", len(plain), len(sealed),
			floorReadChunks*floorChunk, floorNewChunks*sealedChunkLen)
	}
	for b := range floorNewChunks {
		blk := sealed[b*sealedChunkLen : (b+1)*sealedChunkLen]
		for c := range floorReadChunks {
			if bytes.Contains(blk, plain[c*floorChunk:c*floorChunk+4096]) {
				t.Fatalf("output block %d holds chunk %d's plaintext", b, c)
			}
		}
	}
}

// TestIncrFloor runs the floor twice as separate processes (this test binary
// as benchtool) and checks the runs' times and that nothing is left behind.
func TestIncrFloor(t *testing.T) {
	dir, err := os.MkdirTemp(".", "incrfloor-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("BENCHTOOL_AS_MAIN", "1")
	r, err := incrFloor(dir, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Runs) != 2 || r.MinS <= 0 || r.MinS > r.MedianS || r.MedianS > r.MaxS {
		t.Fatalf("result %+v", r)
	}
	for _, run := range r.Runs {
		if run.KDFS <= 0 || run.StoreS <= 0 || run.WallS < run.KDFS+run.StoreS || run.SyncedS < run.WallS {
			t.Fatalf("run %+v", run)
		}
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("left behind in %s: %v", dir, left)
	}
}
