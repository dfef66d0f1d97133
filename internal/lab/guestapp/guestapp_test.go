package guestapp

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func records(run uint64, from, to uint64, step time.Duration) [][]byte {
	var out [][]byte
	base := time.Unix(1700000000, 0)
	for s := from; s <= to; s++ {
		d := time.Duration(s) * step
		out = append(out, Record{RunID: run, Seq: s, Wall: base.Add(d), Boot: d, Label: "data"}.Encode())
	}
	return out
}

func TestRecordRoundTrip(t *testing.T) {
	r := Record{RunID: 0xdeadbeef, Seq: 42, Wall: time.Unix(1, 5), Boot: 7 * time.Second, Label: "a-very-long-label-longer-than-24"}
	got, err := Decode(r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.RunID != r.RunID || got.Seq != r.Seq || !got.Wall.Equal(r.Wall) || got.Boot != r.Boot || got.Label != r.Label[:24] {
		t.Fatalf("round trip: got %+v, want %+v", got, r)
	}
	b := r.Encode()
	b[30] ^= 1
	if _, err := Decode(b); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("flipped bit: err = %v, want ErrBadRecord", err)
	}
	if _, err := Decode(make([]byte, RecordSize)); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("zeros: err = %v", err)
	}
}

func TestCheck(t *testing.T) {
	good := records(1, 1, 10, 50*time.Millisecond)
	cases := []struct {
		name      string
		data      func() []byte
		ok        bool
		last      uint64
		torn      int
		tornTail  bool
		missing   []SeqRange
		trailing  int
		wantGaps  int
		threshold time.Duration
	}{
		{name: "clean", data: func() []byte { return bytes.Join(good, nil) }, ok: true, last: 10},
		{name: "empty", data: func() []byte { return nil }, ok: true, last: 0},
		{name: "partial tail", data: func() []byte { return append(bytes.Join(good, nil), good[0][:20]...) },
			last: 10, torn: 1, tornTail: true, trailing: 20},
		{name: "zero tail", data: func() []byte { return append(bytes.Join(good, nil), make([]byte, 2*RecordSize)...) },
			last: 10, torn: 2, tornTail: true},
		{name: "torn middle", data: func() []byte {
			b := bytes.Join(good, nil)
			b[4*RecordSize+40] ^= 0xff
			return b
		}, last: 10, torn: 1},
		{name: "missing", data: func() []byte {
			return bytes.Join(append(append([][]byte{}, good[:3]...), good[6:]...), nil)
		}, last: 10, missing: []SeqRange{{From: 4, To: 6}}},
		{name: "foreign run", data: func() []byte {
			return bytes.Join(append(append([][]byte{}, good...), records(2, 11, 11, time.Millisecond)...), nil)
		}, last: 10, torn: 1, tornTail: true},
		{name: "gap", data: func() []byte {
			late := records(1, 6, 10, 50*time.Millisecond)
			for i := range late {
				r, _ := Decode(late[i])
				r.Boot += 2 * time.Second
				late[i] = r.Encode()
			}
			return bytes.Join(append(append([][]byte{}, good[:5]...), late...), nil)
		}, ok: true, last: 10, wantGaps: 1, threshold: time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep, err := Check(bytes.NewReader(c.data()), CheckOptions{GapThreshold: c.threshold})
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() != c.ok || rep.LastGoodSeq != c.last || len(rep.Torn) != c.torn || rep.TornTail != c.tornTail ||
				rep.TrailingBytes != c.trailing || len(rep.Gaps) != c.wantGaps {
				t.Fatalf("report %s: %+v", rep, rep)
			}
			if len(rep.Missing) != len(c.missing) {
				t.Fatalf("missing = %v, want %v", rep.Missing, c.missing)
			}
			for i := range c.missing {
				if rep.Missing[i] != c.missing[i] {
					t.Fatalf("missing = %v, want %v", rep.Missing, c.missing)
				}
			}
			if c.wantGaps > 0 && (rep.Gaps[0].AfterSeq != 5 || rep.Gaps[0].Duration < 2*time.Second) {
				t.Fatalf("gap = %+v", rep.Gaps[0])
			}
		})
	}
}

