package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"4G": 4 << 30, "4GiB": 4 << 30, "512M": 512 << 20, "256KiB": 256 << 10,
		"1MiB": 1 << 20, "64G": 64 << 30, "4096": 4096, "1.5G": 3 << 29,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "4Q"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

func TestMergeExtents(t *testing.T) {
	got := mergeExtents([]Extent{{0, 4096}, {4096, 4096}, {10000, 10}, {10005, 10}, {20000, 1}})
	want := []Extent{{0, 8192}, {10000, 15}, {20000, 1}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

// mutate must be reproducible (same seed, same bytes) and its extents must
// cover exactly the bytes that changed.
func TestMutateReproducibleAndExact(t *testing.T) {
	dir := t.TempDir()
	const size = 64 << 20
	var imgs [2][]byte
	for i := range imgs {
		img := filepath.Join(dir, "img")
		f, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		f.Close()
		for _, p := range []string{"clustered", "scattered"} {
			ext := filepath.Join(dir, p+".json")
			if err := cmdMutate([]string{"-pattern", p, "-seed", "7", "-extents", ext, img}); err != nil {
				t.Fatal(err)
			}
			var es []Extent
			b, _ := os.ReadFile(ext)
			if err := json.Unmarshal(b, &es); err != nil {
				t.Fatal(err)
			}
			var n int64
			for _, e := range es {
				n += e.Length
			}
			if n < size/100*9/10 || n > size/100*11/10 {
				t.Errorf("%s changed %d bytes, want about 1%% of %d", p, n, size)
			}
		}
		imgs[i], _ = os.ReadFile(img)
		os.Remove(img)
	}
	if string(imgs[0]) != string(imgs[1]) {
		t.Fatal("same seed gave different images")
	}
}

// The traced wrapper must see every byte a child reads, by both methods.
func TestExecCountsReads(t *testing.T) {
	t.Setenv("BENCH_PTRACE", "1") // this test is of the traced mode
	if _, err := exec.LookPath("cat"); err != nil {
		skipOrFail(t, "cat not installed")
	}
	f := filepath.Join(t.TempDir(), "data")
	const n = 3<<20 + 123
	if err := os.WriteFile(f, make([]byte, n), 0o644); err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout, _ = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	res, err := runTraced([]string{"cat", f}, 0)
	os.Stdout.Close()
	os.Stdout = saved
	if err != nil {
		skipOrFail(t, "ptrace not available here: "+err.Error())
	}
	if !res.ExitSeen || res.ExitCode != 0 {
		t.Fatalf("exit stop not seen or failure: %+v", res)
	}
	// cat also reads its shared libraries' headers and locale files: allow a little.
	if res.RcharExit < n || res.RcharExit > n+64<<10 {
		t.Errorf("rchar at exit = %d, want about %d", res.RcharExit, n)
	}
	if d := res.RcharReaped - res.RcharExit; d < 0 || d > 4096 {
		t.Errorf("reaped rchar %d vs exit rchar %d", res.RcharReaped, res.RcharExit)
	}
}

func TestExecTimeout(t *testing.T) {
	if _, err := exec.LookPath("sleep"); err != nil {
		skipOrFail(t, "sleep not installed")
	}
	res, err := runTraced([]string{"sleep", "30"}, 200*time.Millisecond)
	if err != nil {
		skipOrFail(t, "ptrace not available here: "+err.Error())
	}
	if !res.TimedOut || res.ExitCode != -1 || res.WallNS > int64(10*time.Second) {
		t.Fatalf("not killed on time: %+v", res)
	}
}

// skipOrFail skips a test whose tool cannot run here, but fails it under CI,
// where the machine has everything.
func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal("under CI: " + why)
	}
	t.Skip("SKIPPED: " + why)
}

// diskTempDir returns a new directory in the checkout, removed when the test
// ends: O_DIRECT needs a disk file system, and the temporary directory may be
// tmpfs, which refuses it.
func diskTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(".", "benchtool-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestDiskFloor writes a floor file on the checkout's own file system (a
// temporary directory may be tmpfs, which refuses O_DIRECT) and checks that
// the bytes were written (a size not a multiple of the block), timed, and
// the file removed.
func TestDiskFloor(t *testing.T) {
	dir := diskTempDir(t)
	path := filepath.Join(dir, "floor")
	const n = 9<<20 + 4096
	r, err := diskFloor(path, n)
	if err != nil {
		t.Fatal(err)
	}
	if r.Bytes != n || r.WriteS <= 0 || r.FlushS < 0 || r.TotalS < r.WriteS {
		t.Fatalf("diskFloor = %+v", r)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the floor file is still there: %v", err)
	}
}
