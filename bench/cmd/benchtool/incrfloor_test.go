package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
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
// O_DIRECT), for the default plan and for a small change, and checks that it
// stored the changed bytes sealed (no block of the output contains any
// source chunk's plaintext) and timed its phases.
func TestIncrFloorOnce(t *testing.T) {
	dir := diskTempDir(t)
	src := filepath.Join(dir, "src")
	if err := writeFloorSource(src); err != nil {
		t.Fatal(err)
	}
	plain, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(plain) != floorSourceChunks*floorChunk {
		t.Fatalf("source %d bytes, want %d", len(plain), floorSourceChunks*floorChunk)
	}
	small, err := planFor([]Extent{{Offset: 3<<20 + 4096, Length: 1 << 20}, {Offset: 9 << 20, Length: 8192}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		plan       floorPlan
		wantStored int64
	}{
		{defaultFloorPlan, 10 * (4<<20 + 4096)},
		{small, 1<<20 + 8192 + 4096},                                               // one piece: the changed bytes are sealed in pieces of up to a chunk
		{floorPlan{Chunks: 25, Changed: 90 << 20}, 22*(4<<20+4096) + 2<<20 + 4096}, // more chunks than the source has
	} {
		out := filepath.Join(dir, "out")
		r, err := incrFloorOnce(time.Now(), src, out, tc.plan)
		if err != nil {
			t.Fatalf("plan %+v: %v", tc.plan, err)
		}
		if r.KDFS <= 0 || r.StoreS <= 0 || r.FlushS < 0 {
			t.Fatalf("plan %+v: phases %+v", tc.plan, r)
		}
		sealed, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(sealed)) != tc.wantStored || storedLen(tc.plan) != tc.wantStored {
			t.Fatalf("plan %+v: output %d bytes, storedLen %d; want %d", tc.plan, len(sealed), storedLen(tc.plan), tc.wantStored)
		}
		for off := 0; off < len(sealed); off += 1 << 20 {
			blk := sealed[off:min(off+1<<20, len(sealed))]
			for c := range floorSourceChunks {
				if bytes.Contains(blk, plain[c*floorChunk:c*floorChunk+4096]) {
					t.Fatalf("plan %+v: the output at %d holds chunk %d's plaintext", tc.plan, off, c)
				}
			}
		}
		if err := os.Remove(out); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := incrFloorOnce(time.Now(), src, filepath.Join(dir, "out"), floorPlan{Chunks: 1, Changed: 5 << 20}); err == nil ||
		!strings.Contains(err.Error(), "plan") {
		t.Fatalf("a plan changing more bytes than its chunks hold: err = %v", err)
	}
}

// TestPlanFor checks the chunks a change touches and the bytes it changes,
// and that bad extents are refused with what is wrong.
func TestPlanFor(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		ext  []Extent
		want floorPlan
	}{
		{[]Extent{{0, 4 * mib}}, floorPlan{1, 4 * mib}},
		{[]Extent{{4096, 4 * mib}}, floorPlan{2, 4 * mib}},
		{[]Extent{{4*mib - 1, 2}}, floorPlan{2, 2}},
		{[]Extent{{0, 4096}, {8192, 4096}, {4 * mib, 1}}, floorPlan{2, 8193}},
		{[]Extent{{40 * mib, 10 * mib}}, floorPlan{3, 10 * mib}},
	} {
		got, err := planFor(tc.ext)
		if err != nil || got != tc.want {
			t.Errorf("planFor(%v) = %+v, %v; want %+v", tc.ext, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		ext  []Extent
		want string
	}{
		{nil, "no extents"},
		{[]Extent{{-1, 4096}}, "offset -1, length 4096"},
		{[]Extent{{0, 0}}, "offset 0, length 0"},
		{[]Extent{{math.MaxInt64 - 10, 4096}}, "length 4096"},
	} {
		if _, err := planFor(tc.ext); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("planFor(%v): err = %v, want one saying %q", tc.ext, err, tc.want)
		}
	}
}

// TestIncrFloor runs the floor twice as separate processes (this test binary
// as benchtool) and checks the runs' times and that nothing is left behind.
func TestIncrFloor(t *testing.T) {
	dir := diskTempDir(t)
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