func TestWriterThenCheck(t *testing.T) {
	dirs := []string{filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ready := make(chan struct{})
	if err := RunWriter(ctx, WriterOptions{Dirs: dirs, Interval: time.Millisecond, Count: 25, Ready: func() { close(ready) }}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("Ready not called")
	}
	for _, d := range dirs {
		reps, err := CheckDir(d, CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(reps) != 1 || !reps[0].OK() || reps[0].Good != 25 || reps[0].LastGoodSeq != 25 || reps[0].Label != filepath.Base(d) {
			t.Fatalf("%s: %v", d, reps[0])
		}
	}
	// A second run writes a new file and leaves the first as it was.
	if err := RunWriter(ctx, WriterOptions{Dirs: dirs[:1], Interval: time.Millisecond, Count: 3}); err != nil {
		t.Fatal(err)
	}
	files, err := RecordFiles(dirs[0])
	if err != nil || len(files) != 2 {
		t.Fatalf("files %v, %v", files, err)
	}
}

func TestMountedDirs(t *testing.T) {
	mounts := filepath.Join(t.TempDir(), "mounts")
	os.WriteFile(mounts, []byte(`rootfs / rootfs rw 0 0
proc /proc proc rw 0 0
/dev/vda /data/b ext4 rw 0 0
/dev/vdb /data/a ext4 rw 0 0
/dev/vdc /data/with\040space ext4 rw 0 0
tmpfs /data/a/sub tmpfs rw 0 0
`), 0o644)
	got, err := MountedDirs(mounts, "/data")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/data/a", "/data/b", "/data/with space"}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// TestCheckImage writes records into a directory, builds an ext4 image of it
// with mkfs.ext4 -d, converts it to qcow2 and checks it from outside.
func TestCheckImage(t *testing.T) {
	for _, p := range []string{"mkfs.ext4", "debugfs", "qemu-img"} {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" && os.Getenv("CI") != "false" && os.Getenv("CI") != "0" {
				t.Fatalf("%s missing under CI: install e2fsprogs and qemu-utils (make test-deps)", p)
			}
			t.Skipf("SKIP: %s not installed (e2fsprogs, qemu-utils: make test-deps)", p)
		}
	}
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "d")
	os.MkdirAll(src, 0o755)
	if err := RunWriter(ctx, WriterOptions{Dirs: []string{src}, Interval: time.Microsecond, Count: 100}); err != nil {
		t.Fatal(err)
	}
	files, _ := RecordFiles(src)
	// Tear the last record of the file.
	f, _ := os.OpenFile(files[0], os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte("half a record"))
	f.Close()

	dir := t.TempDir()
	raw := filepath.Join(dir, "d.raw")
	if err := os.WriteFile(raw, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(raw, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "d", "-d", src, raw).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	qcow := filepath.Join(dir, "d.qcow2")
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow).CombinedOutput(); err != nil {
		t.Fatalf("convert: %v %s", err, out)
	}
	for _, img := range []string{raw, qcow} {
		reps, err := CheckImage(ctx, img, CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(reps) != 1 || reps[0].LastGoodSeq != 100 || !reps[0].TornTail || reps[0].TrailingBytes != 13 {
			t.Fatalf("%s: %v", img, reps[0])
		}
	}
	// An image without records is an error that says so.
	empty := filepath.Join(dir, "e.raw")
	os.WriteFile(empty, nil, 0o644)
	os.Truncate(empty, 8<<20)
	exec.Command("mkfs.ext4", "-q", "-F", empty).Run()
	if _, err := CheckImage(ctx, empty, CheckOptions{}); err == nil {
		t.Fatal("image without records: no error")
	}
}
